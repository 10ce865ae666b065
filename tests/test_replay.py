"""Replay the committed histories with the current code (a pre-deploy safety check).

Each folder of `tests/histories/` (recorded by `python -m tests.record_histories NAME`)
holds one session with ≥ 2 handoffs, human commands and a retried model call. Old
recordings stay: sessions started on older code must keep replaying (`workflow.patched`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from temporal_handoff.workers.plugin import HandoffPlugin
from tests.bare_workflows import ChangedSessionWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*/*-gen*.json"))


def load(path: Path) -> WorkflowHistory:
    wid = json.loads((path.parent / "README.json").read_text())["workflow_id"]
    if path.name.startswith("handoff-"):
        wid += "-handoff-" + path.stem.removeprefix("handoff-gen")
    return WorkflowHistory.from_json(wid, path.read_text())


@pytest.mark.parametrize("folder", sorted({p.parent for p in HISTORIES}), ids=lambda p: p.name)
def test_recorded_histories_cover_the_interesting_cases(folder: Path) -> None:
    sessions = sorted(folder.glob("session-gen*.json"))
    assert len(sessions) >= 3  # two or more handoffs
    text = "".join(p.read_text() for p in sessions)
    assert '"attempt": 2' in text  # a retried model call
    for marker in ("decide", "say", "pause", "resume"):
        assert f'"{marker}"' in text, marker


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_replay_with_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[], plugins=[HandoffPlugin()])
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_a_nondeterministic_change_fails_replay() -> None:
    replayer = Replayer(
        workflows=[ChangedSessionWorkflow], data_converter=pydantic_data_converter
    )
    path = next(p for p in HISTORIES if p.name == "session-gen0.json")  # oldest recording
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
