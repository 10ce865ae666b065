"""Human commands: judge them (validators), accept them (handlers), apply them (total).

Pure functions over a :class:`SessionBook`; no Temporal calls, testable without a server.

The rules that keep a session from wedging:

- A validator judges a command against the state *and* the commands already queued in
  the inbox (:func:`projected_state`), by building the very events the command would
  record and applying them to a copy. So an accepted command can always be applied.
- :func:`apply` is total: it never raises into a handler, ``__init__`` or the turn loop.
  A command that no longer applies (the state moved on) is answered with the reason
  and changes nothing.
- A closing session refuses updates and ignores signals, and says so.
"""

from __future__ import annotations

from pydantic import ValidationError

from temporal_handoff.human_text import quote
from temporal_handoff.schemas.base import validate_durable
from temporal_handoff.schemas.handoff import HUMAN_TEXT_CAP_CHARS
from temporal_handoff.schemas.project import (
    HUMAN_TEXT_KEEP_BYTES,
    EventError,
    EventOp,
    ProjectState,
    StateEvent,
    apply_event,
    check_event,
)
from temporal_handoff.schemas.session import (
    AbortArgs,
    Command,
    CommandKind,
    DecideArgs,
    SayArgs,
    TaskCommandArgs,
)
from temporal_handoff.workflows._book import Phase, SessionBook

STATE_COMMANDS = (CommandKind.DECIDE, CommandKind.SAY, CommandKind.SKIP, CommandKind.RETRY)


def _human(by: str) -> str:
    return by if by.startswith("human") else f"human:{by}"


def command_events(cmd: Command) -> list[StateEvent]:
    """The state events a command records, in order (empty for control commands).

    Raises:
        ValidationError: the command's arguments are malformed.
    """
    if cmd.kind == CommandKind.SAY:
        say = validate_durable(SayArgs, cmd.args)
        return [StateEvent(op="human_message", args={"text": say.text}, at=cmd.at, by=cmd.by)]
    if cmd.kind == CommandKind.DECIDE:
        d = validate_durable(DecideArgs, cmd.args)
        by = _human(d.by)
        return [
            StateEvent(
                op="resolve_blocker",
                args={"blocker_id": d.blocker_id, "resolution": d.decision},
                at=cmd.at, by=by,
            ),
            StateEvent(
                op="record_decision",
                args={
                    "decision_id": f"HD-{d.blocker_id}",
                    "title": d.decision,
                    "rationale": d.rationale,
                    "blocker_id": d.blocker_id,
                },
                at=cmd.at, by=by,
            ),
        ]
    if cmd.kind in (CommandKind.SKIP, CommandKind.RETRY):
        t = validate_durable(TaskCommandArgs, cmd.args)
        op: EventOp = "skip_task" if cmd.kind == CommandKind.SKIP else "retry_task"
        return [StateEvent(op=op, args={"task_id": t.task_id}, at=cmd.at, by=_human(t.by))]
    return []


def _apply_all(state: ProjectState, events: list[StateEvent]) -> str | None:
    """Apply events in order to `state`; the first error, or None."""
    for event in events:
        try:
            apply_event(state, event)
        except EventError as err:
            return str(err)
    return None


def projected_state(book: SessionBook) -> ProjectState:
    """The state as it will be once the queued inbox is applied (the state itself if
    nothing is queued)."""
    if not book.inbox:
        return book.state
    state = book.state.model_copy(deep=True)
    for cmd in book.inbox:
        try:
            _apply_all(state, command_events(cmd))
        except ValidationError:
            pass
    return state


def rejection(
    book: SessionBook,
    cmd: Command,
    *,
    max_say_bytes: int | None = None,
    human_room_tokens: int | None = None,
) -> str | None:
    """Why an update must be refused, or None if it will apply. Never raises.

    Args:
        max_say_bytes: limit of one `say` text (`SessionConfig.max_human_text_bytes`).
        human_room_tokens: rough tokens a generation has for human text (None: unknown).
    """
    if book.phase == Phase.CLOSING:
        return f"the session is closing ({book.closing_reason}); command not applied"
    try:
        events = command_events(cmd)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "args"
        return f"{loc}: {first['msg']}"
    if cmd.kind == CommandKind.SAY:
        text = str(cmd.args.get("text", ""))
        size = len(text.encode("utf-8"))
        if max_say_bytes is not None and size > max_say_bytes:
            return f"text is {size} bytes; the limit is {max_say_bytes} bytes"
        return _say_rejection(book, text, human_room_tokens)
    if cmd.kind == CommandKind.DECIDE:
        bid = str(cmd.args.get("blocker_id"))
        blocker = projected_state(book).blocker(bid)
        if blocker is None:
            return f"unknown blocker {bid!r}"
        if blocker.status == "resolved":
            return f"blocker {bid!r} is already resolved"
    if not events:
        return None
    # The same events the handler will record, judged on the projected state (one event:
    # `check_event` changes nothing; several: applied in order to a copy).
    state = projected_state(book)
    if len(events) == 1:
        try:
            check_event(state, events[0])
        except EventError as err:
            return str(err)
        return None
    if state is book.state:
        state = state.model_copy(deep=True)
    return _apply_all(state, events)


def _say_rejection(book: SessionBook, text: str, room_tokens: int | None) -> str | None:
    size = len(text.encode("utf-8"))
    pending = book.pending_bytes() + sum(
        len(str(c.args.get("text", "")).encode("utf-8"))
        for c in book.inbox
        if c.kind == CommandKind.SAY
    )
    if pending + size > HUMAN_TEXT_KEEP_BYTES:
        return (
            f"text: {size} bytes would bring the human text not yet read by the model to "
            f"{pending + size} bytes; the limit is {HUMAN_TEXT_KEEP_BYTES} (wait for the "
            "next turn or send less)"
        )
    if room_tokens is not None:
        tokens = (pending + size) // 4
        if tokens > room_tokens:
            return (
                f"text: ~{size // 4} tokens (with ~{pending // 4} already waiting) do not fit "
                f"the ~{max(room_tokens, 0)} tokens a generation has for human text"
            )
    return None


def accept(book: SessionBook, cmd: Command) -> str:
    """Handle an accepted command: apply it now, queue it for the successor, or (while
    closing, or a flush during a handoff) say why nothing happens. Never raises."""
    if book.phase == Phase.CLOSING:
        return f"ignored: the session is closing ({book.closing_reason})"
    if book.phase == Phase.SEALING and cmd.kind not in (CommandKind.PAUSE, CommandKind.RESUME):
        if cmd.kind == CommandKind.FLUSH:
            return "ignored: a handoff is already in progress"
        book.inbox.append(cmd)
        return "queued for the successor (handoff in progress)"
    return apply(book, cmd)


def apply(book: SessionBook, cmd: Command) -> str:
    """Apply one command to the book. Total: a command that no longer applies changes
    nothing and the answer says why."""
    kind = cmd.kind
    if kind == CommandKind.PAUSE:
        book.paused = True
        return "paused"
    if kind == CommandKind.RESUME:
        book.paused = False
        return "resumed"
    if kind == CommandKind.FLUSH:
        if book.flush:
            return "flush already requested"
        book.flush = True
        return "flush requested"
    if kind == CommandKind.ABORT:
        try:
            book.abort = validate_durable(AbortArgs, cmd.args)
        except ValidationError:
            book.abort = AbortArgs()
        return "abort requested"
    try:
        events = command_events(cmd)
    except ValidationError as err:
        return f"not applied: {err.errors()[0]['msg']}"
    if len(events) > 1:
        # All or nothing: try them on a copy first.
        problem = _apply_all(book.state.model_copy(deep=True), events)
        if problem:
            return f"not applied: {problem}"
    results: list[str] = []
    for event in events:
        try:
            results.append(book.record(event))
        except EventError as err:
            return f"not applied: {err}"
    if kind == CommandKind.SAY:
        text = events[0].args["text"]
        book.pending_say.append(quote(text, by=_human(cmd.by)) if book.quote_human else text)
        book.recent_human.append(text)
        reply = "message queued for the next turn"
        if len(text) > HUMAN_TEXT_CAP_CHARS:
            reply += (
                f"; the model reads all {len(text):,} characters, a handoff document keeps "
                f"the first {HUMAN_TEXT_CAP_CHARS:,} (the rest stays recallable)"
            )
        return reply
    if kind == CommandKind.DECIDE:
        d = validate_durable(DecideArgs, cmd.args)
        note = f"Human decision on blocker `{d.blocker_id}`: {d.decision}"
        if d.rationale:
            note += f" (rationale: {d.rationale})"
        if book.quote_human:
            said = d.decision + (f"\n(rationale: {d.rationale})" if d.rationale else "")
            block = quote(said, "human_decision", by=_human(d.by))
            book.pending_say.append(f"Human decision on blocker `{d.blocker_id}`:\n{block}")
        else:
            book.pending_say.append(note)
        book.recent_human.append(note)
        return f"decision recorded for {d.blocker_id}"
    # skip / retry
    if kind == CommandKind.RETRY:
        book.health.retries += 1
    book.pending_say.append(f"Operator: {results[0]}.")
    return results[0]
