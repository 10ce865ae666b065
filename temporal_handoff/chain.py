"""A session's handoff chain as rows: one per generation (run), for people.

Used by `handoff history` and the demo's closing table. The runs are read by
:mod:`temporal_handoff.runs`, the one reader of history.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from temporalio.client import Client

from temporal_handoff.runs import Run, read_chain
from temporal_handoff.schemas.handoff import RunRef
from temporal_handoff.schemas.tokens import TokenUsage


class RunSummary(BaseModel):
    generation: int
    run_id: str
    workflow_id: str = ""
    """The session (workflow id) this run belongs to; a resumed session's chain
    continues its predecessor's, under another id."""
    start: datetime | None = None
    end: datetime | None = None
    status: str = ""
    turns: int = 0
    """call_model activities of the conversation completed in this run."""
    note_calls: int = 0
    """The handoff note's call_model, when it completed (0 or 1; not a turn)."""
    model_attempts: int = 0
    """call_model attempts, retries included."""
    usage: TokenUsage = TokenUsage()
    """Sum of the usage returned by this run's completed model calls (the handoff
    note's included: the ledger counts it too)."""
    tokens_at_handoff: int | None = None
    """Context occupancy when this run handed off (or ended)."""
    payload_tokens: int | None = None
    """Tokens of the continuation prompt this run handed to its successor."""
    termination: str = ""
    handoff_child: str | None = None
    handoff_summary: str = ""
    previous_run_id: str = ""
    resumed_from: RunRef | None = None
    """For the first run of a session started with `--resume-from`: the predecessor
    session's last run."""


def run_summary(run: Run) -> RunSummary:
    """One row of the handoff chain, from a run read by :mod:`temporal_handoff.runs`."""
    notes = [c for c in run.note_calls if not c.preflight_refused]
    row = RunSummary(
        generation=run.generation,
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        start=run.start,
        end=run.end,
        status=run.status,
        turns=len(run.turns),
        model_attempts=run.model_attempts,
        note_calls=len(notes),
        usage=sum((c.usage for c in [*run.turns, *notes]), TokenUsage()),
        termination=run.ended_by if run.status != "RUNNING" else "",
        handoff_child=run.handoff_child,
        previous_run_id=run.previous_run_id,
        resumed_from=run.resumed_from,
    )
    if run.next_input is not None:
        if run.next_input.ledger is not None:
            row.tokens_at_handoff = run.next_input.ledger.occupancy
        if run.next_input.handoff is not None:
            row.payload_tokens = run.next_input.handoff.prompt_tokens
            row.handoff_summary = run.next_input.handoff.summary()
    elif run.result is not None:
        row.tokens_at_handoff = run.result.ledger.occupancy
        if run.result.final_handoff is not None:
            row.payload_tokens = run.result.final_handoff.prompt_tokens
    return row


async def session_chain(
    client: Client, workflow_id: str, *, follow_resumes: bool = False
) -> list[RunSummary]:
    """One row per run of a session (all generations), oldest first.

    With `follow_resumes`, a session started with `--resume-from` is preceded by its
    predecessor's runs (see :func:`temporal_handoff.runs.read_chain`); a predecessor
    run no longer in Temporal (past retention) is a row with status "UNAVAILABLE".
    """
    chain = await read_chain(client, workflow_id, follow_resumes=follow_resumes)
    gone = [
        RunSummary(
            generation=r.generation, run_id=r.run_id, workflow_id=r.workflow_id,
            status="UNAVAILABLE", termination="UNAVAILABLE",
        )
        for r in chain.unavailable
    ]
    return gone + [run_summary(run) for run in chain.runs]
