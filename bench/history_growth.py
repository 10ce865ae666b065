"""Benchmark: workflow history bytes and events per turn, by conversation size.

For each conversation size (1K, 50K, 150K tokens) a session's first model reply
carries that much text (`PaddingBrain`), so every later turn sends a conversation
of that size. Two sessions per size differ only in the number of turns; the
difference of their history sizes divided by the difference of their turns is the
per-turn growth, free of start and finish costs. Measured with the payload store
(`external_storage`, the embedded default) and without it (the naive design: the
whole conversation in every `call_model` input). For the store, the bytes it wrote
per turn are reported too, next to what a whole-payload store (the SDK's S3 driver
keys whole payloads by hash) would write.

Then one session runs with a 1M-token window until it hands off at 90%, and the
history is checked for Temporal's continue-as-new suggestion (`suggest_continue_as_new`
on any workflow task) and its size.

Run: ``.venv/bin/python bench/history_growth.py [--json] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MODEL,
    PaddingBrain,
    bench_client,
    by_session,
    dev_server,
    emit,
    flat_project,
    fmt_table,
    temp_store,
    worker_process,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from temporal_handoff.chain import session_chain
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.workers.storage import storage_stats

TARGET_BYTES_PER_TURN = 10 * 1024
WINDOW = 1_000_000
DRIFT = 1.15
SUGGEST_BYTES = 4 * 1024 * 1024
SUGGEST_EVENTS = 4 * 1024


def label(tokens: int) -> str:
    return f"{tokens // 1000}k" if tokens >= 1000 else str(tokens)


async def measure_size(
    client: Client, fake: FakeAnthropicServer, tq: str, pad: int, turns: tuple[int, int],
    store: str | None,
) -> dict[str, float]:
    fake.brain = PaddingBrain(ScriptedAgentBrain(tasks_per_turn=1, decision_every=0), pad, DRIFT)
    points = []
    for n_tasks in turns:
        before = storage_stats(store)["bytes"] if store else 0
        fake.reset_log()
        wid = f"hist-{label(pad)}-{uuid.uuid4().hex[:8]}"
        cfg = SessionConfig(model=MODEL, context_window=WINDOW, max_tokens=16_000)
        handle = await client.start_workflow(
            "AgentSessionWorkflow",
            SessionInput(config=cfg, project=flat_project(n_tasks)),
            id=wid, task_queue=tq, result_type=SessionResult,
        )
        await handle.result()
        # The first run only: without the store, Temporal may suggest continue-as-new
        # (history size) and the session hands off before its last task.
        hist = await client.get_workflow_handle(wid, run_id=handle.first_execution_run_id).fetch_history()
        size = sum(e.ByteSize() for e in hist.events)
        calls = sum(
            1
            for e in hist.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "call_model"
        )
        suggested = any(
            e.workflow_task_started_event_attributes.suggest_continue_as_new
            for e in hist.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
        )
        prompt = max((r.input_tokens or 0) for r in fake.requests)
        after = storage_stats(store)["bytes"] if store else 0
        payload_in = sum(
            e.activity_task_scheduled_event_attributes.input.ByteSize()
            for e in hist.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        )
        points.append(
            {"bytes": size, "events": len(hist.events), "turns": calls, "prompt": prompt,
             "store_bytes": after - before, "payload_in": payload_in, "suggested": suggested}
        )
    a, b = points
    if os.environ.get("BENCH_DEBUG"):
        print(pad, store is not None, points, file=sys.stderr)
    dt = b["turns"] - a["turns"]
    return {
        "bytes_per_turn": (b["bytes"] - a["bytes"]) / dt,
        "events_per_turn": (b["events"] - a["events"]) / dt,
        "store_bytes_per_turn": (b["store_bytes"] - a["store_bytes"]) / dt,
        "prompt_tokens": b["prompt"],
        "turns": b["turns"],
        "can_suggested": bool(a["suggested"] or b["suggested"]),
    }


async def whole_window(client: Client, fake: FakeAnthropicServer, tq: str, words: int) -> dict[str, Any]:
    """One session in a 1M window until it hands off at 90%; was CAN ever suggested?"""
    fake.brain = ScriptedAgentBrain(tasks_per_turn=1, decision_every=0, summary_words=words)
    fake.reset_log()
    wid = f"hist-1m-{uuid.uuid4().hex[:8]}"
    cfg = SessionConfig(
        model=MODEL, context_window=WINDOW, max_tokens=16_000, max_generations=2,
        model_call_timeout_s=600,
    )
    t0 = time.perf_counter()
    handle = await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=cfg, project=flat_project(400)),
        id=wid, task_queue=tq, result_type=SessionResult,
    )
    # Generation 0 fills the window; stop the session as soon as generation 1 runs.
    while True:
        await asyncio.sleep(1.0)
        chain = await session_chain(client, wid)
        if len(chain) > 1 or chain[-1].status not in ("RUNNING", ""):
            break
    await handle.signal("abort")
    await handle.result()
    wall = time.perf_counter() - t0
    chain = await session_chain(client, wid)
    gen0 = chain[0]
    hist = await client.get_workflow_handle(wid, run_id=gen0.run_id).fetch_history()
    size = sum(e.ByteSize() for e in hist.events)
    suggested = any(
        e.workflow_task_started_event_attributes.suggest_continue_as_new
        for e in hist.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    )
    server_size = max(
        (
            e.workflow_task_started_event_attributes.history_size_bytes
            for e in hist.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
        ),
        default=0,
    )
    gen0_prompts = [
        r.input_tokens or 0 for r in by_session(fake.requests).get(wid, [])
    ]
    peak = 0
    for tokens in gen0_prompts:  # generation 0's prompts grow until the handoff
        if tokens < peak * 0.5:
            break
        peak = max(peak, tokens)
    return {
        "window": WINDOW,
        "peak_prompt_tokens": peak,
        "peak_pct": round(100 * peak / WINDOW, 1),
        "turns": gen0.turns,
        "history_bytes": size,
        "server_history_size_bytes": server_size,
        "events": len(hist.events),
        "continue_as_new_suggested": suggested,
        "ended_by": gen0.termination,
        "wall_s": round(wall, 1),
    }


async def run(sizes: list[int], turns: tuple[int, int], naive: bool, window_words: int) -> dict[str, Any]:
    out: dict[str, Any] = {"target_bytes_per_turn": TARGET_BYTES_PER_TURN}
    rows = []
    with temp_store() as store, FakeAnthropicServer(
        context_windows={MODEL: WINDOW}, drift=DRIFT
    ) as fake:
        async with dev_server() as env:
            stored = bench_client(env, store)
            plain = bench_client(env, None)
            async with (
                worker_process(env, fake.base_url, storage_dir=store) as w_store,
                worker_process(env, fake.base_url, storage_dir=None) as w_plain,
            ):
                for pad in sizes:
                    lab = label(pad)
                    s = await measure_size(stored, fake, w_store.task_queue, pad, turns, store)
                    out[f"bytes_per_turn_{lab}"] = round(s["bytes_per_turn"])
                    out[f"events_per_turn_{lab}"] = round(s["events_per_turn"], 2)
                    out[f"store_bytes_per_turn_{lab}"] = round(s["store_bytes_per_turn"])
                    n: dict[str, float] = {}
                    if naive:
                        n = await measure_size(plain, fake, w_plain.task_queue, pad, turns, None)
                        out[f"naive_bytes_per_turn_{lab}"] = round(n["bytes_per_turn"])
                        out[f"naive_can_suggested_{lab}"] = n["can_suggested"]
                    rows.append(
                        [lab, s["prompt_tokens"], round(s["bytes_per_turn"]),
                         round(s["events_per_turn"], 1), round(s["store_bytes_per_turn"]),
                         (f"{round(n['bytes_per_turn']):,}" + (" (CAN!)" if n["can_suggested"] else ""))
                         if n else "-",
                         "ok" if s["bytes_per_turn"] <= TARGET_BYTES_PER_TURN else "MISS"]
                    )
                if window_words:
                    out["window_1m"] = await whole_window(stored, fake, w_store.task_queue, window_words)
    out["table"] = fmt_table(
        ["conversation", "prompt tokens", "history B/turn", "events/turn", "store B/turn",
         "naive history B/turn", f"≤ {TARGET_BYTES_PER_TURN} B"],
        rows,
    )
    w = out.get("window_1m")
    if w:
        out["table"] += (
            f"\n\n1M-token window: generation 0 reached {w['peak_prompt_tokens']:,} prompt tokens "
            f"({w['peak_pct']}%) in {w['turns']} turns; history {w['history_bytes']:,} B "
            f"(server: {w['server_history_size_bytes']:,} B), {w['events']} events; "
            f"continue-as-new suggested: {w['continue_as_new_suggested']}; ended by {w['ended_by']}."
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="1K and 20K tokens, no 1M run")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 50_000, 150_000])
    p.add_argument("--no-naive", action="store_true", help="skip the runs without the store")
    p.add_argument("--window-words", type=int, default=4_000,
                   help="summary words per turn in the 1M-window run (0 skips it)")
    args = p.parse_args(argv)
    turns = (3, 9)
    if args.quick:
        args.sizes, args.window_words, turns = [1_000, 20_000], 0, (2, 5)
    result = asyncio.run(run(args.sizes, turns, not args.no_naive, args.window_words))
    table = result.pop("table")
    emit(args.json, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
