"""Benchmark: does the successor continue from the handoff alone, across 20+ handoffs?

Each run is a real session (embedded dev server, in-process worker, real `anthropic`
client, the strict loopback fake) with ``progress_hints=False`` and the `PayloadAgent`
as the model: it reads only the request, so what a generation knows about the work
before it (done tasks, decisions and their rejected options, human decisions, failed
approaches, half-finished steps) comes from the continuation prompt and `recall`
alone. The project is `synthetic_project(N)` with the kinds of `fidelity_plan` (seeded);
a handoff is forced every 4 turns (`max_turns_per_generation`, or earlier when the
context fills).

Per project size and compression level, and for the blanked control (the agent reads
"(nothing)" instead of the continuation prompt; one per size, given as many generations
as the slowest honest level needed plus two):

* ``generations`` and ``reason``;
* ``tasks_repeated`` (re-completions, step 1 redone, a blocker or decision raised again),
  ``tasks_skipped`` (tasks never completed);
* ``decisions_honoured`` / ``decisions_made`` (agent decisions checked at the task that
  uses them, human decisions at their task and its user);
* ``failed_retries_changed_approach`` / ``failed_retries``;
* ``critical_survival_by_generation``: after each handoff, the fraction of generation
  0's critical items (current phase, open blockers, human decisions with their text,
  failed tasks with their error, next eligible tasks) that are still critical and
  present in the prompt the successor read;
* ``probe_misses``: critical items of each handoff missing from the prompt the
  successor read, by the handoff's own probes (`documents.probe`), summed over handoffs;
* ``payload_tokens``: mean and max of the continuation prompts, with the level budget.

Run: ``.venv/bin/python bench/handoff_fidelity.py [--json] [--quick] [--sizes 169 500]
[--levels minimal standard full] [--seed S]``. Exit status 1 if an honest run
repeated or skipped a task, forgot a decision, retried a failed approach unchanged or
missed a probe, or if a control did not come out worse.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import MODEL, dev_server, emit, fmt_table, machine
from temporalio.client import Client

from temporal_handoff.schemas.config import DEFAULT_LEVEL_BUDGETS, CompressionLevel, SessionConfig
from temporal_handoff.testing import FakeAnthropicServer, PayloadAgent, count_tokens, fidelity_plan
from temporal_handoff.testing.fidelity_run import FidelityRun, run_fidelity
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin
from tests.conftest import running_worker

TURNS_PER_GENERATION = 4
"""A handoff is forced after this many turns (`max_turns_per_generation`)."""
TURN_ROOM = 2_000
"""Tokens of conversation a generation has room for beyond its fixed prompt."""
MAX_TOKENS = 512


def window_for(system_prompt: str) -> int:
    """A context window with `TURN_ROOM` tokens past the fixed prompt at the handoff
    threshold, sized for the *full* level's budget whatever the level: a payload the
    probe check escalated must still leave its successor room to work (sized for the
    level alone, one escalation made every later generation hand off before its first
    call). The system prompt is counted as the fake server counts it: the plan's ids
    cost about twice the 4-characters-a-token estimate of `fixed_prompt_tokens`, and a
    window sized on that estimate left no room for a single call at 500 tasks.
    Handoffs then come from `TURNS_PER_GENERATION`, or earlier from tokens."""
    cfg = SessionConfig(system_prompt=system_prompt, compression_level=CompressionLevel.FULL)
    estimated = len(system_prompt) // 4
    fixed = cfg.fixed_prompt_tokens() - estimated + count_tokens(system_prompt)
    return int((fixed + TURN_ROOM + MAX_TOKENS) / cfg.handoff_threshold)


async def one(
    client: Client, size: int, level: CompressionLevel, seed: int, blank: bool, max_gen: int
) -> FidelityRun:
    project = synthetic_project(size, 6, seed=seed)
    plan = fidelity_plan(project, seed=seed)
    window = window_for(plan.system_prompt())
    agent = PayloadAgent(seed=seed, blank_handoff=blank)
    with FakeAnthropicServer(brain=agent, context_windows={MODEL: window}) as fake:
        task_queue = f"fidelity-{uuid.uuid4().hex[:12]}"
        async with running_worker(client, task_queue, fake.base_url):
            return await run_fidelity(
                client,
                task_queue,
                project,
                plan,
                agent,
                level=level,
                context_window=window,
                max_generations=max_gen,
                max_tokens=MAX_TOKENS,
                max_turns_per_generation=TURNS_PER_GENERATION,
                prefix=f"fidelity-{size}-{level.value}" + ("-blank" if blank else ""),
            )


def row(run: FidelityRun, level: str) -> dict[str, Any]:
    out = run.summary()
    tokens = out.pop("payload_tokens")
    levels = out.pop("payload_levels")
    out["payload_tokens"] = {
        "mean": round(statistics.mean(tokens)) if tokens else 0,
        "max": max(tokens, default=0),
        "budget": DEFAULT_LEVEL_BUDGETS.get(level),
        # The probe check escalates a level whose budget cannot hold every critical
        # item: each prompt is held to the budget of the level it was rendered at.
        "rendered_at": {lv: levels.count(lv) for lv in DEFAULT_LEVEL_BUDGETS if lv in levels},
        "over_budget": sum(
            t > DEFAULT_LEVEL_BUDGETS[lv] for t, lv in zip(tokens, levels, strict=True)
        ),
    }
    surv = [x for x in out["critical_survival_by_generation"] if x is not None]
    out["critical_survival_min"] = min(surv) if surv else None
    return out


def ok(r: dict[str, Any]) -> bool:
    return (
        r["reason"] == "TASK_COMPLETED"
        and r["tasks_repeated"] == 0
        and r["tasks_skipped"] == 0
        and r["decisions_honoured"] == r["decisions_made"]
        and r["failed_retries_changed_approach"] == r["failed_retries"]
        and r["probe_misses"] == 0
        and r["progress_hints_seen"] == 0
        and r["payload_tokens"]["over_budget"] == 0
    )


def worse(control: dict[str, Any], honest: list[dict[str, Any]]) -> bool:
    return (
        control["reason"] != "TASK_COMPLETED"
        and (control["tasks_repeated"] > 0 or control["tasks_skipped"] > 0)
        and control["decisions_honoured"] < control["decisions_made"]
        and bool(honest)
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": {}}
    t0 = time.time()
    async with dev_server() as env:
        config = env.client.config()
        config["plugins"] = [HandoffPlugin()]
        client = Client(**config)
        for size in args.sizes:
            per: dict[str, Any] = {}
            for name in args.levels:
                level = CompressionLevel(name)
                r = await one(client, size, level, args.seed, blank=False, max_gen=size)
                per[name] = row(r, name)
                print(
                    f"{size} {name}: {per[name]['generations']} generations, {r.wall_s:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            budget = max(v["generations"] for v in per.values()) + 2
            level = CompressionLevel(args.levels[0])
            c = await one(client, size, level, args.seed, blank=True, max_gen=budget)
            per["control_blank"] = row(c, level.value)
            print(
                f"{size} control: {c.generations} generations, {c.wall_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            results["sizes"][str(size)] = per
    honest = [v for s in results["sizes"].values() for k, v in s.items() if k != "control_blank"]
    controls = [s["control_blank"] for s in results["sizes"].values()]
    results.update(
        seed=args.seed,
        wall_s=round(time.time() - t0, 1),
        all_honest_ok=all(ok(r) for r in honest),
        all_controls_worse=all(worse(c, honest) for c in controls),
        probe_check="documents.probe on each handoff's state vs the prompt the successor read",
        machine=machine(),
    )
    return results


def table(results: dict[str, Any]) -> str:
    headers = [
        "size",
        "level",
        "gens",
        "reason",
        "repeated",
        "skipped",
        "decisions",
        "retries changed",
        "steps resumed",
        "survival min",
        "probe misses",
        "payload tok mean/max/budget",
        "rendered at",
        "over budget",
        "wall s",
    ]
    rows = []
    for size, per in results["sizes"].items():
        for level, r in per.items():
            p = r["payload_tokens"]
            rows.append(
                [
                    size,
                    level,
                    r["generations"],
                    r["reason"],
                    r["tasks_repeated"],
                    r["tasks_skipped"],
                    f"{r['decisions_honoured']}/{r['decisions_made']}",
                    f"{r['failed_retries_changed_approach']}/{r['failed_retries']}",
                    f"{r['steps_resumed']}/{r['steps_tasks']}",
                    "n/a" if r["critical_survival_min"] is None else r["critical_survival_min"],
                    r["probe_misses"],
                    f"{p['mean']}/{p['max']}/{p['budget']}",
                    " ".join(f"{k}:{v}" for k, v in p["rendered_at"].items()),
                    p["over_budget"],
                    r["wall_s"],
                ]
            )
    return fmt_table(headers, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="169 tasks, standard level only")
    p.add_argument("--sizes", type=int, nargs="+", default=[169, 500])
    p.add_argument(
        "--levels",
        nargs="+",
        default=[lv.value for lv in CompressionLevel],
        choices=[lv.value for lv in CompressionLevel],
    )
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.levels = [169], ["standard"]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    warnings.filterwarnings("ignore")
    results = asyncio.run(run(args))
    emit(args.json, results, table(results))
    sys.exit(0 if results["all_honest_ok"] and results["all_controls_worse"] else 1)


if __name__ == "__main__":
    main()
