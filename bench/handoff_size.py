"""Benchmark: handoff prompt size, budget compliance and speed per project size and level.

For seeded synthetic projects of 169, 500 and 5,000 tasks in a realistic mid-run
state (≈40% done, ~20 agent decisions, 3 human decisions, 2 open blockers, 2 failed
tasks, files, todos, errors), renders the continuation prompt at each level and
reports, per (size, level):

* ``tokens`` / ``budget`` — calibrated tiktoken count of the prompt and its budget;
* ``naive_tokens`` — tokens of the naive handoff: the whole state plus context
  as ``json.dumps`` with default separators, no indent (indent=2 would be ~20%
  larger, minified ~20% smaller); ``reduction`` = 1 - tokens / naive;
* ``critical_recall`` — fraction of critical ids (current phase, open blockers,
  human decisions, failed tasks, next eligible tasks) present backticked;
* ``delta_tokens`` — tokens of the "since last handoff" section for a typical
  between-handoff change (10 completions + 2 decisions);
* ``render_ms`` — median wall time of build + render (tiktoken warm).

Run: ``.venv/bin/python bench/handoff_size.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from temporal_handoff.activities.handoff_activity import BuildHandoffInput, render_payload
from temporal_handoff.activities.tokenizer import count_tokens
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload, RunRef
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.state_events import EventOp, StateEvent, apply_event
from temporal_handoff.schemas.tokens import TokenLedger, TokenUsage
from temporal_handoff.testing.synthetic import synthetic_project

SIZES = (169, 500, 5000)
LEVELS = (CompressionLevel.MINIMAL, CompressionLevel.STANDARD, CompressionLevel.FULL)
KEYS = (
    "size",
    "level",
    "tokens",
    "budget",
    "naive_tokens",
    "reduction",
    "critical_recall",
    "delta_tokens",
    "render_ms",
    "within_budget",
)
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
SUMMARY = (
    "Implemented the change, added unit tests for the new behaviour, updated the "
    "docs and verified the build and the linters pass on the branch."
)


def _ev(op: EventOp, gen: int, i: int, by: str = "agent", **args: object) -> StateEvent:
    return StateEvent(op=op, args=args, by=by, generation=gen, at=T0 + timedelta(minutes=i))


def realistic_state(n: int, seed: int = 7) -> tuple[ProjectState, list[StateEvent]]:
    """A mid-run project and the events of the last between-handoff change.

    Returns:
        The state (all events applied) and the events since the previous handoff:
        10 completions, 2 agent decisions and the 2 failures.
    """
    state = synthetic_project(n, 6, seed)
    target = int(n * 0.4) - 10
    gen = 2
    events: list[StateEvent] = []

    def apply(ev: StateEvent) -> None:
        apply_event(state, ev)
        events.append(ev)

    decision_every = max(1, target // 20)
    done = 0
    i = 0
    # Plan order is a valid completion order for synthetic projects (every
    # dependency points backwards), and avoids an O(n) eligibility scan per step.
    plan = iter(list(state.tasks))
    while done < target:
        tid = next(plan)
        if done and done % decision_every == 0:
            apply(
                _ev(
                    "record_decision",
                    gen,
                    i,
                    title=f"Use the adapter pattern for {tid}",
                    rationale="Keeps the storage layer swappable and the tests fast.",
                    rejected=[f"Inline SQL in {tid}"] if done % (3 * decision_every) == 0 else [],
                )
            )
        apply(_ev("complete_task", gen, i, task_id=tid, summary=SUMMARY))
        done += 1
        i += 1
        if done % max(1, target // 8) == 0:
            apply(_ev("note_file", gen, i, path=f"src/module_{done}.py", note="main change"))
    for k, who in enumerate(("human:alice", "human:bob", "human:alice")):
        apply(
            _ev(
                "record_decision",
                gen,
                i + k,
                by=who,
                title=f"Approved approach #{k + 1} for the rollout",
                rationale="Matches the team's conventions.",
            )
        )
    for k in range(5):
        apply(_ev("add_todo", gen, i, text=f"Follow up on flaky test suite part {k + 1}"))
    for key, value in (("node", "20.11"), ("db", "postgres 16"), ("region", "eu-west-1")):
        apply(_ev("set_environment", gen, i, key=key, value=value))
    apply(_ev("human_message", gen, i, by="human:alice", text="Prioritise the API tasks."))
    apply(_ev("record_error", gen, i, source="tool", message="pytest timed out after 600 s"))
    # Blockers: one human decision on a task further down the plan, one external.
    later = next(t for t in reversed(state.tasks) if not state.done(t))
    apply(
        _ev(
            "add_blocker",
            gen,
            i,
            blocker_type="human_decision",
            task_id=later,
            description="Which database should the reporting service use: Postgres or ClickHouse?",
        )
    )
    apply(
        _ev(
            "add_blocker",
            gen,
            i,
            blocker_type="external",
            description="Waiting for the staging credentials from the platform team.",
        )
    )
    # The typical change since the previous handoff: 10 completions, 2 decisions;
    # then two tasks fail (they stay eligible: a retry).
    since: list[StateEvent] = []
    for k in range(10):
        tid = state.next_eligible()[0]
        ev = _ev("complete_task", gen, i + k, task_id=tid, summary=SUMMARY)
        apply(ev)
        since.append(ev)
        if k in (3, 8):
            dec = _ev(
                "record_decision",
                gen,
                i + k,
                title=f"Cache results of {tid}",
                rationale="Saves a round trip per request.",
            )
            apply(dec)
            since.append(dec)
    for tid in state.next_eligible()[:2]:
        ev = _ev(
            "fail_task",
            gen,
            i + 11,
            task_id=tid,
            error=f"integration test for {tid} fails: connection refused",
        )
        apply(ev)
        since.append(ev)
    return state, since


def context_for(n: int, since: list[StateEvent]) -> HandoffContext:
    ledger = TokenLedger()
    for k in range(40):
        ledger.record(
            TokenUsage(
                input_tokens=2_000,
                output_tokens=800,
                cache_read_input_tokens=1_000 + 4_000 * k,
                cache_creation_input_tokens=3_000,
            ),
            "claude-sonnet-4-5",
        )
    runs = [
        RunRef(
            generation=g,
            workflow_id=f"session-{n}",
            run_id=f"0194a{g:03d}-7c1e-7d3f-9a55-2b8e{g:08d}",
        )
        for g in range(3)
    ]
    return HandoffContext(
        session_id=f"session-{n}",
        generation=2,
        run_id=runs[-1].run_id,
        reason=TerminationReason.CONTEXT_HANDOFF,
        model="claude-sonnet-4-5",
        ledger=ledger,
        lineage=runs,
        events_since_last_handoff=since,
        recent_human_input=["Prioritise the API tasks."],
        tool_state={"cwd": "/workspace/app", "branch": "feature/reporting"},
    )


def naive_tokens(state: ProjectState, ctx: HandoffContext, **dumps_kw: object) -> int:
    """Tokens of the naive handoff: state and context as one ``json.dumps`` (defaults)."""
    dump = {"state": state.model_dump(mode="json"), "context": ctx.model_dump(mode="json")}
    return count_tokens(json.dumps(dump, **dumps_kw))  # type: ignore[arg-type]


def critical_recall(payload: HandoffPayload) -> float:
    ids = payload.document.critical_ids()
    if not ids:
        return 1.0
    return sum(1 for x in ids if f"`{x}`" in payload.prompt) / len(ids)


def run(sizes: tuple[int, ...] = SIZES, repeats: int = 7) -> list[dict[str, object]]:
    count_tokens("warm up the encoder")
    rows: list[dict[str, object]] = []
    for n in sizes:
        state, since = realistic_state(n)
        ctx = context_for(n, since)
        naive = naive_tokens(state, ctx)
        for level in LEVELS:
            inp = BuildHandoffInput(state=state, context=ctx, level=level)
            times = []
            payload = render_payload(inp)
            for _ in range(repeats):
                t = time.perf_counter()
                payload = render_payload(inp)
                times.append((time.perf_counter() - t) * 1000)
            rows.append(
                {
                    "size": n,
                    "level": level.value,
                    "tokens": payload.prompt_tokens,
                    "budget": payload.budget,
                    "naive_tokens": naive,
                    "reduction": round(1 - payload.prompt_tokens / naive, 4),
                    "critical_recall": round(critical_recall(payload), 4),
                    "delta_tokens": payload.delta_tokens,
                    "render_ms": round(statistics.median(times), 2),
                    "within_budget": payload.prompt_tokens <= payload.budget
                    and payload.level == level,
                }
            )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = f"{'size':>5} {'level':<8} {'tokens':>6} {'budget':>6} {'naive':>7} {'reduct':>7} "
    head += f"{'recall':>6} {'delta':>5} {'delta%':>6} {'ms':>6} ok"
    out = [head, "-" * len(head)]
    for r in rows:
        pct = 100 * int(r["delta_tokens"]) / max(1, int(r["tokens"]))  # type: ignore[call-overload]
        out.append(
            f"{r['size']:>5} {r['level']:<8} {r['tokens']:>6} {r['budget']:>6} "
            f"{r['naive_tokens']:>7} {r['reduction']:>7.3f} {r['critical_recall']:>6.2f} "
            f"{r['delta_tokens']:>5} {pct:>5.1f}% {r['render_ms']:>6.2f} "
            f"{'yes' if r['within_budget'] else 'NO'}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help='print {"rows": [...]} as JSON')
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=7, help="timed renders per row")
    args = parser.parse_args(argv)
    rows = run(tuple(args.sizes), args.repeats)
    if args.json:
        print(json.dumps({"rows": rows}, sort_keys=False))
    else:
        print(table(rows))
    return 0 if all(r["within_budget"] and r["critical_recall"] == 1.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
