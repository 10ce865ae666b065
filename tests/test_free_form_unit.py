"""Free-form sessions without a server: the state events, the transcript read from a
conversation, the handoff document's conversation sections, and input validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from temporal_handoff.cli import app
from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.render import render_prompt
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.handoff import HandoffContext
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.state_events import EventError, StateEvent, apply_event
from temporal_handoff.schemas.tools import state_tool_specs
from temporal_handoff.schemas.transcript import TranscriptQuery, exchange_lines, transcript_of
from temporal_handoff.workflows._free_form import finish_summary


def ev(op: str, **args: object) -> StateEvent:
    return StateEvent(op=op, args=args)  # type: ignore[arg-type]


def test_notes_and_questions() -> None:
    s = ProjectState(goal="help")
    assert s.free_form and s.all_done
    assert apply_event(s, ev("add_note", text="fact")) == "note 1 kept"
    assert apply_event(s, ev("ask_question", text="which carrier?")) == "question Q0001 is open"
    with pytest.raises(EventError, match="already exists"):
        apply_event(s, ev("ask_question", question_id="Q0001", text="again"))
    assert apply_event(s, ev("answer_question", question_id="Q0001", answer="DHL"))
    with pytest.raises(EventError, match="already answered"):
        apply_event(s, ev("answer_question", question_id="Q0001", answer="UPS"))
    with pytest.raises(EventError, match="unknown question"):
        apply_event(s, ev("answer_question", question_id="Q9", answer="?"))
    with pytest.raises(EventError, match="text"):
        apply_event(s, ev("add_note", text=""))
    assert s.notes == ["fact"] and not s.open_questions()


def test_free_form_tools_replace_the_task_tools() -> None:
    names = [t.name for t in state_tool_specs(free_form=True)]
    assert "finish" in names and "add_note" in names and "complete_task" not in names
    assert "finish" not in [t.name for t in state_tool_specs()]
    # A user tool named like a free-form built-in (legal before they existed) replaces it.
    assert SessionConfig(user_tools=[ToolSpec(name="add_note")]).user_tools[0].name == "add_note"
    assert "add_note" not in [t.name for t in state_tool_specs(True, ("add_note",))]
    assert finish_summary({"summary": " done "}) == ("done", "finished: the session ends after this turn")
    assert finish_summary({})[0] is None


def test_transcript_of_a_conversation() -> None:
    messages = [
        {"role": "user", "content": "Session: s\nGoal: g\n\n[human] hi\n[human] two lines"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"id": "A"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "found", "is_error": True},
            {"type": "text", "text": "[human] and?"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "A is found."}]},
    ]
    entries = transcript_of(messages, generation=3)
    assert [(e.role, e.text) for e in entries] == [
        ("session", "Session: s\nGoal: g"), ("human", "hi\ntwo lines"), ("agent", "Looking."),
        ("tool", "found"), ("human", "and?"), ("agent", "A is found."),
    ]
    assert entries[2].tool_calls == ['lookup {"id": "A"}'] and entries[3].is_error
    assert {e.generation for e in entries} == {3} and [e.index for e in entries] == list(range(6))
    assert exchange_lines(entries, 2, 8) == ["[human] and?", "[agent] A is fo…"]


def test_free_form_handoff_document() -> None:
    s = ProjectState(goal="Answer about order A-1")
    apply_event(s, ev("add_note", text="A-1 shipped with DHL"))
    apply_event(s, ev("ask_question", text="refund wanted?"))
    ctx = HandoffContext(
        session_id="s", generation=0, reason=TerminationReason.MANUAL_FLUSH,
        recent_exchange=["[human] where is A-1?", "[agent] shipped"],
    )
    doc = build_document(s, ctx)
    assert doc.free_form and doc.notes == ["A-1 shipped with DHL"]
    for level in ("minimal", "standard", "full"):
        prompt = render_prompt(doc, level).prompt
        assert "A-1 shipped with DHL" in prompt and "refund wanted?" in prompt
        # Human lines are quoted blocks; the agent's are ours.
        assert prompt.index("<human_message>where is A-1?</human_message>") < prompt.index(
            "[agent] shipped"
        )
        assert "Next eligible tasks" not in prompt and "`finish`" in prompt
    # An agent line that echoes a human block stays the agent's words.
    echo = ctx.model_copy(update={"recent_exchange": ["[agent] <human_decision>ok</human_decision>"]})
    prompt = render_prompt(build_document(s, echo)).prompt
    assert "[agent] &lt;human_decision&gt;ok&lt;/human_decision&gt;" in prompt


def test_inputs_are_validated() -> None:
    with pytest.raises(ValidationError, match="max_quiet_turns"):
        SessionConfig(max_quiet_turns=0)
    with pytest.raises(ValidationError, match="when_quiet"):
        SessionConfig(when_quiet="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="field 'limit'"):
        TranscriptQuery.parse(({"limit": 0},))
    with pytest.raises(ValueError, match="field 'colour'"):
        TranscriptQuery.parse(({"colour": 1},))
    with pytest.raises(ValueError, match="JSON object"):
        TranscriptQuery.parse(("all",))
    assert TranscriptQuery.parse(()) == TranscriptQuery()
    runner = CliRunner()
    res = runner.invoke(app, ["transcript", "s", "--role", "robot"])
    assert res.exit_code == 2 and res.stderr.startswith("error: role: unknown role 'robot'")
    res = runner.invoke(app, ["transcript", "s", "--follow", "--generation", "1"])
    assert res.exit_code == 2 and "generation:" in res.stderr
    res = runner.invoke(app, ["start", "--goal", "chat", "--project", "p.json"])
    assert res.exit_code == 2 and res.stderr.startswith("error: goal: --goal starts a free-form")
    res = runner.invoke(app, ["start", "--goal", " "])
    assert res.exit_code == 2 and res.stderr.startswith("error: goal: must not be blank")


def test_readme_python_imports_resolve() -> None:
    """Every name a README code block imports from `temporal_handoff` is exported."""
    import importlib
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    imports = [
        (m.group(1), [n.strip() for n in m.group(2).split(",")])
        for b in blocks
        for m in re.finditer(r"^from (temporal_handoff[\w.]*) import ([\w, ]+)$", b, re.M)
    ]
    assert any(module == "temporal_handoff" for module, _ in imports)
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in names:
            assert hasattr(loaded, name), f"README: from {module} import {name}"
