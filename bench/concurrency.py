"""Benchmark: N concurrent sessions on one worker against a 1 s-latency fake model.

Every session runs `tasks` turns (one task per turn) then finishes. With a model
that takes `latency` seconds per call and no overhead, each session would do one
turn per `latency` and the worker N / latency turns per second: that is the ideal.
`efficiency` = achieved / ideal turns per second, measured at the fake server over
the window in which all N sessions are running (so the ramp of starting N
workflows is not counted); `efficiency_overall` counts the whole run, ramp
included. `rss_mb` is the worker process's peak resident set size; `errors` counts
failed sessions, non-200 model responses and sessions that did not complete.

Run: ``.venv/bin/python bench/concurrency.py [--json] [--quick] [--sessions N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    MODEL,
    bench_client,
    by_session,
    categorize_collapsed,
    cpu_seconds,
    dev_server,
    emit,
    flat_project,
    fmt_table,
    py_spy_record,
    steady_per_turn_ms,
    summarize_collapsed,
    temp_store,
    top_self,
    worker_process,
)

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain

TARGET_EFFICIENCY = 0.8


async def run(
    sessions: int, tasks: int, latency: float, profile: bool, storage: bool = True
) -> dict[str, Any]:
    brain = ScriptedAgentBrain(tasks_per_turn=1, decision_every=0)
    cfg = SessionConfig(model=MODEL)
    prof_path = BENCH_DIR / "profiles" / "concurrency_worker.txt"
    out: dict[str, Any] = {"sessions": sessions, "tasks_per_session": tasks, "latency_s": latency}
    with temp_store() as tmp, FakeAnthropicServer(brain=brain, latency_s=latency) as fake:
        store = tmp if storage else None
        out["storage"] = storage
        async with dev_server() as env:
            client = bench_client(env, store)
            async with worker_process(
                env, fake.base_url, storage_dir=store, max_concurrent=sessions + 50
            ) as wp:
                # Warm-up: imports, sandbox, tiktoken, connections.
                warm = await client.start_workflow(
                    "AgentSessionWorkflow", SessionInput(config=cfg, project=flat_project(1)),
                    id=f"warm-{uuid.uuid4().hex[:8]}", task_queue=wp.task_queue,
                    result_type=SessionResult,
                )
                await warm.result()
                fake.reset_log()
                cpu0 = cpu_seconds(wp.pid)
                t0 = time.time()
                handles = await asyncio.gather(
                    *[
                        client.start_workflow(
                            "AgentSessionWorkflow",
                            SessionInput(config=cfg, project=flat_project(tasks)),
                            id=f"conc-{uuid.uuid4().hex[:12]}",
                            task_queue=wp.task_queue,
                            result_type=SessionResult,
                        )
                        for _ in range(sessions)
                    ],
                    return_exceptions=True,
                )
                started = time.time() - t0
                spy_task = None
                if profile:
                    # Sample the worker in steady state: once a quarter of the turns are
                    # done (all sessions started), for up to 20 s.
                    async def sample() -> None:
                        while len(fake.requests) < sessions * tasks // 4:
                            await asyncio.sleep(0.5)
                        spy = await py_spy_record(wp.pid, 20, prof_path)
                        if spy is not None:
                            await spy.wait()

                    spy_task = asyncio.create_task(sample())
                ok_handles = [h for h in handles if not isinstance(h, BaseException)]
                results = await asyncio.gather(
                    *[h.result() for h in ok_handles], return_exceptions=True
                )
                wall = time.time() - t0
                cpu = cpu_seconds(wp.pid) - cpu0
                if spy_task is not None:
                    await spy_task
            out["rss_mb"] = wp.stats.get("rss_peak_mb")
            out["rss_end_mb"] = wp.stats.get("rss_mb")
    records = fake.requests
    per = by_session(records)
    turns = sum(len(rs) for rs in per.values())
    non200 = sum(1 for r in records if r.path == "/v1/messages" and r.status != 200)
    failed = sum(1 for r in results if isinstance(r, BaseException))
    unfinished = sum(
        1
        for r in results
        if not isinstance(r, BaseException) and r.reason != TerminationReason.TASK_COMPLETED
    )
    start_errors = len(handles) - len(ok_handles)
    per_turn_ms = steady_per_turn_ms(per)
    times = sorted(r.t for rs in per.values() for r in rs)
    span = (times[-1] - times[0] + latency) if times else float("nan")
    ideal = sessions / latency
    out.update(
        {
            "efficiency": round(1000 * latency / per_turn_ms, 3),
            "efficiency_overall": round((turns / span) / ideal, 3),
            "turns": turns,
            "turns_per_s": round(1000 * sessions / per_turn_ms, 1),
            "turns_per_s_overall": round(turns / span, 1),
            "ideal_turns_per_s": round(ideal, 1),
            "per_turn_ms": round(per_turn_ms, 1),
            "errors": failed + non200 + unfinished + start_errors,
            "error_detail": {"failed": failed, "non_200": non200, "not_completed": unfinished,
                             "start_failed": start_errors},
            "start_s": round(started, 2),
            "wall_s": round(wall, 1),
            "worker_cpu_s": round(cpu, 1),
            "worker_cpu_ms_per_turn": round(1000 * cpu / max(1, turns), 2),
            "target_efficiency": TARGET_EFFICIENCY,
        }
    )
    if profile:
        out["profile_file"] = str(prof_path.relative_to(BENCH_DIR.parent))
        out["profile_categories"] = categorize_collapsed(prof_path)
        out["profile_top_inclusive"] = summarize_collapsed(prof_path, 15)
        out["profile_top_self"] = top_self(prof_path, 15)
    out["table"] = fmt_table(
        ["sessions", "turns", "turns/s", "ideal", "efficiency", "overall", "worker CPU ms/turn",
         "RSS MB", "errors", f"≥ {TARGET_EFFICIENCY}"],
        [[sessions, turns, out["turns_per_s"], out["ideal_turns_per_s"], out["efficiency"],
          out["efficiency_overall"], out["worker_cpu_ms_per_turn"], out["rss_mb"], out["errors"],
          "ok" if out["efficiency"] >= TARGET_EFFICIENCY and out["errors"] == 0 else "MISS"]],
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="50 sessions, 3 tasks")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=10, help="tasks (turns) per session")
    p.add_argument("--latency", type=float, default=1.0, help="fake model latency, seconds")
    p.add_argument("--profile", action="store_true", help="py-spy the worker (if installed)")
    p.add_argument("--no-storage", action="store_true", help="without the payload store")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.tasks = 50, 3
    result = asyncio.run(
        run(args.sessions, args.tasks, args.latency, args.profile, not args.no_storage)
    )
    table = result.pop("table")
    emit(args.json, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
