"""Rolling deploys and rollbacks: two worker versions read each other's payloads.

During a rolling deploy (or a rollback) a session's next workflow task, its
continue-as-new successor, its handoff child and the signals between them can land on
either version. The plain `temporal` CLI plays the other version here: it writes the
JSON a newer worker would (fields this code does not know, at every depth) or an older
client would (fields added since then missing), and the session must run to the end.
What a person types keeps failing on an unknown field, with the field named.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from temporal_handoff.activities.handoff_activity import BuildHandoffInput, render_payload
from temporal_handoff.cli import app
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload, RunRef
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import Command, CommandKind, SessionInput
from temporal_handoff.schemas.tokens import TokenLedger
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.test_operator_actions import (
    assert_children_closed,
    assert_children_payloads_clean,
    assert_each_task_completed_once,
    assert_no_task_failures_any_run,
    cleanup,
    guarded,
    session_result,
    temporal_cli,
)

WINDOW = 4_000
"""Small enough that the session hands off (child, continue-as-new) along the way."""

HISTORIES = Path(__file__).parent / "histories"


async def cli_start(
    env: WorkflowEnvironment, workflow_type: str, task_queue: str, data: dict[str, Any]
) -> str:
    """`temporal workflow start --input <json>`: the workflow id."""
    wid = f"compat-{uuid.uuid4()}"
    await temporal_cli(
        env, "workflow", "start", "--type", workflow_type, "--task-queue", task_queue,
        "--workflow-id", wid, "--input", json.dumps(data),
    )
    return wid


async def delta_then_seal(
    env: WorkflowEnvironment, client: Client, wid: str, delta: Any, seal: Any
) -> HandoffPayload:
    """Signal a handoff child `delta` then `seal` with the plain CLI; its payload."""
    for name, arg in (("delta", delta), ("seal", seal)):
        await temporal_cli(
            env, "workflow", "signal", "--workflow-id", wid, "--name", name,
            "--input", json.dumps(arg),
        )
    handle = client.get_workflow_handle(wid, result_type=HandoffPayload)
    return await guarded(client, wid, handle.result(), "the sealed payload")


def newer_session_input() -> tuple[dict[str, Any], str]:
    """A generation-1 input as a newer worker would write it: a field this code does not
    know at every level (input, config, project, phase, task, ledger, lineage, the
    handoff payload and its document, a queued command and its arguments). Also the
    text of the queued `say`."""
    project = synthetic_project(24, 2)
    lineage = [RunRef(generation=0, workflow_id="compat-gen0", run_id="run-0")]
    payload = render_payload(
        BuildHandoffInput(
            state=project,
            context=HandoffContext(
                session_id="compat-gen0", generation=0, run_id="run-0",
                reason=TerminationReason.CONTEXT_HANDOFF, lineage=lineage,
            ),
        )
    )
    say = f"queued by a newer worker {uuid.uuid4().hex[:6]}"
    inp = SessionInput(
        config=SessionConfig(context_window=WINDOW, max_tokens=300, max_generations=40),
        project=project,
        handoff=payload,
        generation=1,
        ledger=TokenLedger(context_window=WINDOW),
        lineage=lineage,
        inbox=[Command(kind=CommandKind.SAY, args={"text": say, "by": "ann"})],
        handoff_reason=TerminationReason.CONTEXT_HANDOFF,
    )
    data = json.loads(inp.model_dump_json())
    data["schema_epoch"] = 7
    data["config"]["speculative_turns"] = {"enabled": True}
    data["project"]["labels"] = ["rollout"]
    data["project"]["phases"][0]["color"] = "blue"
    first = next(iter(data["project"]["tasks"]))
    data["project"]["tasks"][first]["owner"] = "ann"
    data["ledger"]["currency"] = "EUR"
    data["lineage"][0]["namespace"] = "default"
    data["handoff"]["signature"] = "sha256:0"
    data["handoff"]["document"]["reviewed_by"] = "bot"
    data["handoff"]["document"]["agent"]["nickname"] = "gen-0"
    data["inbox"][0]["priority"] = 1
    data["inbox"][0]["args"]["tone"] = "calm"
    return data, say


async def test_older_worker_runs_a_newer_input(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    data, say = newer_session_input()
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            wid = await cli_start(env, "AgentSessionWorkflow", task_queue, data)
            async with cleanup(client, env, wid):
                result = await session_result(client, wid)
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert result.generation >= 2, "expected handoffs written and read by this version"
    assert_each_task_completed_once(result)
    # The command a newer worker queued (its arguments carry an unknown field) applied.
    assert say in result.project.human_messages, result.project.human_messages
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_payloads_clean(client, wid, result.generation)
    await assert_children_closed(env, wid)


def recorded_input(version: str, generation: int) -> dict[str, Any]:
    """The input of a recorded session run (written by the code of that recording)."""
    history = json.loads((HISTORIES / version / f"session-gen{generation}.json").read_text())
    started = history["events"][0]["workflowExecutionStartedEventAttributes"]
    data: dict[str, Any] = json.loads(base64.b64decode(started["input"]["payloads"][0]["data"]))
    return data


def test_the_recorded_input_lacks_fields_added_since() -> None:
    """The v0 recording predates fields this version has (so the next test reads an
    older input for real)."""
    data = recorded_input("v0", 1)
    assert "update_replies" not in data and "announce_handoff" not in data
    assert "max_carry_bytes" not in data["config"]
    assert "human_messages_archived" not in data["project"]
    assert "summary_line" not in data["handoff"]


async def test_newer_worker_runs_an_older_input(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    """The generation-1 input recorded by the oldest code (v0), and a minimal input with
    every field left at its default omitted, both run to the end."""
    older = recorded_input("v0", 1)
    minimal = json.loads(
        SessionInput(
            config=SessionConfig(context_window=WINDOW, max_tokens=300), project=synthetic_project(6, 2)
        ).model_dump_json(exclude_defaults=True)
    )
    assert set(minimal) == {"config", "project"}, minimal
    with FakeAnthropicServer(brain=ScriptedAgentBrain(tasks_per_turn=2)) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            wids = [
                await cli_start(env, "AgentSessionWorkflow", task_queue, data)
                for data in (older, minimal)
            ]
            results = []
            for wid in wids:
                async with cleanup(client, env, wid):
                    results.append(await session_result(client, wid, cap=90))
    for wid, result in zip(wids, results, strict=True):
        assert result.reason == TerminationReason.TASK_COMPLETED, (wid, result.reason, result.message)
        assert all(t.status == TaskStatus.COMPLETED for t in result.project.tasks.values())
        assert result.project.duplicate_completions == 0
        await assert_no_task_failures_any_run(client, wid)
        await assert_children_closed(env, wid)
    assert results[0].generation > older["generation"]


@pytest.mark.parametrize("newer_input", [False, True], ids=["signals", "input+signals"])
async def test_child_applies_a_newer_delta_and_seal(
    env: WorkflowEnvironment, client: Client, task_queue: str, newer_input: bool
) -> None:
    """A handoff child of this version, signalled as a newer session would (unknown
    fields in the `delta` and `seal` signals, their events and the events' arguments;
    and in its input), applies both signals and returns its payload. (The SDK drops a
    signal it cannot decode: the child would wait for its seal forever.)"""
    project = synthetic_project(4, 1)
    tasks = list(project.tasks)
    state = json.loads(project.model_dump_json())
    child_input = {
        "session_id": "compat-session", "generation": 0, "run_id": "run-0",
        "model": "claude-sonnet-4-6", "state": state, "level": "standard",
    }
    if newer_input:
        state["labels"] = ["rollout"]
        child_input["lease"] = {"owner": "run-0"}
    delta = {
        "events": [{
            "op": "complete_task", "args": {"task_id": tasks[0], "summary": "done", "confidence": 1},
            "by": "agent", "generation": 0, "trace_id": "t-1",
        }],
        "seq": 1, "sent_at": "2030-01-01T00:00:00Z",
    }
    ledger = json.loads(TokenLedger().model_dump_json())
    ledger["currency"] = "EUR"
    seal = {
        "reason": "CONTEXT_HANDOFF", "ledger": ledger, "events_sent": 1,
        "events": [{"op": "complete_task", "args": {"task_id": tasks[1]}, "span": 2}],
        "deadline_s": 30,
    }
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            wid = await cli_start(env, "HandoffWorkflow", task_queue, child_input)
            async with cleanup(client, env, wid):
                payload = await delta_then_seal(env, client, wid, delta, seal)
    assert payload.document is not None
    assert payload.document.progress.done == 2, payload.document.progress
    assert {t.id for t in payload.document.work_completed} == set(tasks[:2])
    assert "did not apply" not in payload.note, payload.note
    desc = await client.get_workflow_handle(wid).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED


async def test_child_names_events_it_cannot_read_and_fails_on_an_unreadable_seal(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    """A newer session can send an event op (or enum value) this child does not know:
    the delta still counts and its readable events apply, the unreadable one is named
    in the payload's note (before: the SDK dropped the whole delta and the child waited
    for it forever). A seal this child cannot read fails the child at once (the session
    then builds the payload itself) instead of leaving it waiting."""
    project = synthetic_project(4, 1)
    tasks = list(project.tasks)
    child_input = {
        "session_id": "compat-session", "generation": 0, "run_id": "run-0",
        "model": "claude-sonnet-4-6", "state": json.loads(project.model_dump_json()),
    }
    delta = {"events": [
        {"op": "complete_task", "args": {"task_id": tasks[0]}, "by": "agent"},
        {"op": "summon_reviewer", "args": {"who": "ops"}, "by": "agent"},
    ], "seq": 1}
    ledger = json.loads(TokenLedger().model_dump_json())
    seal = {"reason": "CONTEXT_HANDOFF", "ledger": ledger, "events_sent": 1}
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            wid = await cli_start(env, "HandoffWorkflow", task_queue, child_input)
            bad = await cli_start(env, "HandoffWorkflow", task_queue, child_input)
            async with cleanup(client, env, wid), cleanup(client, env, bad):
                payload = await delta_then_seal(env, client, wid, delta, seal)
                await temporal_cli(
                    env, "workflow", "signal", "--workflow-id", bad, "--name", "seal",
                    "--input", json.dumps({**seal, "reason": "QUANTUM_HANDOFF"}),
                )
                try:
                    await guarded(
                        client, bad, client.get_workflow_handle(bad).result(), "the child"
                    )
                    raise AssertionError("a child with an unreadable seal completed")
                except WorkflowFailureError as err:
                    failure = str(err.cause)
    assert payload.document is not None
    assert {t.id for t in payload.document.work_completed} == {tasks[0]}
    assert "summon_reviewer" in payload.note, payload.note
    assert "reason" in failure and "seal could not be read" in failure, failure


# ---- what a person types stays strict -----------------------------------------------

runner = CliRunner()


async def handoff_cli(*args: str) -> Result:
    """The project's CLI (its commands call asyncio.run themselves: run in a thread)."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


def _one_line(result: Result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


async def test_cli_start_rejects_unknown_fields_naming_them(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = env.client.service_client.config.target_host
    data = json.loads(synthetic_project(3, 1).model_dump_json())
    first = next(iter(data["tasks"]))
    data["tasks"][first]["owner"] = "ann"
    path = tmp_path / "project.json"
    path.write_text(json.dumps(data))
    out = await handoff_cli("start", "--project", str(path), "--address", address)
    assert out.exit_code == 2, out.output
    assert f"tasks.{first}.owner" in _one_line(out)
    for config, field in (
        ('{"colour": "blue"}', "colour"),
        ('{"user_tools": [{"name": "t", "colour": 1}]}', "user_tools.0.colour"),
    ):
        out = await handoff_cli("start", "--config", config, "--address", address)
        assert out.exit_code == 2, out.output
        assert field in _one_line(out)


async def test_decide_update_with_an_unknown_field_is_rejected_naming_it(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(project=synthetic_project(3, 1), paused=True),
                id=f"compat-decide-{uuid.uuid4()}",
                task_queue=task_queue,
            )
            try:
                out = await temporal_cli(
                    env, "workflow", "update", "execute", "--workflow-id", handle.id,
                    "--name", "decide", "--input",
                    json.dumps({"blocker_id": "B1", "decision": "go", "mood": "sure"}),
                    check=False,
                )
                project = await handle.query("project", result_type=dict)
                events = [e async for e in handle.fetch_history_events()]
            finally:
                await handle.terminate("test over")
    assert "mood" in out, out
    assert not project["decisions"], project["decisions"]
    accepted = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    assert not [e for e in events if e.event_type == accepted]
