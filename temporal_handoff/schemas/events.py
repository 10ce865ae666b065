"""Lifecycle notifications and the handoff child's signals."""

from __future__ import annotations

from pydantic import Field

from temporal_handoff.schemas.base import DurableModel
from temporal_handoff.schemas.config import DEFAULT_LEVEL_BUDGETS, CompressionLevel
from temporal_handoff.schemas.handoff import RunRef
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.state_events import StateEvent
from temporal_handoff.schemas.tokens import TokenLedger


class LifecycleEvent(DurableModel):
    """Input of the `notify` activity: WARNING, CRITICAL, HANDOFF, TERMINATED."""

    session_id: str
    generation: int
    event: str
    lifecycle: LifecycleState
    reason: TerminationReason | None = None
    context_pct: float = 0.0
    tasks_done: int = 0
    tasks_total: int = 0
    summary: str = ""


class HandoffInput(DurableModel):
    """Input of `HandoffWorkflow`: the state when the session entered WARNING."""

    session_id: str
    generation: int
    run_id: str = ""
    model: str = ""
    state: ProjectState
    events_since_last_handoff: list[StateEvent] = Field(default_factory=list)
    lineage: list[RunRef] = Field(default_factory=list)
    level: CompressionLevel = CompressionLevel.STANDARD
    budgets: dict[CompressionLevel, int] = Field(
        default_factory=lambda: {CompressionLevel(k): v for k, v in DEFAULT_LEVEL_BUDGETS.items()}
    )
    max_payload_bytes: int = 256 * 1024


class HandoffDelta(DurableModel):
    """Signal `delta`: events the session applied since the previous delta."""

    events: list[StateEvent] = Field(default_factory=list)
    seq: int = 0


class SealRequest(DurableModel):
    """Signal `seal`: build the payload now."""

    reason: TerminationReason
    ledger: TokenLedger
    recent_human_input: list[str] = Field(default_factory=list)
    recent_exchange: list[str] = Field(default_factory=list)
    """The conversation's last lines (`[human] …` / `[agent] …`)."""
    paused_seconds: float = 0.0
    tool_state: dict[str, str] = Field(default_factory=dict)
    template: str | None = None
    events_sent: int = 0
    """How many deltas' events the session sent; the child checks it has them all."""
    events: list[StateEvent] = Field(default_factory=list)
    """The last events, sent with the seal instead of a separate delta."""
    agent_note: str = ""
    """The model's note to its successor (`agent_note`), "" if none was asked or given."""


class RecallRequest(DurableModel):
    """Input of the `recall` activity (and the model's `recall` tool, plus session ids)."""

    session_id: str
    lineage: list[RunRef] = Field(default_factory=list)
    generation: int = Field(ge=0)
    section: str = "tasks"
    ids: list[str] = Field(default_factory=list)
    max_chars: int = 8_000
