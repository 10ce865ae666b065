"""Benchmark: what prompt caching saves on the demo project, with and without the
conversation's moving cache breakpoint.

The 169-task demo project (`synthetic_project(169, 6)`, as `handoff demo` runs it:
`ScriptedAgentBrain(tasks_per_turn=2)`, Sonnet 4.6, an 8,000-token window so the
session hands off many times) runs to completion twice on the fake Messages API,
whose prompt cache follows Anthropic's documented rules (`testing/fake_cache.py`):

* **cached**: the worker's default, `HandoffOptions(conversation_cache=True)`: each
  call marks the last block of the conversation, so a turn reads the previous turns
  from the cache;
* **uncached**: `conversation_cache=False`: only the workflow's system breakpoint
  (tools + system + handoff prompt), as before.

Both sessions run at the same time, each with its own worker process and fake
server. Figures come from the session's own ledger (USD at list prices: cache writes
1.25× the input price, reads 0.1×) and are checked against the usage the fake
server answered. ``cache_read_fraction`` = cache-read tokens / all prompt tokens
(input + cache writes + cache reads); ``input_usd_ratio`` = USD on prompt tokens,
cached / uncached. Targets: fraction ≥ 0.80, ratio ≤ 0.30.

Run: ``.venv/bin/python bench/cost.py [--json] [--quick] [--tasks 169]``.

**Human waits** (``--human-wait MINUTES [--turns 8]``): the prompt-cache TTL policy
(`SessionConfig.cache_ttl`). A free-form chat session (a ~3,000-token system prompt,
replies of ~120 words) where the human answers each reply after MINUTES on the fake
cache's clock (`server.prompt_cache.clock`; the benchmark does not sleep), run twice at
the same time: ``cache_ttl="auto"`` and ``"5m"``. The workflow measures waits in
workflow time, so both set ``cache_wait_threshold_s=0`` when MINUTES ≥ 5 (every wait
counts as outlasting the 5-minute cache, as the cache's clock says it does) and keep
the default 300 s otherwise. USD from the session's ledger, checked against the fake.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MODEL, bench_client, dev_server, emit, fmt_table, temp_store, worker_process

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SayArgs, SessionInput, SessionResult, SessionStatus
from temporal_handoff.schemas.tokens import USAGE_FIELDS
from temporal_handoff.testing import BrainReply, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import filler
from temporal_handoff.testing.synthetic import synthetic_project

TARGET_FRACTION = 0.80
TARGET_USD_RATIO = 0.30
MODES = {"cached": [], "uncached": ["--no-conversation-cache"]}


async def _run_mode(
    env: Any, mode: str, *, tasks: int, phases: int, window: int, tasks_per_turn: int
) -> dict[str, Any]:
    with FakeAnthropicServer(
        brain=ScriptedAgentBrain(tasks_per_turn=tasks_per_turn),
        context_windows={MODEL: window},
    ) as fake, temp_store() as store:
        client = bench_client(env, store)
        async with worker_process(
            env, fake.base_url, storage_dir=store, extra_args=MODES[mode]
        ) as wp:
            t0 = time.time()
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(
                    config=SessionConfig(
                        model=MODEL, context_window=window, max_tokens=1024, user="bench"
                    ),
                    project=synthetic_project(tasks, phases),
                ),
                id=f"cost-{mode}-{uuid.uuid4().hex[:8]}",
                task_queue=wp.task_queue,
                result_type=SessionResult,
            )
            result: SessionResult = await handle.result()
            wall = time.time() - t0
        served = {f: 0 for f in USAGE_FIELDS}
        for r in fake.message_requests():
            if r.status == 200 and r.usage:
                for f in USAGE_FIELDS:
                    served[f] += int(r.usage.get(f, 0))
    led = result.ledger
    by_kind = {k: round(v, 6) for k, v in sorted(led.cost_by_kind.items())}
    return {
        "termination": result.reason.value,
        "tasks_completed": result.project.completed_count,
        "generations": result.generation + 1,
        "calls": led.calls,
        "input_tokens": led.field_total("input_tokens"),
        "cache_write_tokens": led.field_total("cache_creation_input_tokens"),
        "cache_read_tokens": led.field_total("cache_read_input_tokens"),
        "output_tokens": led.field_total("output_tokens"),
        "prompt_tokens": sum(
            led.field_total(f)
            for f in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ),
        "cache_read_fraction": round(led.cache_read_fraction, 4),
        "usd": round(led.cost_usd, 6),
        "input_usd": round(led.prompt_cost_usd, 6),
        "usd_by_kind": by_kind,
        "ledger_equals_server": all(led.field_total(f) == served[f] for f in USAGE_FIELDS),
        "wall_s": round(wall, 1),
    }


async def run(tasks: int, phases: int, window: int, tasks_per_turn: int) -> dict[str, Any]:
    async with dev_server() as env:
        cached, uncached = await asyncio.gather(
            *(
                _run_mode(env, mode, tasks=tasks, phases=phases, window=window,
                          tasks_per_turn=tasks_per_turn)
                for mode in MODES
            )
        )
    ratio = cached["input_usd"] / uncached["input_usd"] if uncached["input_usd"] else float("nan")
    return {
        "tasks": tasks,
        "phases": phases,
        "context_window": window,
        "model": MODEL,
        "cached": cached,
        "uncached": uncached,
        "cache_read_fraction": cached["cache_read_fraction"],
        "input_usd_ratio": round(ratio, 4),
        "usd_ratio": round(cached["usd"] / uncached["usd"], 4) if uncached["usd"] else None,
        "target_fraction": TARGET_FRACTION,
        "target_usd_ratio": TARGET_USD_RATIO,
        "met": cached["cache_read_fraction"] >= TARGET_FRACTION and ratio <= TARGET_USD_RATIO,
    }


class _ChatBrain:
    """Replies of ~120 words, the same for the same conversation length."""

    def respond(self, request: dict[str, Any]) -> BrainReply:
        n = len(request.get("messages") or [])
        return BrainReply(content=[{"type": "text", "text": filler(f"reply-{n}", 120)}])


class _CacheClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


CHAT_SYSTEM = "You help the human with their questions. " + filler("chat-system", 2300)


async def _awaiting(client: Any, wid: str, calls: int) -> None:
    handle = client.get_workflow_handle(wid)
    while True:
        st = await handle.query("status", result_type=SessionStatus)
        if st.awaiting_input and st.health.model_calls >= calls:
            return
        if st.health.model_calls > calls or st.open_blockers:
            raise RuntimeError(f"chat session {wid} went off script: {st.model_dump_json()}")
        await asyncio.sleep(0.05)


async def _run_chat(env: Any, mode: str, *, turns: int, wait_min: float) -> dict[str, Any]:
    clock = _CacheClock()
    with FakeAnthropicServer(brain=_ChatBrain()) as fake, temp_store() as store:
        fake.prompt_cache.clock = clock
        client = bench_client(env, store)
        async with worker_process(env, fake.base_url, storage_dir=store) as wp:
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(
                    config=SessionConfig(
                        model=MODEL, max_tokens=1024, user="bench", system_prompt=CHAT_SYSTEM,
                        cache_ttl=mode,  # type: ignore[arg-type]
                        cache_wait_threshold_s=0.0 if wait_min >= 5 else 300.0,
                    ),
                    project=ProjectState(goal="Answer the human's questions"),
                ),
                id=f"cost-wait-{mode}-{uuid.uuid4().hex[:8]}",
                task_queue=wp.task_queue,
                result_type=SessionResult,
            )
            for i in range(1, turns + 1):
                await _awaiting(client, handle.id, i)
                clock.now += 60 * wait_min
                await handle.execute_update(
                    "say", SayArgs(text=f"Question {i}: " + filler(f"question-{i}", 40))
                )
            await _awaiting(client, handle.id, turns + 1)
            await handle.signal("abort", "benchmark done")
            result: SessionResult = await handle.result()
        served = [r.usage for r in fake.message_requests() if r.status == 200 and r.usage]
    led = result.ledger
    return {
        "calls": led.calls,
        "ttl_calls": dict(sorted(led.cache_ttl_calls.items())),
        "input_tokens": led.field_total("input_tokens"),
        "cache_read_tokens": led.field_total("cache_read_input_tokens"),
        "cache_write_tokens": led.field_total("cache_creation_input_tokens"),
        "cache_write_1h_tokens": led.cache_write_1h_tokens,
        "output_tokens": led.field_total("output_tokens"),
        "after_wait_reads": [u["cache_read_input_tokens"] for u in served[1:]],
        "usd": round(led.cost_usd, 6),
        "ledger_equals_server": all(
            led.field_total(f) == sum(u[f] for u in served) for f in USAGE_FIELDS
        ),
    }


async def run_human_wait(turns: int, wait_min: float) -> dict[str, Any]:
    async with dev_server() as env:
        auto, fixed = await asyncio.gather(
            *(_run_chat(env, m, turns=turns, wait_min=wait_min) for m in ("auto", "5m"))
        )
    return {
        "scenario": "human-wait",
        "model": MODEL,
        "turns": turns,
        "wait_minutes": wait_min,
        "auto": auto,
        "5m": fixed,
        "usd_ratio": round(auto["usd"] / fixed["usd"], 4) if fixed["usd"] else None,
    }


def human_wait_table(result: dict[str, Any]) -> str:
    rows = [
        [
            mode, r["calls"], ", ".join(f"{k}: {v}" for k, v in r["ttl_calls"].items()),
            r["input_tokens"], r["cache_read_tokens"], r["cache_write_tokens"],
            r["cache_write_1h_tokens"], f"${r['usd']:.4f}",
        ]
        for mode, r in (("auto", result["auto"]), ("5m", result["5m"]))
    ]
    out = fmt_table(
        ["cache_ttl", "calls", "TTL per call", "input tok", "cache-read tok", "cache-write tok",
         "of which 1h", "total USD"],
        rows,
    )
    return out + (
        f"\nchat of {result['turns']} human turns, each answered after "
        f"{result['wait_minutes']:g} min (fake cache clock), {result['model']}: total USD "
        f"auto / 5m = {result['usd_ratio']:.3f}"
    )


def table(result: dict[str, Any]) -> str:
    rows = []
    for mode in MODES:
        r = result[mode]
        rows.append([
            mode, r["calls"], r["generations"], r["input_tokens"], r["cache_read_tokens"],
            r["cache_write_tokens"], r["output_tokens"], f"{r['cache_read_fraction']:.3f}",
            f"${r['input_usd']:.4f}", f"${r['usd']:.4f}",
        ])
    out = fmt_table(
        ["run", "calls", "gens", "input tok", "cache-read tok", "cache-write tok", "output tok",
         "read fraction", "input USD", "total USD"],
        rows,
    )
    return out + (
        f"\n{result['tasks']} tasks, {result['model']}, {result['context_window']:,}-token window; "
        f"cache_read_fraction {result['cache_read_fraction']:.3f} (target ≥ {TARGET_FRACTION}), "
        f"input USD cached/uncached {result['input_usd_ratio']:.3f} (target ≤ {TARGET_USD_RATIO}): "
        + ("met" if result["met"] else "MISSED")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="an 80-task project")
    p.add_argument("--tasks", type=int, default=169)
    p.add_argument("--phases", type=int, default=6)
    p.add_argument("--context-window", type=int, default=8_000, help="as `handoff demo`")
    p.add_argument("--tasks-per-turn", type=int, default=2)
    p.add_argument("--human-wait", type=float, default=None, metavar="MINUTES",
                   help="the cache-TTL scenario: a chat whose human answers after MINUTES")
    p.add_argument("--turns", type=int, default=8, help="human turns of --human-wait")
    args = p.parse_args(argv)
    if args.human_wait is not None:
        if args.human_wait < 0 or args.turns < 1:
            p.error("--human-wait must be ≥ 0 and --turns ≥ 1")
        hw = asyncio.run(run_human_wait(args.turns, args.human_wait))
        gc.collect()
        emit(args.json, hw, human_wait_table(hw))
        return 0
    if args.quick:
        args.tasks, args.phases = 80, 3
    result = asyncio.run(run(args.tasks, args.phases, args.context_window, args.tasks_per_turn))
    gc.collect()  # drop the Temporal clients before interpreter shutdown
    emit(args.json, result, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
