"""The session's working state, shared by the commands, the model turn and the child link.

Plain data and pure methods: no Temporal calls, so it is testable without a server and
deterministic by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from temporal_handoff.schemas.project import EventError, ProjectState, StateEvent, apply_event
from temporal_handoff.schemas.session import AbortArgs, Command, Health

REMEMBERED_UPDATES = 200
REMEMBERED_REJECTIONS = 20


class Phase(str, Enum):
    RUNNING = "running"
    """Commands apply now."""
    SEALING = "sealing"
    """The handoff child is sealed: state-changing commands wait in the inbox for the
    successor (the payload is being built from the state as it is)."""
    CLOSING = "closing"
    """The session is finishing: updates are refused, signals are ignored."""


@dataclass
class SessionBook:
    """What one run knows besides its conversation and ledger."""

    state: ProjectState
    generation: int
    health: Health = field(default_factory=Health)
    events: list[StateEvent] = field(default_factory=list)
    """Events applied in this generation, in order (forwarded to the handoff child)."""
    paused: bool = False
    flush: bool = False
    abort: AbortArgs | None = None
    pending_say: list[str] = field(default_factory=list)
    """Human text recorded in the state but not yet shown to the model."""
    quote_human: bool = False
    """Human text enters `pending_say` as delimited, escaped blocks (`human_text`);
    set by the session (patch "quote-human-text-1")."""
    recent_human: list[str] = field(default_factory=list)
    inbox: list[Command] = field(default_factory=list)
    """Commands accepted while sealing, applied by the successor."""
    phase: Phase = Phase.RUNNING
    closing_reason: str = ""
    update_replies: dict[str, str] = field(default_factory=dict)
    """Reply per update id (the newest `REMEMBERED_UPDATES`), carried across runs."""
    rejected: list[str] = field(default_factory=list)
    """Signals this run could not apply and why (the newest `REMEMBERED_REJECTIONS`)."""

    def remember_rejection(self, reason: str) -> None:
        self.rejected.append(reason[:1000])
        del self.rejected[:-REMEMBERED_REJECTIONS]

    def remember_reply(self, update_id: str, reply: str) -> None:
        self.update_replies[update_id] = reply[:300]
        while len(self.update_replies) > REMEMBERED_UPDATES:
            del self.update_replies[next(iter(self.update_replies))]

    def record(self, event: StateEvent) -> str:
        """Apply an event to the state and remember it for the handoff child.

        Raises:
            EventError: the event does not apply; nothing changed.
        """
        event.generation = self.generation
        result = apply_event(self.state, event)
        self.events.append(event)
        return result

    def try_record(self, event: StateEvent) -> str | None:
        """`record` that reports instead of raising: None if applied, else the reason."""
        try:
            self.record(event)
        except EventError as err:
            return str(err)
        return None

    def pending_bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.pending_say)
