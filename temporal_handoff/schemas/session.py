"""Session input/result, human commands, status: the workflow's public contract."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field

from temporal_handoff.schemas.base import DurableModel, HumanInput
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.handoff import HandoffPayload, RunRef
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import DECISION_TITLE_MAX, ProjectState
from temporal_handoff.schemas.tokens import TokenLedger


class CommandKind(str, Enum):
    DECIDE = "decide"
    SAY = "say"
    SKIP = "skip_task"
    RETRY = "retry_task"
    PAUSE = "pause"
    RESUME = "resume"
    FLUSH = "flush"
    ABORT = "abort"


class DecideArgs(HumanInput):
    """Answer to a blocker (update `decide`)."""

    blocker_id: str = Field(min_length=1, max_length=128)
    decision: str = Field(min_length=1, max_length=DECISION_TITLE_MAX)
    """Becomes the recorded decision's title (same limit); put the long form in rationale."""
    rationale: str = Field(default="", max_length=16_000)
    by: str = Field(default="human", min_length=1, max_length=128)


class SayArgs(HumanInput):
    """A human message appended to the conversation at the next turn (signal `say`)."""

    text: str = Field(min_length=1)
    by: str = Field(default="human", min_length=1, max_length=128)


class TaskCommandArgs(HumanInput):
    """`skip_task` / `retry_task` (updates, validated against the DAG)."""

    task_id: str = Field(min_length=1, max_length=128)
    by: str = Field(default="human", min_length=1, max_length=128)


class AbortArgs(HumanInput):
    reason: str = Field(default="aborted by user", max_length=4_000)


class Command(DurableModel):
    """A human command kept in the inbox until applied (carried across continue-as-new)."""

    kind: CommandKind
    args: dict[str, Any] = Field(default_factory=dict)
    at: datetime | None = None
    by: str = "human"


class SessionInput(DurableModel):
    """Input of every generation of `AgentSessionWorkflow`."""

    config: SessionConfig = Field(default_factory=SessionConfig)
    project: ProjectState = Field(default_factory=ProjectState)
    """The work: a task DAG, or only a goal (a free-form session, a conversation ended by
    the agent's `finish`). Empty: a plain conversation."""
    handoff: HandoffPayload | None = None
    """The predecessor's payload; None for generation 0."""
    generation: int = Field(default=0, ge=0)
    inbox: list[Command] = Field(default_factory=list)
    """Human commands received during the predecessor's handoff, applied first."""
    pending_human_text: list[str] = Field(default_factory=list)
    """Human text already recorded in the state but not yet shown to the model."""
    ledger: TokenLedger | None = None
    """Cumulative spend and calibration carried from the predecessor."""
    lineage: list[RunRef] = Field(default_factory=list)
    """Runs of the previous generations, oldest first."""
    health: dict[str, int] = Field(default_factory=dict)
    paused: bool = False
    handoff_reason: TerminationReason | None = None
    """Why the predecessor handed off (CONTEXT_HANDOFF, MANUAL_FLUSH, HISTORY_LIMIT)."""
    announce_handoff: bool = False
    """The successor sends the HANDOFF notification (off the handoff's critical path)."""
    started_at: datetime | None = None
    update_replies: dict[str, str] = Field(default_factory=dict)
    """Replies to the most recent updates by update id: a client that retries an update
    with the same id after the run changed gets the first reply, not a second apply."""
    awaiting_input: bool = False
    """The predecessor was waiting for the human's next message (`when_quiet="wait"`):
    the successor waits too instead of calling the model unprompted."""
    recent_exchange: list[str] = Field(default_factory=list)
    """The last lines of the conversation (`[human]`/`[agent]`, clipped), for the
    next handoff document when this generation has had few of its own."""


class Health(DurableModel):
    tasks_per_hour: float = 0.0
    failures: int = 0
    retries: int = 0
    blockers_opened: int = 0
    model_calls: int = 0
    decisions_recorded: int = 0
    """record_decision calls that added a decision, over all generations."""
    tasks_completed: int = 0
    """complete_task calls that completed a task, over all generations."""


class SessionStatus(DurableModel):
    """Answer of the `status` query."""

    session_id: str
    lifecycle: LifecycleState
    generation: int
    turn: int
    context_window: int
    context_tokens: int
    context_pct: float
    total_tokens: int
    cost_usd: float
    billed_tokens: int = 0
    """Tokens Anthropic bills: `total_tokens` plus answers whose result was lost."""
    billed_cost_usd: float = 0.0
    tasks_done: int
    tasks_total: int
    next_eligible: list[str] = Field(default_factory=list)
    open_blockers: list[dict[str, str]] = Field(default_factory=list)
    paused: bool = False
    inbox: int = 0
    health: Health = Field(default_factory=Health)
    model: str = ""
    rejected_commands: list[str] = Field(default_factory=list)
    """Signals this run could not apply, and why (newest last)."""
    awaiting_input: bool = False
    """The agent replied and the session waits for the human's next message."""
    transcript_entries: int = 0
    """Entries in this generation's `transcript` query."""
    closing_reason: str = ""
    """Once the session is closing (or closed): its termination reason."""
    closing_message: str = ""
    """And why, in words (e.g. a CONFIG_ERROR's numbers and fix)."""


class SessionResult(DurableModel):
    """What a finished session returns."""

    session_id: str
    reason: TerminationReason
    generation: int
    project: ProjectState
    ledger: TokenLedger
    lineage: list[RunRef] = Field(default_factory=list)
    health: Health = Field(default_factory=Health)
    final_handoff: HandoffPayload | None = None
    """For ABORT and guards: the document to resume from (`handoff start --resume-from`)."""
    message: str = ""
    final_reply: str = ""
    """The agent's last text reply (every generation's replies: `handoff transcript`)."""
    summary: str = ""
    """The agent's summary, given with `finish` (free-form sessions)."""

    def resume_input(
        self, config: SessionConfig | None = None, *, original: SessionConfig | None = None
    ) -> SessionInput:
        """Input for a new session that continues this one (`handoff start --resume-from`).

        Args:
            config: the new session's config. None keeps `original`.
            original: the session's own config. The result does not carry it (it is in
                every run's input, and results stay small): `handoff start
                --resume-from` and `temporal_handoff.resume.resume_session` read it
                from the last run's input. Without either, the defaults apply.

        Raises:
            ValueError: the session ended without a final handoff document
                (`resume_session` builds one from the result's state).
        """
        if self.final_handoff is None:
            raise ValueError(f"{self.session_id} ended without a final handoff document")
        return SessionInput(
            config=config or original or SessionConfig(),
            project=self.project,
            # The successor needs the prompt and the summary line, not the document.
            handoff=self.final_handoff.seed(),
            generation=self.generation + 1,
            ledger=self.ledger,
            lineage=self.lineage,
            health=self.health.model_dump(exclude={"tasks_per_hour"}),
            handoff_reason=self.reason,
        )
