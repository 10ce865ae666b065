"""Soak: many sessions, each handing off ≥ 3 times, under random human commands and a
flaky user tool; none may get stuck, no command may be lost or applied twice.

Every session works through a synthetic project with a 4,000-token context window
(so it hands off every few tasks) while `tests/command_driver.CommandDriver` sends it
random *valid* commands (decide / say / skip / retry / pause / resume / flush, bursts,
some while a handoff is sealing; `random.Random(seed)` per session), then ends it:
resume and decide until it completes or, for ~10% of sessions, abort once it reached
generation 3. The model (`ToolCallingBrain`, the scripted agent plus calls to a user
tool) calls the user tool `lookup`, run as the activity `tool:lookup`, which fails on
10% of its calls: half with a non-retryable error (the model gets an error result),
half with a retryable one (Temporal retries the activity).

A session is *stuck* if any run or handoff child had a failed workflow task, or it
neither completed nor waits for a human within `--cap-s`. Lost / doubled: accepted
commands applied zero / several times (`check_exactly_once`). The largest
continue-as-new input is the biggest WorkflowExecutionStarted input of a generation
≥ 1 run, as a share of Temporal's 2 MiB payload limit.

The worker runs in this process (`tests.conftest.running_worker`, which registers
the user tool), against the embedded dev server and the loopback fake model.

Run: ``.venv/bin/python bench/soak.py [--json] [--quick] [--sessions N]
[--concurrency C] [--seed S]``. Exit status 1 if a session got stuck, a command was
lost, doubled or wrongly applied, or the largest input reached 25% of 2 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import re
import sys
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import dev_server, emit, fmt_table
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

from temporal_handoff.schemas.model_io import ToolSpec, prompt_text
from temporal_handoff.testing import BrainReply, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin, UserTool
from tests.command_driver import (
    CommandDriver,
    SessionCheck,
    check_exactly_once,
    check_session,
    random_actions,
)
from tests.conftest import running_worker
from tests.helpers import start_session

TWO_MIB = 2 * 1024 * 1024
MAX_INPUT_PCT = 25.0
TOOL = ToolSpec(
    name="lookup",
    description="Look something up about a task (a user tool, run as an activity).",
    input_schema={"type": "object", "properties": {"task_id": {"type": "string"}}},
)


class ToolCallingBrain:
    """`ScriptedAgentBrain` that also calls a user tool on about 1 in `every` of its
    tool-using replies (decided by a hash of the prompt, so a retried request gets
    the same reply), before its state-tool calls."""

    def __init__(self, inner: ScriptedAgentBrain, tool: str, every: int = 3) -> None:
        self.inner = inner
        self.tool = tool
        self.every = every

    def respond(self, request: dict[str, Any]) -> BrainReply:
        reply = self.inner.respond(request)
        uses = [i for i, b in enumerate(reply.content) if b.get("type") == "tool_use"]
        offered = {t.get("name") for t in request.get("tools") or []}
        if not uses or self.tool not in offered:
            return reply
        messages = list(request.get("messages") or [])
        digest = hashlib.sha256(
            (prompt_text(messages, request.get("system")) + "\x00user-tool").encode()
        ).hexdigest()
        if int(digest, 16) % self.every:
            return reply
        task = reply.content[uses[0]].get("input", {}).get("task_id", "")
        reply.content.insert(
            uses[0],
            {"type": "tool_use", "id": f"toolu_u{digest[:23]}", "name": self.tool,
             "input": {"task_id": task}},
        )
        return reply


class FlakyTool:
    """The user tool: fails on `rate` of its calls (half retryable, half not)."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.calls = 0
        self.retryable_failures = 0
        self.final_failures = 0

    async def __call__(self, tool_input: dict[str, Any]) -> str:
        self.calls += 1
        if self.rng.random() < self.rate:
            if self.rng.random() < 0.5:
                self.final_failures += 1
                raise ApplicationError("lookup failed (simulated)", non_retryable=True)
            self.retryable_failures += 1
            raise RuntimeError("lookup timed out (simulated, retried by Temporal)")
        return f"lookup {tool_input.get('task_id', '?')}: ok"


def _signature(check: SessionCheck, driver: CommandDriver) -> str:
    """Why a session is stuck, without ids (to group sessions by cause)."""
    if not check.problems:
        return f"driver: {driver.trouble}"
    first = check.problems[0]
    first = re.sub(r"soak-[0-9a-f-]+", "<session>", first)
    first = re.sub(r"P\d+-T\d{3}", "<task>", first)
    first = re.sub(r"attempt \d+", "attempt N", first)
    failing = next((r for r in check.sessions if r.task_failures), None)
    if failing is not None and failing.inbox:
        kinds = [c["kind"] for c in failing.inbox]
        keys = [(c["kind"], c["args"].get("task_id") or c["args"].get("blocker_id")) for c in failing.inbox]
        dup = any(n > 1 for k, n in Counter(keys).items() if k[1])
        first += f"; inbox carried into that run: {', '.join(kinds)}" + (
            " (same target twice)" if dup else ""
        )
    return first[:300]


async def one_session(
    i: int, client: Client, task_queue: str, args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(f"{args.seed}:{i}")
    handle = await start_session(
        client, task_queue, synthetic_project(args.tasks, 3), prefix="soak",
        context_window=4_000, max_tokens=300, max_generations=200, user_tools=[TOOL],
    )
    driver = CommandDriver(
        client, handle, command_timeout_s=60, query_timeout_s=20, poll_s=args.poll_s,
        stall_s=60,
    )
    t0 = time.monotonic()
    try:
        await driver.run(random_actions(rng, rng.randint(4, 10)))
        abort = rng.random() < 0.1
        left = max(10.0, args.cap_s - (time.monotonic() - t0))
        await driver.finish(abort=abort, timeout_s=left, min_generation=3)
        check = await check_session(client, handle, driver.first_run_id)
    finally:
        await driver.terminate_if_running("soak: stuck or not ended within the cap")
    ledger = check_exactly_once(driver.ledger, check)
    stuck = bool(check.problems) or driver.trouble is not None or check.result is None
    out: dict[str, Any] = {
        "id": handle.id,
        "stuck": stuck,
        "signature": _signature(check, driver) if stuck else "",
        "reason": check.result.reason.value if check.result else None,
        "handoffs": check.handoffs,
        "max_input": check.max_successor_input_bytes,
        "lost": len(ledger.lost),
        "doubled": len(ledger.doubled),
        "wrong": len(ledger.wrong),
        "ledger_problems": ledger.problems[:5],
        "problems": check.problems[:3],
        "trouble": driver.trouble,
        "task_timeouts": sum(r.task_timeouts for r in check.runs),
        "benign_task_failures": sum(r.benign_task_failures for r in check.runs),
        "wall_s": time.monotonic() - t0,
        **driver.counts(),
    }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fail_first = {f"P{p}-T{t:03d}" for p in (1, 2, 3) for t in range(1, args.tasks + 1) if t % 6 == 2}
    brain = ToolCallingBrain(
        ScriptedAgentBrain(tasks_per_turn=1, summary_words=30, blocker_every=7,
                           fail_first=fail_first),
        TOOL.name,
    )
    tool = FlakyTool(args.tool_failure_rate, args.seed)
    sessions: list[dict[str, Any]] = []
    t0 = time.time()
    with FakeAnthropicServer(brain=brain, latency_s=args.latency) as fake:
        async with dev_server() as env:
            config = env.client.config()
            config["plugins"] = [HandoffPlugin()]
            client = Client(**config)
            task_queue = f"soak-{uuid.uuid4().hex[:12]}"
            async with running_worker(
                client, task_queue, fake.base_url, tools=[UserTool(spec=TOOL, fn=tool)]
            ):
                gate = asyncio.Semaphore(args.concurrency)

                async def guarded(i: int) -> None:
                    async with gate:
                        try:
                            sessions.append(await one_session(i, client, task_queue, args))
                        except Exception as err:  # the harness itself failed: count as stuck
                            sessions.append({"id": f"#{i}", "stuck": True, "handoffs": 0,
                                             "signature": f"harness: {type(err).__name__}: {err}"})
                        if args.progress:
                            s = sessions[-1]
                            print(f"{len(sessions)}/{args.sessions} {s['id']} stuck={s['stuck']} "
                                  f"handoffs={s.get('handoffs')} {s.get('signature', '')[:120]}",
                                  file=sys.stderr, flush=True)

                await asyncio.gather(*(guarded(i) for i in range(args.sessions)))
    wall = time.time() - t0
    return summarize(sessions, tool, wall, args)


def summarize(
    sessions: list[dict[str, Any]], tool: FlakyTool, wall: float, args: argparse.Namespace
) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(int(s.get(key, 0)) for s in sessions)

    stuck = [s for s in sessions if s["stuck"]]
    handoffs = [s["handoffs"] for s in sessions]
    unstuck = [s["handoffs"] for s in sessions if not s["stuck"]]  # stuck ones stop early
    largest = max((s.get("max_input", 0) for s in sessions), default=0)
    reasons = Counter(s["signature"] for s in stuck)
    out: dict[str, Any] = {
        "sessions": len(sessions),
        "concurrency": args.concurrency,
        "stuck": len(stuck),
        "stuck_reasons": [{"count": n, "reason": r} for r, n in reasons.most_common(8)],
        "stuck_examples": [s["id"] for s in stuck[:5]],
        "completed": sum(1 for s in sessions if s.get("reason") == "TASK_COMPLETED"),
        "aborted": sum(1 for s in sessions if s.get("reason") == "USER_ABORT"),
        "commands_sent": total("sent"),
        "commands_accepted": total("accepted"),
        "commands_rejected": total("rejected"),
        "commands_unknown": total("unknown"),
        "signals_sent": total("signals"),
        "commands_during_handoff": total("during_handoff"),
        "commands_queued_for_successor": total("queued"),
        "updates_refused_at_continue_as_new": total("closed_run_refusals"),
        "stalled_queries_or_updates": total("stalls"),
        "lost": total("lost"),
        "doubled": total("doubled"),
        "wrongly_applied": total("wrong"),
        "ledger_problems": [p for s in sessions for p in s.get("ledger_problems", [])][:10],
        "problem_sessions": [
            {k: s.get(k) for k in ("id", "reason", "handoffs", "signature", "trouble", "problems",
                                    "ledger_problems")}
            for s in sessions
            if s["stuck"] or s.get("ledger_problems") or s.get("handoffs", 0) < 3
        ][:30],
        "handoffs": sum(handoffs),
        "min_handoffs": min(unstuck, default=0),
        "sessions_under_3_handoffs": sum(1 for h in unstuck if h < 3),
        "max_can_input_bytes": largest,
        "max_can_input_pct_of_2mib": round(100 * largest / TWO_MIB, 3),
        "tool_calls": tool.calls,
        "tool_failures": tool.retryable_failures + tool.final_failures,
        "tool_failures_retried": tool.retryable_failures,
        "workflow_task_timeouts": total("task_timeouts"),
        "unhandled_command_task_retries": total("benign_task_failures"),
        "session_wall_s_max": round(max((s.get("wall_s", 0.0) for s in sessions), default=0.0), 1),
        "wall_s": round(wall, 1),
        "seed": args.seed,
    }
    out["ok"] = (
        out["stuck"] == 0 and out["lost"] == 0 and out["doubled"] == 0
        and out["wrongly_applied"] == 0 and out["max_can_input_pct_of_2mib"] < MAX_INPUT_PCT
    )
    rows = [
        ["sessions (completed / aborted)", f"{out['sessions']} ({out['completed']} / {out['aborted']})", ""],
        ["sessions stuck", out["stuck"], "0"],
        ["commands sent / accepted", f"{out['commands_sent']} / {out['commands_accepted']}", ""],
        ["  rejected / no answer", f"{out['commands_rejected']} / {out['commands_unknown']}", ""],
        ["  while sealing a handoff / queued", f"{out['commands_during_handoff']} / {out['commands_queued_for_successor']}", ""],
        ["  refused at continue-as-new, resent", out["updates_refused_at_continue_as_new"], ""],
        ["  refused while workflow tasks timed out", out["stalled_queries_or_updates"], ""],
        ["commands lost", out["lost"], "0"],
        ["commands doubled", out["doubled"], "0"],
        ["commands wrongly applied", out["wrongly_applied"], "0"],
        ["handoffs (min per session not stuck)", f"{out['handoffs']} ({out['min_handoffs']})", "≥ 3 each"],
        ["largest continue-as-new input", f"{largest:,} B = {out['max_can_input_pct_of_2mib']:.2f}% of 2 MiB", f"< {MAX_INPUT_PCT:.0f}%"],
        ["user tool calls / failures (retried)", f"{tool.calls} / {out['tool_failures']} ({tool.retryable_failures})", ""],
        ["workflow task timeouts", out["workflow_task_timeouts"], ""],
        ["wall", f"{out['wall_s']} s", ""],
    ]
    table = fmt_table(["soak", "measured", "target"], rows)
    if reasons:
        table += "\n\nstuck sessions by cause:\n" + "\n".join(
            f"  {n:4d} × {r}" for r, n in reasons.most_common(8)
        )
    if out["ledger_problems"]:
        table += "\n\nledger problems (first):\n" + "\n".join(f"  {p}" for p in out["ledger_problems"])
    out["table"] = table
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="10 sessions, 5 at a time")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--tasks", type=int, default=40, help="tasks per session's project")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency", type=float, default=0.02, help="fake model latency, seconds")
    p.add_argument("--tool-failure-rate", type=float, default=0.1)
    p.add_argument("--cap-s", type=float, default=300.0,
                   help="a session not ended (or waiting) this long after its start is stuck")
    p.add_argument("--poll-s", type=float, default=0.05,
                   help="status polling interval while waiting for a handoff")
    p.add_argument("--progress", action="store_true", help="one line per session on stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.concurrency = 10, 5
    # Failed workflow tasks are found in the histories; the worker's log lines for
    # them (and for the flaky tool's failures) would flood the output.
    # A workflow whose __init__ raises leaves an un-awaited coroutine in the SDK.
    warnings.filterwarnings("ignore", message="coroutine '_WorkflowInstanceImpl", category=RuntimeWarning)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("temporalio").setLevel(logging.CRITICAL)
    # The SDK core logs (to stdout) each failing workflow task with its stack trace.
    Runtime.set_default(
        Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
            filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")
        ))),
        error_if_already_set=False,
    )
    result = asyncio.run(run(args))
    table = result.pop("table")
    emit(args.json, result, table)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
