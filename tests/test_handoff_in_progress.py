"""What the predecessor was in the middle of survives every level, and finished todos
leave the prompt (pure: build, render, probe; no server)."""

from __future__ import annotations

import pytest

from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.probe import derive_probes, find_misses
from temporal_handoff.documents.render import render_prompt
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffContext
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.state_events import StateEvent, apply_event
from temporal_handoff.testing.synthetic import synthetic_project


def _doc(todos_on_done: int = 40):  # type: ignore[no-untyped-def]
    state = synthetic_project(169, 6)
    ids = list(state.tasks)
    for tid in ids[:todos_on_done]:
        apply_event(state, StateEvent(op="add_todo", args={"text": f"finish `{tid}`: step 2"}))
        apply_event(state, StateEvent(op="complete_task", args={"task_id": tid}))
    apply_event(state, StateEvent(op="add_todo", args={"text": f"finish `{ids[40]}`: step 2"}))
    apply_event(state, StateEvent(op="add_todo", args={"text": "write the release notes"}))
    ctx = HandoffContext(session_id="s", generation=4, reason=TerminationReason.CONTEXT_HANDOFF)
    return build_document(state, ctx), ids[40]


@pytest.mark.parametrize("level", list(CompressionLevel))
def test_in_progress_work_is_critical_at_every_level(level: CompressionLevel) -> None:
    doc, busy = _doc()
    assert doc.in_progress == [f"finish `{busy}`: step 2"]
    assert doc.todos == ["write the release notes"]  # 40 finished todos are left out
    payload = render_prompt(doc, level)
    assert f"In progress: `{busy}`." in payload.prompt
    assert f"finish `{busy}`: step 2" in payload.prompt
    probes = derive_probes(doc)
    assert any(p.kind == "in progress" and p.item == busy for p in probes)
    assert find_misses(probes, payload.prompt) == []
    # A prompt without it is a probe miss, not a silent loss.
    cut = payload.prompt.replace(f"finish `{busy}`: step 2", "")
    assert any(p.kind == "in progress" for p, _ in find_misses(probes, cut))


def test_nothing_in_progress_is_said() -> None:
    doc, _ = _doc()
    doc.in_progress = []
    assert "In progress: none." in render_prompt(doc, CompressionLevel.MINIMAL).prompt
