"""The human-command room on its own (no server): validators judge against the state
and the queued inbox, apply is total, limits line up end to end."""

from __future__ import annotations

import pytest

from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import Command, CommandKind
from temporal_handoff.schemas.state_events import HUMAN_TEXT_KEEP_BYTES, StateEvent, apply_event
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workflows import _commands as commands
from temporal_handoff.workflows._book import Phase, SessionBook


def book_with_failed_task() -> tuple[SessionBook, str]:
    state = synthetic_project(6, 2)
    first = state.next_eligible()[0]
    apply_event(state, StateEvent(op="fail_task", args={"task_id": first, "error": "boom"}))
    return SessionBook(state=state, generation=0), first


def cmd(kind: CommandKind, **args: object) -> Command:
    return Command(kind=kind, args=dict(args))


@pytest.mark.parametrize(
    ("first", "second"),
    [(CommandKind.RETRY, CommandKind.RETRY), (CommandKind.SKIP, CommandKind.SKIP),
     (CommandKind.RETRY, CommandKind.SKIP)],
)
def test_queued_commands_count_when_judging_the_next(first: CommandKind, second: CommandKind) -> None:
    book, task = book_with_failed_task()
    book.phase = Phase.SEALING
    a = cmd(first, task_id=task)
    assert commands.rejection(book, a) is None
    assert commands.accept(book, a).startswith("queued")
    b = cmd(second, task_id=task)
    reason = commands.rejection(book, b)
    if first == CommandKind.RETRY and second == CommandKind.SKIP:
        # retried → pending again, and a pending task may be skipped once its deps are done
        assert reason is None
        commands.accept(book, b)
    else:
        assert reason is not None and task in reason
    # The successor applies the inbox: nothing raises, nothing is applied twice.
    successor = SessionBook(state=book.state.model_copy(deep=True), generation=1)
    replies = [commands.apply(successor, c) for c in book.inbox]
    assert not any(r.startswith("not applied") for r in replies), replies


def test_apply_is_total_when_the_state_moved_on() -> None:
    book, task = book_with_failed_task()
    apply_event(book.state, StateEvent(op="complete_task", args={"task_id": task}))
    before = book.state.model_copy(deep=True)
    reply = commands.apply(book, cmd(CommandKind.SKIP, task_id=task))
    assert reply.startswith("not applied") and "already completed" in reply
    assert book.state == before and book.events == []


def test_decide_longer_than_a_decision_title_is_refused_naming_the_field() -> None:
    book, _ = book_with_failed_task()
    apply_event(
        book.state,
        StateEvent(op="add_blocker", args={"blocker_id": "B1", "blocker_type": "human_decision",
                                           "description": "which db?"}),
    )
    reason = commands.rejection(book, cmd(CommandKind.DECIDE, blocker_id="B1", decision="x" * 4001))
    assert reason is not None and reason.startswith("decision")
    assert book.state.blocker("B1").status == "open"
    # The longest accepted text applies in full.
    ok = cmd(CommandKind.DECIDE, blocker_id="B1", decision="y" * 4000, rationale="r" * 16_000)
    assert commands.rejection(book, ok) is None
    assert commands.apply(book, ok) == "decision recorded for B1"
    assert book.state.decisions[-1].title == "y" * 4000


def test_a_blocker_id_of_any_accepted_length_can_be_decided() -> None:
    book, _ = book_with_failed_task()
    bid = "b" * 128
    apply_event(
        book.state,
        StateEvent(op="add_blocker", args={"blocker_id": bid, "blocker_type": "human_decision",
                                           "description": "d"}),
    )
    decide = cmd(CommandKind.DECIDE, blocker_id=bid, decision="go")
    assert commands.rejection(book, decide) is None
    assert commands.apply(book, decide).startswith("decision recorded")


def test_closing_refuses_updates_and_ignores_signals() -> None:
    book, task = book_with_failed_task()
    book.phase, book.closing_reason = Phase.CLOSING, "USER_ABORT"
    assert "closing" in (commands.rejection(book, cmd(CommandKind.SAY, text="hi")) or "")
    assert commands.accept(book, cmd(CommandKind.PAUSE)).startswith("ignored")
    assert not book.paused


def test_a_second_flush_during_a_handoff_is_not_carried() -> None:
    book, _ = book_with_failed_task()
    book.phase = Phase.SEALING
    assert commands.accept(book, cmd(CommandKind.FLUSH)).startswith("ignored")
    assert book.inbox == []


def test_human_text_waiting_for_the_model_is_bounded() -> None:
    book, _ = book_with_failed_task()
    chunk = "z" * 60_000
    accepted = 0
    for _ in range(40):
        c = cmd(CommandKind.SAY, text=chunk)
        if commands.rejection(book, c, max_say_bytes=64 * 1024) is None:
            commands.accept(book, c)
            accepted += 1
    assert accepted == HUMAN_TEXT_KEEP_BYTES // 60_000
    reason = commands.rejection(book, cmd(CommandKind.SAY, text=chunk))
    assert reason is not None and reason.startswith("text:")
    # ...and so is what the state keeps (older messages are archived, not carried).
    for i in range(10):
        apply_event(book.state, StateEvent(op="human_message", args={"text": f"{i}" * 60_000}))
    kept = sum(len(m) for m in book.state.human_messages)
    assert kept <= HUMAN_TEXT_KEEP_BYTES and book.state.human_messages_archived > 0


def test_a_message_over_the_window_room_is_refused_and_a_long_one_says_it_is_cut() -> None:
    book, _ = book_with_failed_task()
    reason = commands.rejection(book, cmd(CommandKind.SAY, text="w" * 40_000), human_room_tokens=2_000)
    assert reason is not None and "tokens" in reason
    reply = commands.accept(book, cmd(CommandKind.SAY, text="w" * 5_000))
    assert "first 2,000" in reply


def test_failed_task_fixture_is_failed() -> None:
    book, task = book_with_failed_task()
    assert book.state.tasks[task].status == TaskStatus.FAILED
