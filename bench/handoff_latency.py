"""Benchmark: handoff latency, from the turn that crosses the threshold to the successor.

One session with a small context window hands off at every generation
(`max_generations` caps the chain). At the fake server, for each handoff: the time
from the end of the predecessor's last model response (the turn whose usage crossed
90%, or after which the pre-flight estimate would have) to the arrival of the
successor's first model request. In between: the seal signal, the child's
`build_handoff` activity (tiktoken budgets), the child's completion, the `notify`
activity, `all_handlers_finished`, continue-as-new, the new run's first workflow
task and its `model_info` activity.

Run: ``.venv/bin/python bench/handoff_latency.py [--json] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
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
    dev_server,
    emit,
    fmt_table,
    percentile,
    py_spy_record,
    summarize_collapsed,
    temp_store,
    worker_process,
)
from temporalio.api.enums.v1 import EventType

from temporal_handoff.chain import session_chain
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project

TARGET_P50 = 150.0
TARGET_P95 = 300.0
WINDOW = 6_000


_WAITS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "workflow task: queued (scheduled → started)",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow task: run on the worker",
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: "workflow task: run on the worker",
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "activity: queued",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "server: signal delivery",
    EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED: "server: signal delivery",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED: "server: child result delivery",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED: "server: child start",
}


async def breakdown(client: Any, wid: str, records: list[Any]) -> list[dict[str, float]]:
    """Where each handoff's time goes, from the three histories involved.

    Merges the events of the predecessor run, its handoff child and the successor
    run between the predecessor's last `call_model` completion and the successor's
    first `call_model`, and charges each gap to the event that ends it (a workflow
    task queued or running, an activity by name, a cross-workflow delivery).
    """
    chain = await session_chain(client, wid)
    out = []
    for k in range(len(chain) - 1):
        pred, succ = chain[k], chain[k + 1]
        events: list[tuple[float, str, str]] = []
        for w, rid, tag in (
            (wid, pred.run_id, "pred"), (f"{wid}-handoff-{pred.generation}", None, "child"),
            (wid, succ.run_id, "succ"),
        ):
            try:
                hist = await client.get_workflow_handle(w, run_id=rid).fetch_history()
            except Exception:
                continue
            names: dict[int, str] = {}
            for e in hist.events:
                t = e.event_time.ToMicroseconds() / 1e6
                et = e.event_type
                if et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    names[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
                    events.append((t, tag, f"sched:{names[e.event_id]}"))
                elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                    sid = e.activity_task_completed_event_attributes.scheduled_event_id
                    events.append((t, tag, f"activity: {names.get(sid, '?')}"))
                elif et in _WAITS:
                    events.append((t, tag, _WAITS[et]))
                elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                    events.append((t, tag, "continue-as-new"))
                else:
                    events.append((t, tag, "other (commands recorded)"))
        start = max(
            (t for t, tag, c in events if tag == "pred" and c == "activity: call_model"), default=None
        )
        end = min(
            (t for t, tag, c in events if tag == "succ" and c == "sched:call_model"), default=None
        )
        if start is None or end is None:
            continue
        window = sorted(x for x in events if start <= x[0] <= end)
        row: dict[str, float] = {}
        for (t0, _, _), (t1, _, cat) in zip(window, window[1:], strict=False):
            cat = "activity: queued" if cat.startswith("sched:") else cat
            row[cat] = row.get(cat, 0.0) + 1000 * (t1 - t0)
        # The edges, measured at the fake server: the model reply reaching the
        # history, and the successor's request reaching the model.
        first = next((r for r in records if r.t > end - 0.001), None)
        if first is not None:
            row["model request in flight"] = max(0.0, 1000 * (first.t - end))
        out.append(row)
    return out


async def run(handoffs: int, sessions: int, storage: bool, profile: bool) -> dict[str, Any]:
    brain = ScriptedAgentBrain(tasks_per_turn=1, summary_words=150, decision_every=5)
    per_session = -(-handoffs // sessions)
    latencies: list[float] = []
    gaps: list[dict[str, Any]] = []
    with temp_store() as store, FakeAnthropicServer(
        brain=brain, context_windows={MODEL: WINDOW}
    ) as fake:
        store_dir = store if storage else None
        async with dev_server() as env:
            client = bench_client(env, store_dir)
            async with worker_process(env, fake.base_url, storage_dir=store_dir) as wp:
                # Warm-up session: imports, tiktoken, sandbox, connections.
                await _session(client, wp.task_queue, 2)
                fake.reset_log()
                spy = None
                prof = BENCH_DIR / "profiles" / "handoff_latency_worker.txt"
                if profile:
                    spy = await py_spy_record(wp.pid, 600, prof)
                results = await asyncio.gather(
                    *[_session(client, wp.task_queue, per_session + 1) for _ in range(sessions)]
                )
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    await spy.wait()
                parts: list[dict[str, float]] = []
                for wid, rs in by_session(fake.requests).items():
                    parts += await breakdown(client, wid, rs)
    for wid, rs in by_session(fake.requests).items():
        for prev, nxt in zip(rs, rs[1:], strict=False):
            # The successor's prompt restarts from the compact handoff: far smaller.
            if (nxt.input_tokens or 0) < 0.6 * (prev.input_tokens or 0):
                done = prev.t + (prev.duration_s or 0.0)
                ms = 1000 * (nxt.t - done)
                latencies.append(ms)
                gaps.append({"session": wid, "ms": round(ms, 1)})
    reasons = sorted({r.reason.value for r in results})
    out: dict[str, Any] = {
        "handoffs": len(latencies),
        "sessions": sessions,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "final_reasons": reasons,
        "storage": storage,
        "target_p50_ms": TARGET_P50,
        "target_p95_ms": TARGET_P95,
    }
    cats = sorted({c for row in parts for c in row})
    med = {c: round(statistics.median(row.get(c, 0.0) for row in parts), 1) for c in cats}
    out["breakdown_median_ms"] = dict(sorted(med.items(), key=lambda kv: -kv[1]))
    if profile:
        prof = BENCH_DIR / "profiles" / "handoff_latency_worker.txt"
        out["profile_file"] = str(prof.relative_to(BENCH_DIR.parent))
        out["profile_categories"] = categorize_collapsed(prof)
        out["profile_top_inclusive"] = summarize_collapsed(prof, 12)
    ok50 = out["p50_ms"] <= TARGET_P50
    ok95 = out["p95_ms"] <= TARGET_P95
    out["table"] = fmt_table(
        ["handoffs", "p50 ms", "p95 ms", "mean ms", "max ms", "target p50/p95", "met"],
        [[len(latencies), out["p50_ms"], out["p95_ms"], out["mean_ms"], out["max_ms"],
          f"{TARGET_P50:.0f}/{TARGET_P95:.0f}", "yes" if ok50 and ok95 else "NO"]],
    )
    out["table"] += "\n\nWhere a handoff's time goes (median ms per handoff, from the histories):\n"
    out["table"] += fmt_table(
        ["segment", "ms"], list(out["breakdown_median_ms"].items())
    )
    return out


async def _session(client: Any, tq: str, generations: int) -> SessionResult:
    cfg = SessionConfig(
        model=MODEL, context_window=WINDOW, max_tokens=300, max_generations=generations
    )
    handle = await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=cfg, project=synthetic_project(600, 6)),
        id=f"handoff-lat-{uuid.uuid4().hex[:10]}",
        task_queue=tq,
        result_type=SessionResult,
    )
    return await handle.result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="3 handoffs")
    p.add_argument("--handoffs", type=int, default=40)
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions")
    p.add_argument("--no-storage", action="store_true")
    p.add_argument("--profile", action="store_true", help="py-spy the worker (if installed)")
    args = p.parse_args(argv)
    if args.quick:
        args.handoffs = 3
    result = asyncio.run(run(args.handoffs, args.sessions, not args.no_storage, args.profile))
    table = result.pop("table")
    emit(args.json, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
