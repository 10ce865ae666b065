"""The two published seed formats, imported byte for byte, and exported back (pure).

`tests/data/` holds the published examples as copied from `../shared/formats/`
(phases keyed by id; milestones, blockers and decisions as objects; `a|b`
placeholder values). No server: importers and layout writers are pure.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from temporal_handoff.documents.build import build_document
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffContext
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import BlockerType, ProjectState, TaskStatus
from temporal_handoff.schemas.state_events import StateEvent, apply_event
from temporal_handoff.seeds import SeedError, from_orchestrator, from_state_json, read_seed
from temporal_handoff.seeds.context_protocol import to_state_json
from temporal_handoff.seeds.orchestrator import context_payload, to_orchestrator_state
from temporal_handoff.seeds.preview import preview, render_preview
from temporal_handoff.seeds.session_summary import (
    SessionFacts,
    blockers_log,
    decisions_log,
    session_summary,
    summary_path,
)

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).parents[2] / "shared" / "formats"
ORCH = "orchestrator_state.example.json"
STATE = "context_protocol_state.example.json"
HEALTH = "context_protocol_health.example.json"
TEMPLATE = "context_protocol_session_summary.template.md"
T = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def ev(op: str, by: str = "agent", **args: Any) -> StateEvent:
    return StateEvent(op=op, args=args, at=T, by=by, generation=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [ORCH, STATE, HEALTH, TEMPLATE])
def test_data_files_are_the_published_bytes(name: str) -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared/formats is not beside this checkout")
    assert (DATA / name).read_bytes() == (SHARED / name).read_bytes()


# ---- import: every field of the published examples ----------------------------------


def test_orchestrator_example_keeps_every_field() -> None:
    imp = read_seed(text(ORCH))
    s = imp.state
    assert imp.format == "orchestrator"
    assert (s.name, s.version, s.current_phase) == ("Your Project Name", "1.0.0", "phase_01")
    assert [(p.id, p.name) for p in s.phases] == [("phase_01", "Phase 1")]
    # context.active_tasks marks the pending task in progress; completed_tasks names a
    # task absent from `tasks`: kept (no name), with a warning.
    assert s.tasks["task_001"].title == "Task Name"
    assert s.tasks["task_001"].phase == "phase_01"
    assert s.tasks["task_001"].status == TaskStatus.IN_PROGRESS
    assert s.tasks["task_001"].depends_on == []
    assert s.tasks["task_000"].status == TaskStatus.COMPLETED
    assert [t.id for t in s.failed_tasks()] == []
    assert s.next_eligible() == ["task_001"]
    assert s.seed is not None and s.seed.format == "orchestrator"
    assert s.seed.created_at == datetime(2025, 1, 15, 10, tzinfo=UTC)
    assert imp.warnings == [
        "context.completed_tasks: 'task_000' is not in tasks; imported with no name"
    ]


def test_state_json_example_keeps_every_field() -> None:
    imp = read_seed(text(STATE))
    s = imp.state
    assert imp.format == "state-json"
    assert (s.name, s.version, s.current_phase, s.current_step) == (
        "linus-deployment-specialist", "1.0", "1", "3",
    )
    assert s.seed is not None
    assert s.seed.last_updated == datetime(2025, 12, 26, 14, 30, tzinfo=UTC)
    assert s.seed.last_agent == "claude"  # "claude|gemini": the first, warned
    assert s.milestones == ["MCP SSH server installed", "SSH host keys generated"]
    m = s.milestone_records
    assert [(r.phase, r.step, r.completed_at, r.verification) for r in m] == [
        ("1", "1", datetime(2025, 12, 26, 10, tzinfo=UTC),
         "npm list -g shows @essential-mcp/server-enhanced-ssh"),
        ("1", "2", datetime(2025, 12, 26, 10, 15, tzinfo=UTC),
         "File exists: ~/.mcp/ssh/config/ssh_host_rsa_key"),
    ]
    (b,) = s.blockers
    assert (b.id, b.type, b.status, b.description) == (
        "BLOCK-001", BlockerType.HUMAN_DECISION, "open", "Need Proxmox API credentials",
    )
    assert (b.opened_at, b.resolved_at, b.resolution) == (
        datetime(2025, 12, 26, 11, tzinfo=UTC), None, "",
    )
    assert s.human_decision_pending()
    (d,) = s.decisions
    assert (d.id, d.question, d.title, d.rationale, d.at) == (
        "DEC-001", "Which packaging approach?", "Option C - Hybrid",
        "Supports both Claude and Gemini", datetime(2025, 12, 26, 9, tzinfo=UTC),
    )
    assert s.environment == {
        "mcp_server_version": "1.0.0",
        "node_version": "22.x",
        "target_providers": '["proxmox", "qemu"]',
        "credentials_configured": '{"proxmox": false, "aws": false, "qemu": true}',
    }
    assert s.seed.environment["credentials_configured"] == {
        "proxmox": False, "aws": False, "qemu": True,
    }
    # No tasks in the protocol: the roadmap (milestones 1.1, 1.2, current step 1.3)
    # becomes tasks in order, each depending on the one before, so the session has work.
    assert [(t.id, t.status, t.depends_on) for t in s.tasks.values()] == [
        ("1.1", TaskStatus.COMPLETED, []),
        ("1.2", TaskStatus.COMPLETED, ["1.1"]),
        ("1.3", TaskStatus.PENDING, ["1.2"]),
    ]
    assert s.tasks["1.1"].title == "MCP SSH server installed"
    assert s.next_eligible() == ["1.3"]
    assert [(p.id, p.name) for p in s.phases] == [("1", "Phase 1")]
    assert imp.warnings == [
        "progress.phase_status: 'in_progress|complete|blocked' lists the allowed values; "
        "took 'in_progress'",
        "progress.step_status: 'not_started|in_progress|verifying|complete|failed' lists the "
        "allowed values; took 'not_started'",
        "tasks: none in the file; made 3 from the phase/step roadmap (1.1, 1.2, 1.3)",
        "blockers[0].status: 'open|resolved' lists the allowed values; took 'open'",
        "last_agent: 'claude|gemini' lists the allowed values; took 'claude'",
    ]


def test_state_json_with_the_published_health_block() -> None:
    data = json.loads(text(STATE)) | json.loads(text(HEALTH))
    h = from_state_json(data).seed.health  # type: ignore[union-attr]
    assert h is not None
    assert h.model_dump() == {
        "total_milestones": 42, "completed_milestones": 12, "completion_percentage": 28.5,
        "blockers_open": 1, "blockers_resolved": 3, "sessions_count": 4,
        "estimated_sessions_remaining": 10,
    }


# ---- documented variants --------------------------------------------------------------


def test_variants_phases_as_list_milestones_as_text_sections_missing() -> None:
    orch = from_orchestrator({
        "metadata": {"project_name": "shop"},
        "tasks": [
            {"id": "a", "name": "schema", "status": "completed", "dependents": ["b"]},
            {"id": "b", "name": "api", "dependencies": ["a"]},
        ],
        "dag": {"phases": [{"id": "p1", "name": "Build", "tasks": ["a", "b"]}]},
    })
    assert orch.name == "shop" and orch.current_phase == "p1"
    assert [t.phase for t in orch.tasks.values()] == ["p1", "p1"] and orch.next_eligible() == ["b"]
    assert from_orchestrator({"metadata": {"project_name": "empty"}}).tasks == {}

    sj = from_state_json({"project": "p", "completed_milestones": ["mvp shipped"]})
    assert sj.milestones == ["mvp shipped"] and sj.milestone_records == [] and sj.tasks == {}

    # A roadmap of phases and steps (keyed by phase id, steps as text or objects).
    road = from_state_json({
        "project": "road",
        "progress": {"current_phase": 2, "current_step": 1, "step_status": "in_progress"},
        "phases": {
            "1": {"name": "Setup", "steps": ["install", {"step": 2, "description": "configure"}]},
            "2": {"name": "Deploy", "steps": [{"step": 1, "description": "ship"}, "verify"]},
        },
        "completed_milestones": [
            {"phase": 1, "step": 1, "description": "installed"},
            {"phase": 1, "step": 2, "description": "configured"},
        ],
    })
    assert [(t.id, t.title, t.status.value, t.depends_on) for t in road.tasks.values()] == [
        ("1.1", "install", "completed", []),
        ("1.2", "configure", "completed", ["1.1"]),
        ("2.1", "ship", "in_progress", ["1.2"]),
        ("2.2", "verify", "pending", ["2.1"]),
    ]
    assert [p.name for p in road.phases] == ["Setup", "Deploy"]
    assert road.next_eligible() == ["2.1"]


# ---- malformed files: one message naming the field ------------------------------------


def _orch(**tasks: Any) -> str:
    return json.dumps({"metadata": {"project_name": "x"}, "tasks": tasks})


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ("{not json", "auto", "file: not JSON (Expecting property name"),
        ('{"metadata": [], "tasks": {}}', "orchestrator", "metadata: expected an object, got a list"),
        ('{"dag": {"phases": "p1"}}', "orchestrator", "dag.phases: expected a list, got text"),
        (_orch(a={"dependencies": "b"}), "auto", "tasks.a.dependencies: expected a list, got text"),
        (_orch(a={"dependencies": ["zz"]}), "auto", "tasks.a.dependencies: unknown task 'zz'"),
        (_orch(a={"dependents": ["zz"]}), "auto", "tasks.a.dependents: unknown task 'zz'"),
        (_orch(a={"dependents": ["b"]}, b={}), "auto",
         "tasks.a.dependents: 'b' does not list 'a' in its dependencies"),
        (_orch(a={"dependents": []}, b={"dependencies": ["a"]}), "auto",
         "tasks.a.dependents: misses 'b', which depends on 'a'"),
        (_orch(a={"dependencies": ["b"]}, b={"dependencies": ["a"]}), "auto",
         "tasks: dependency cycle"),
        (_orch(a={"status": "wobbly"}), "auto", "tasks.a.status: unknown value 'wobbly'"),
        (json.dumps({"metadata": {}, "tasks": [{"name": ""}]}), "auto", "tasks[0].id: missing"),
        (json.dumps({"metadata": {}, "context": {"current_phase": "p9"},
                     "dag": {"phases": {"p1": {"tasks": []}}}}), "auto",
         "context.current_phase: unknown phase 'p9'"),
        ('{"project": "p", "decisions": [{"id": "D1", "question": "q?"}]}', "auto",
         "decisions[0].decision: missing (required)"),
        ('{"project": "p", "blockers": [{"id": "B1", "type": "meh", "description": "d"}]}',
         "auto", "blockers[0].type: unknown value 'meh'"),
        ('{"project": "p", "completed_milestones": [{"phase": 1}]}', "auto",
         "completed_milestones[0].description: missing (required)"),
        ('{"project": "p", "completed_milestones": [{"description": "d", "completed_at": "soon"}]}',
         "auto", "completed_milestones[0].completed_at: expected an ISO 8601 time, got 'soon'"),
        ('{"project": ["p"]}', "state-json", "project: expected text, got a list"),
        ('{"project": "p", "blockers": [{"id": "B1", "description": "a"}, '
         '{"id": "B1", "description": "b"}]}', "auto", "blockers[1].id: duplicate id 'B1'"),
        ('{"project": "p", "health": {"sessions_count": -1}}', "auto",
         "health.sessions_count: expected a number ≥ 0"),
        ('{"name": "p", "colour": 1}', "auto", "colour: Extra inputs are not permitted"),
        (json.dumps({"metadata": {}, "context": {"active_tasks": ["t" * 200]}}), "auto",
         "context.active_tasks.id: String should have at most 128 characters"),
        ('{"dag": {"phases": [{"id": "p1"}, {"id": "p1"}]}}', "auto",
         "dag.phases[1]: duplicate phase id 'p1'"),
        ("[]", "orchestrator", "file: expected a JSON object, got list"),
        ("{}", "yaml", "format: unknown format 'yaml'"),
    ],
)
def test_malformed_seed_names_the_field(content: str, fmt: str, message: str) -> None:
    with pytest.raises(SeedError) as info:
        read_seed(content, fmt)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


# ---- export → import ------------------------------------------------------------------


def _worked(state: ProjectState) -> ProjectState:
    """The state after a session's worth of events (decisions, blockers, files...)."""
    s = state.model_copy(deep=True)
    for e in [
        ev("record_decision", title="use rsync", rationale="simple", decision_id="DEC-002"),
        ev("add_blocker", blocker_id="B-9", blocker_type="external", description="vpn down"),
        ev("resolve_blocker", blocker_id="B-9", resolution="vpn back"),
        ev("set_environment", key="region", value="eu"),
        ev("note_file", path="deploy.sh", note="entry point"),
    ]:
        apply_event(s, e)
    first = s.next_eligible()[0]
    apply_event(s, ev("complete_task", task_id=first, summary="checked by hand"))
    return s


def _carried(state: ProjectState, keep: set[str]) -> dict[str, Any]:
    """The fields a layout carries (a task's attempt count and generation stay behind)."""
    data = state.model_dump(include=keep)
    for task in data.get("tasks", {}).values():
        del task["attempts"], task["completed_generation"]
    return data


def _roundtrip(state: ProjectState, layout: str) -> ProjectState:
    if layout == "orchestrator":
        return read_seed(json.dumps(to_orchestrator_state(state)), "orchestrator").state
    return read_seed(json.dumps(to_state_json(state, updated_at=T, sessions=1)), "state-json").state


def test_orchestrator_layout_round_trip() -> None:
    s1 = read_seed(text(ORCH)).state
    out = to_orchestrator_state(s1)
    assert out["metadata"] == {
        "project_name": "Your Project Name", "version": "1.0.0", "created_at": "2025-01-15T10:00:00Z",
    }
    assert out["context"] == {
        "current_phase": "phase_01", "active_tasks": ["task_001"], "completed_tasks": ["task_000"],
        "failed_tasks": [],
    }
    assert out["dag"] == {"phases": {"phase_01": {"name": "Phase 1", "tasks": ["task_001"]}}}
    assert _roundtrip(s1, "orchestrator") == s1
    # The fields this layout carries survive a session's changes too.
    s2 = _worked(s1)
    back = _roundtrip(s2, "orchestrator")
    keep = {"name", "version", "phases", "tasks", "current_phase", "environment", "goal"}
    assert _carried(back, keep) == _carried(s2, keep)


def test_context_protocol_layout_round_trip() -> None:
    s1 = read_seed(text(STATE)).state
    out = to_state_json(s1, updated_at=T, sessions=1)
    assert set(json.loads(text(STATE))) <= set(out)
    assert out["progress"] == {
        "current_phase": 1, "current_step": 3, "phase_status": "blocked",
        "step_status": "not_started",
    }
    assert out["completed_milestones"][0] == json.loads(text(STATE))["completed_milestones"][0]
    assert out["environment"] == json.loads(text(STATE))["environment"]
    assert out["health"] == {
        "total_milestones": 3, "completed_milestones": 2, "completion_percentage": 66.7,
        "blockers_open": 1, "blockers_resolved": 0, "sessions_count": 1,
        "estimated_sessions_remaining": 1,
    }
    s2 = _roundtrip(s1, "context-protocol")
    assert s2.seed is not None and s1.seed is not None
    assert s2.seed.health is not None and s2.seed.health.sessions_count == 1
    assert s2.seed.last_updated == T
    skip = {"seed": {"health", "last_updated"}}
    assert s2.model_dump(exclude=skip) == s1.model_dump(exclude=skip)
    # After a session: decisions, blockers (resolved), environment, tasks all come back.
    s3 = _worked(s1)
    back = _roundtrip(s3, "context-protocol")
    keep = {"name", "version", "phases", "tasks", "current_phase", "environment", "milestones",
            "milestone_records", "blockers"}
    assert _carried(back, keep) == _carried(s3, keep)
    assert [(d.id, d.question, d.title, d.rationale, d.at) for d in back.decisions] == [
        (d.id, d.question, d.title, d.rationale, d.at) for d in s3.decisions
    ]


def test_context_payload_renders_the_document_at_the_chosen_level() -> None:
    state = _worked(read_seed(text(STATE)).state)
    ctx = HandoffContext(session_id="s-1", generation=2, reason=TerminationReason.CONTEXT_HANDOFF)
    doc = build_document(state, ctx)
    small = context_payload(doc, CompressionLevel.MINIMAL)
    full = context_payload(doc, CompressionLevel.FULL)
    assert small["compression_level"] == "minimal" and full["compression_level"] == "full"
    assert small["token_estimate"] <= small["token_budget"]
    assert len(full["content"]) > len(small["content"])
    assert "BLOCK-001" in small["content"] and small["handoff"]["agent"]["generation"] == 2


def test_session_summary_and_logs() -> None:
    start = read_seed(text(STATE)).state
    end = _worked(start)
    facts = SessionFacts(number=5, day=date(2026, 1, 2), duration_s=5400,
                         context_fraction=0.85, ended="CONTEXT_HANDOFF")
    assert summary_path(facts) == "session-summaries/2026-01-02-session-05.md"
    md = session_summary(start, end, facts)
    # Every heading of the protocol's template, in its order; the same bold fields.
    template = text(TEMPLATE).splitlines()
    headings = [line for line in template if line.startswith("#")]
    assert [line for line in md.splitlines() if line.startswith("#")] == headings
    fields = [line.split(":**")[0] for line in template if line.startswith("**")]
    assert [line.split(":**")[0] for line in md.splitlines() if line.startswith("**")] == fields
    assert "**Session Number:** 05" in md and "**Duration:** ~1.5 hours" in md
    assert "- Phase: 1\n- Step: 3\n- Previous blockers: BLOCK-001 (human_decision)" in md
    assert "1. [1.3] Phase 1, step 3 - ✅ Verified: checked by hand" in md
    assert "- B-9: vpn down (type: external)" in md and "- B-9: vpn back" in md
    assert "- DEC-002: use rsync - simple" in md
    assert "- BLOCK-001: [Need Proxmox API credentials]" in md
    assert "- `deploy.sh` - Created: entry point" in md
    assert "- Token usage: HIGH (85% of the window)\n- Recommendation: SUMMARIZE_AND_FLUSH" in md
    assert decisions_log(end).splitlines() == [
        "2025-12-26T09:00:00Z | DEC-001 | by=agent | Q: Which packaging approach? | "
        "DECISION: Option C - Hybrid | RATIONALE: Supports both Claude and Gemini",
        "2026-01-02T03:04:05Z | DEC-002 | by=agent | DECISION: use rsync | RATIONALE: simple",
    ]
    assert blockers_log(end).splitlines() == [
        "2025-12-26T11:00:00Z | BLOCK-001 | OPENED | type=human_decision | Need Proxmox API "
        "credentials",
        "2026-01-02T03:04:05Z | B-9 | OPENED | type=external | vpn down",
        "- | B-9 | RESOLVED | vpn back",
    ]


def test_preview_shows_what_a_file_becomes() -> None:
    imp = read_seed(text(STATE))
    view = preview(imp)
    assert view["tasks"] == {"pending": ["1.3"], "completed": ["1.1", "1.2"]}
    assert view["eligible"] == ["1.3"]
    assert view["decisions"][0]["question"] == "Which packaging approach?"
    out = render_preview(view, "state.json")
    assert out.splitlines()[0] == "state.json: state-json → project 'linus-deployment-specialist' v1.0"
    assert "eligible now: 1.3" in out and "BLOCK-001 [human_decision, open]" in out
    assert "warning: last_agent: 'claude|gemini' lists the allowed values; took 'claude'" in out
