"""A session as the files of a seed layout (pure: what to write, not writing it).

`handoff export --layout context-protocol|orchestrator` gathers one
:class:`Generation` per run from Temporal and writes what these functions return,
relative path → text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffDocument
from temporal_handoff.schemas.project import HandoffRecord, ProjectState
from temporal_handoff.seeds import context_protocol, orchestrator
from temporal_handoff.seeds.session_summary import (
    BLOCKERS_LOG,
    DECISIONS_LOG,
    SessionFacts,
    blockers_log,
    decisions_log,
    session_summary,
    summary_path,
)

LAYOUTS = ("context-protocol", "orchestrator")


@dataclass
class Generation:
    """One run of a session, as the layouts need it."""

    generation: int
    start: ProjectState
    """The state the run started from (its input)."""
    end: ProjectState
    """The state it left (the next run's input, its result, or the live state)."""
    started_at: datetime | None = None
    closed_at: datetime | None = None
    ended: str = ""
    """Why it ended (a TerminationReason value); "" while it runs."""
    context_fraction: float | None = None
    """Context occupancy at its handoff, when it handed off."""
    handoff_id: str = ""
    """The handoff child's workflow id, when it handed off."""
    handoff_tokens: int = 0


def as_json(data: Any) -> str:
    """JSON in the layouts' own key order, two-space indent, newline at the end."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def context_protocol_files(
    state: ProjectState, generations: list[Generation], *, updated_at: datetime | None = None,
    agent: str = "Claude",
) -> dict[str, str]:
    """`state.json`, one session summary per generation, `decisions.log`, `blockers.log`.

    Sessions are numbered after the imported `health.sessions_count` (a project that
    had 4 sessions before continues with session 05).
    """
    seed = state.seed.health if state.seed and state.seed.health else None
    before = (seed.sessions_count or 0) if seed else 0
    files = {
        context_protocol.STATE_FILE: as_json(
            context_protocol.to_state_json(
                state, updated_at=updated_at, sessions=len(generations), agent=agent.lower()
            )
        ),
        DECISIONS_LOG: decisions_log(state),
        BLOCKERS_LOG: blockers_log(state),
    }
    for gen in generations:
        when = gen.started_at or updated_at
        facts = SessionFacts(
            number=before + gen.generation + 1,
            day=when.date() if when else date(1970, 1, 1),
            agent=agent,
            duration_s=(gen.closed_at - gen.started_at).total_seconds()
            if gen.closed_at and gen.started_at else None,
            context_fraction=gen.context_fraction,
            ended=gen.ended,
        )
        files[summary_path(facts)] = session_summary(gen.start, gen.end, facts)
    return files


def orchestrator_files(
    state: ProjectState, generations: list[Generation], doc: HandoffDocument,
    level: CompressionLevel = CompressionLevel.STANDARD,
) -> dict[str, str]:
    """`.orchestrator_state.json` (with a `handoff_history` entry per handoff) and
    `context_payload.json` (`doc` rendered at `level`)."""
    handoffs = [
        HandoffRecord(id=g.handoff_id, timestamp=g.closed_at, tokens=g.handoff_tokens)
        for g in generations if g.handoff_id
    ]
    return {
        orchestrator.STATE_FILE: as_json(orchestrator.to_orchestrator_state(state, handoffs)),
        orchestrator.PAYLOAD_FILE: as_json(orchestrator.context_payload(doc, level)),
    }
