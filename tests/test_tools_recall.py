"""recall across generations, user tools as activities, notifier plug-in, successor model,
and the two importers."""

from __future__ import annotations

import json
from typing import Any

from temporalio.client import Client

from temporal_handoff.schemas.events import LifecycleEvent
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.model_io import ToolSpec, message_text
from temporal_handoff.seeds import from_orchestrator, from_state_json
from temporal_handoff.testing import BrainReply, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import UserTool
from tests.conftest import running_worker
from tests.helpers import start_session

LOOKUP = ToolSpec(
    name="lookup_owner",
    description="Who owns a task.",
    input_schema={"type": "object", "properties": {"task_id": {"type": "string"}}},
)


class CuriousBrain:
    """The scripted agent, plus: first thing in a successor generation it recalls the
    predecessor's decisions; on its first turn it calls the user tool."""

    def __init__(self) -> None:
        self.inner = ScriptedAgentBrain(decision_every=3)

    def respond(self, request: dict[str, Any]) -> BrainReply:
        messages = request["messages"]
        system = "".join(b.get("text", "") for b in request.get("system") or [])
        if len(messages) == 1 and "Handoff from your previous generation" in system:
            return BrainReply(content=[{
                "type": "tool_use", "id": f"toolu_recall_{len(system)}", "name": "recall",
                "input": {"generation": 0, "section": "decisions"},
            }])
        if len(messages) == 1:
            return BrainReply(content=[{
                "type": "tool_use", "id": "toolu_lookup", "name": "lookup_owner",
                "input": {"task_id": "P1-T001"},
            }])
        return self.inner.respond(request)


async def test_recall_user_tool_notifier_and_successor_model(
    client: Client, task_queue: str
) -> None:
    events: list[LifecycleEvent] = []

    async def notifier(event: LifecycleEvent) -> None:
        events.append(event)

    async def lookup_owner(tool_input: dict[str, Any]) -> str:
        return f"owner of {tool_input['task_id']} is team-blue"

    tool = UserTool(spec=LOOKUP, fn=lookup_owner)
    with FakeAnthropicServer(brain=CuriousBrain()) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, notifier=notifier, tools=[tool]
        ):
            handle = await start_session(
                client, task_queue, synthetic_project(40, 2), prefix="recall",
                context_window=3_500, max_tokens=300, successor_model="claude-haiku-4-5",
                user_tools=[LOOKUP],
            )
            result = await handle.result()
        requests = fake.message_requests()
    assert result.reason == TerminationReason.TASK_COMPLETED and result.generation >= 1
    # The successor ran on the other model.
    assert requests[0].model == "claude-sonnet-4-6"
    assert requests[-1].model == "claude-haiku-4-5"
    # Notifications: WARNING, CRITICAL, HANDOFF per handoff, TERMINATED at the end.
    kinds = [e.event for e in events]
    assert kinds.count("HANDOFF") == result.generation
    assert kinds[-1] == "TERMINATED" and "WARNING" in kinds and "CRITICAL" in kinds


async def test_recall_result_reaches_the_model(client: Client, task_queue: str) -> None:
    seen: list[str] = []

    class Recorder(CuriousBrain):
        def respond(self, request: dict[str, Any]) -> BrainReply:
            for m in request["messages"]:
                text = message_text(m)
                if "owner of P1-T001" in text or '"rationale"' in text:
                    seen.append(text)
            return super().respond(request)

    async def lookup_owner(tool_input: dict[str, Any]) -> str:
        return f"owner of {tool_input['task_id']} is team-blue"

    with FakeAnthropicServer(brain=Recorder()) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, tools=[UserTool(spec=LOOKUP, fn=lookup_owner)]
        ):
            handle = await start_session(
                client, task_queue, synthetic_project(40, 2), prefix="recall2",
                context_window=3_500, max_tokens=300, user_tools=[LOOKUP],
            )
            result = await handle.result()
    gen0_ids = {d.id for d in result.project.decisions if d.generation == 0}
    assert gen0_ids
    assert any("team-blue" in t for t in seen)  # the user tool's answer
    recalled = [t for t in seen if '"rationale"' in t]
    assert recalled, "the recall tool result never reached the model"
    assert any(i in recalled[0] for i in gen0_ids)


def test_importers() -> None:
    orch = {
        "metadata": {"project": "shop", "goal": "ship it"},
        "context": {"request": "build a shop", "environment": {"python": "3.11"}},
        "tasks": [
            {"id": "a", "title": "schema", "status": "completed"},
            {"id": "b", "title": "api", "dependencies": ["a"]},
            {"id": "c", "title": "ui", "dependencies": ["b"], "status": "in_progress"},
        ],
        "dag": {"phases": [{"id": "p1", "tasks": ["a", "b"]}, {"id": "p2", "tasks": ["c"]}]},
    }
    state = from_orchestrator(orch)
    assert (state.name, state.goal, state.original_request) == ("shop", "ship it", "build a shop")
    assert state.tasks["c"].phase == "p2" and state.next_eligible() == ["b"]
    assert state.critical_path() == ["b", "c"]
    sj = {
        "progress": {"current_phase": "p1", "tasks": [{"id": "x", "status": "pending"}]},
        "completed_milestones": ["mvp"],
        "blockers": [{"id": "B1", "type": "human_decision", "description": "db?"}],
        "decisions": [{"decision": "use sqlite", "rationale": "small"}],
        "environment": {"os": "linux"},
    }
    state2 = from_state_json(json.loads(json.dumps(sj)))
    assert state2.milestones == ["mvp"] and state2.human_decision_pending()
    assert state2.decisions[0].title == "use sqlite"


def test_recall_ids_select_errors_files_and_todos() -> None:
    """A successor narrows `recall` to what it needs: one task's errors, one todo."""
    from temporal_handoff.activities.recall_activity import section_text
    from temporal_handoff.schemas.state_events import StateEvent, apply_event
    from temporal_handoff.testing.synthetic import synthetic_project

    state = synthetic_project(6, 2)
    a, b = list(state.tasks)[:2]
    for task, error in ((a, "approach 'x' failed"), (b, "approach 'y' failed")):
        apply_event(state, StateEvent(op="fail_task", args={"task_id": task, "error": error}))
    for text in (f"finish `{a}`: step 2", f"finish `{b}`: step 2"):
        apply_event(state, StateEvent(op="add_todo", args={"text": text}))
    apply_event(state, StateEvent(op="note_file", args={"path": "src/a.py", "note": "n"}))
    errors = json.loads(section_text(state, "errors", [a], 8_000))
    assert [e["message"] for e in errors] == ["approach 'x' failed"]
    assert json.loads(section_text(state, "todos", [f"`{b}`"], 8_000)) == [f"finish `{b}`: step 2"]
    assert [f["path"] for f in json.loads(section_text(state, "files", ["src/a.py"], 8_000))] == [
        "src/a.py"
    ]
