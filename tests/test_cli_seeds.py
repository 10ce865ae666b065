"""`handoff import --dry-run`, `handoff start --project` on malformed files, and
`handoff export --layout context-protocol|orchestrator` against a real session."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from temporal_handoff.cli import app
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.seeds import read_seed
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from tests.conftest import running_worker
from tests.helpers import start_session
from tests.test_cli_visibility import assert_one_error

DATA = Path(__file__).parent / "data"
STATE = DATA / "context_protocol_state.example.json"
ORCH = DATA / "orchestrator_state.example.json"
runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_import_dry_run_text_and_json() -> None:
    res = cli("import", str(STATE), "--dry-run")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == f"{STATE}: state-json → project 'linus-deployment-specialist' v1.0"
    assert "  pending: 1.3" in lines and "  completed: 1.1, 1.2" in lines
    assert "eligible now: 1.3" in lines
    assert "  DEC-001: Which packaging approach? → Option C - Hybrid" in lines
    assert "  BLOCK-001 [human_decision, open]: Need Proxmox API credentials" in lines
    assert lines[-1] == "(dry run: nothing started)"

    res = cli("import", str(ORCH), "--format", "orchestrator", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    view = json.loads(res.stdout)
    assert (view["format"], view["name"], view["current_phase"]) == (
        "orchestrator", "Your Project Name", "phase_01",
    )
    assert view["tasks"] == {"in_progress": ["task_001"], "completed": ["task_000"]}
    assert view["phases"] == [{"id": "phase_01", "name": "Phase 1", "tasks": 1}]
    assert view["eligible"] == ["task_001"]

    # Without --dry-run nothing happens either: import never starts a session.
    assert_one_error(cli("import", str(ORCH)), "pass --dry-run")
    assert_one_error(
        cli("import", str(ORCH), "--format", "yaml", "--dry-run"), "format: unknown format 'yaml'"
    )


MALFORMED = {
    "wrong-type": ('{"project": "p", "decisions": {"id": "D1"}}',
                   "decisions: expected a list, got an object"),
    "missing-field": ('{"project": "p", "blockers": [{"id": "B1", "type": "technical"}]}',
                      "blockers[0].description: missing (required)"),
    "bad-json": ('{"metadata": {"project_name": "x",}}', "file: not JSON"),
    "unknown-dependency": (
        '{"metadata": {}, "tasks": {"a": {"name": "A", "dependencies": ["ghost"]}}}',
        "tasks.a.dependencies: unknown task 'ghost'",
    ),
    "placeholder-not-allowed": ('{"project": "p", "progress": {"step_status": "maybe|later"}}',
                                "progress.step_status: unknown value 'maybe|later'"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_file_is_one_line_exit_2(kind: str, tmp_path: Path) -> None:
    content, message = MALFORMED[kind]
    path = tmp_path / f"{kind}.json"
    path.write_text(content)
    # `start` reports it before connecting (this address has no server).
    for args in (["import", str(path), "--dry-run"],
                 ["start", "--project", str(path), "--address", "127.0.0.1:1"]):
        assert_one_error(cli(*args), f"{path}: {message}")


def _roadmap(steps: int) -> str:
    """A state.json whose roadmap (two phases of steps, no tasks) becomes the plan."""
    half = steps // 2
    return json.dumps({
        "project": f"seed-{uuid.uuid4().hex[:6]}",
        "version": "2.1",
        "progress": {"current_phase": 1, "current_step": 2, "step_status": "in_progress"},
        "phases": {
            "1": {"name": "Setup", "steps": [f"setup step {i}" for i in range(1, half + 1)]},
            "2": {"name": "Deploy", "steps": [f"deploy step {i}" for i in range(1, half + 1)]},
        },
        "completed_milestones": [{"phase": 1, "step": 1, "description": "setup step 1",
                                  "completed_at": "2026-01-01T09:00:00Z", "verification": "ls"}],
        "decisions": [{"id": "DEC-1", "timestamp": "2026-01-01T08:00:00Z",
                       "question": "Which host?", "decision": "h1", "rationale": "closest"}],
        "blockers": [{"id": "B-1", "created": "2026-01-01T08:30:00Z", "description": "no key",
                      "type": "external", "status": "resolved",
                      "resolved_at": "2026-01-01T08:45:00Z", "resolution": "key added"}],
        "environment": {"node_version": "22.x", "targets": ["a", "b"]},
        "health": {"sessions_count": 3},
    })


def _carried(state: ProjectState) -> dict[str, object]:
    keep = {"name", "version", "phases", "tasks", "current_phase", "environment", "blockers"}
    data = state.model_dump(include=keep)
    for task in data["tasks"].values():  # type: ignore[union-attr]
        del task["attempts"], task["completed_generation"]
    return data


async def test_export_layouts_of_a_real_session(
    env: WorkflowEnvironment, client: Client, tmp_path: Path
) -> None:
    address = env.client.service_client.config.target_host
    seed = tmp_path / "state.json"
    seed.write_text(_roadmap(24))
    project = read_seed(seed.read_text()).state
    task_queue = f"tq-seeds-{uuid.uuid4().hex[:8]}"
    brain = ScriptedAgentBrain(tasks_per_turn=2)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": 3_000}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, project, prefix="seeds", context_window=3_000, max_tokens=300
            )
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED and result.generation >= 1
    wid = handle.id

    cp = tmp_path / "cp"
    res = await asyncio.to_thread(
        cli, "export", wid, "--dir", str(cp), "--layout", "context-protocol", "--address", address
    )
    assert res.exit_code == 0, res.output
    summaries = sorted(p.name for p in (cp / "session-summaries").iterdir())
    # Numbered after the 3 sessions the file had already had, one per generation.
    assert [n.split("-session-")[1] for n in summaries] == [
        f"{4 + g:02d}.md" for g in range(result.generation + 1)
    ]
    first = (cp / "session-summaries" / summaries[0]).read_text()
    assert "- Phase: 1\n- Step: 2" in first and "✅ Verified" in first
    assert "- Recommendation: SUMMARIZE_AND_FLUSH" in first
    exported = json.loads((cp / "state.json").read_text())
    assert exported["health"]["sessions_count"] == 3 + result.generation + 1
    assert exported["health"]["completion_percentage"] == 100.0
    assert exported["environment"]["targets"] == ["a", "b"]
    assert "DEC-1 | by=agent | Q: Which host? | DECISION: h1" in (cp / "decisions.log").read_text()
    assert "B-1 | RESOLVED | key added" in (cp / "blockers.log").read_text()
    back = read_seed((cp / "state.json").read_text()).state
    assert _carried(back) == _carried(result.project)
    assert [(d.id, d.question, d.title) for d in back.decisions] == [
        (d.id, d.question, d.title) for d in result.project.decisions
    ]

    orch = tmp_path / "orch"
    res = await asyncio.to_thread(
        cli, "export", wid, "--dir", str(orch), "--layout", "orchestrator", "--level", "minimal",
        "--address", address,
    )
    assert res.exit_code == 0, res.output
    state_file = json.loads((orch / ".orchestrator_state.json").read_text())
    assert [h["id"] for h in state_file["handoff_history"]] == [
        f"{wid}-handoff-{g}" for g in range(result.generation)
    ]
    assert all(h["tokens"] > 0 for h in state_file["handoff_history"])
    payload = json.loads((orch / "context_payload.json").read_text())
    assert payload["compression_level"] == "minimal" and payload["content"]
    assert payload["token_estimate"] <= payload["token_budget"]
    back = read_seed((orch / ".orchestrator_state.json").read_text()).state
    keep = _carried(result.project)
    del keep["blockers"]  # not part of the orchestrator layout
    assert {k: v for k, v in _carried(back).items() if k != "blockers"} == keep

    assert_one_error(
        await asyncio.to_thread(
            cli, "export", wid, "--dir", str(orch), "--layout", "yaml", "--address", address
        ),
        "layout: unknown layout 'yaml'",
    )
