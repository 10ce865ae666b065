"""A session must never get stuck: no failing workflow tasks, no silent endless waits.

A "stuck" session is RUNNING while every workflow task fails (a deterministic
exception in workflow code, a command the server rejects). These tests reproduce the
ways it happened and assert the correct behaviour. Every test checks the whole chain
of runs (continue-as-new included) for WORKFLOW_TASK_FAILED events, and every wait
watches for them so a stuck session fails the test at once instead of at the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anthropic
import pytest
from pydantic import ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.events import LifecycleEvent
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.schemas.project import Blocker, BlockerType, ProjectState, TaskStatus
from temporal_handoff.schemas.session import (
    AbortArgs,
    DecideArgs,
    SayArgs,
    SessionInput,
    SessionResult,
    SessionStatus,
    TaskCommandArgs,
)
from temporal_handoff.schemas.visibility import ALL_KEYS
from temporal_handoff.testing import (
    BrainReply,
    FakeAnthropicServer,
    Fault,
    ScriptedAgentBrain,
)
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.devserver import temporal_binary
from temporal_handoff.workers.plugin import HandoffPlugin, UserTool
from tests import waits
from tests.conftest import running_worker
from tests.waits import history, task_failures

T = TypeVar("T")

CAP = 60.0
"""Seconds before a wait gives up (a way to fail instead of hanging, not a bound)."""


# ------------------------------------------------------------------ history helpers
def _client_of(handle: WorkflowHandle[Any, Any]) -> Client:
    return handle._client


async def run_chain(handle: WorkflowHandle[Any, Any]) -> list[tuple[str, list[HistoryEvent]]]:
    """Every run of the workflow (oldest first) with its history events."""
    client = _client_of(handle)
    run_id = handle.first_execution_run_id or handle.run_id
    if run_id is None:  # a handle on "the latest run": walk back to the first
        latest = await history(client, handle.id, None)
        run_id = (await client.get_workflow_handle(handle.id).describe()).run_id
        prev = latest[0].workflow_execution_started_event_attributes.continued_execution_run_id
        while prev:
            run_id = prev
            first = await history(client, handle.id, prev)
            prev = first[0].workflow_execution_started_event_attributes.continued_execution_run_id
    chain: list[tuple[str, list[HistoryEvent]]] = []
    while run_id:
        events = await history(client, handle.id, run_id)
        chain.append((run_id, events))
        last = events[-1] if events else None
        if last is not None and last.event_type == (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        ):
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        else:
            run_id = ""
    return chain


async def assert_no_task_failures(handle: WorkflowHandle[Any, Any]) -> None:
    """No run of the chain (continue-as-new followed) has a failed workflow task."""
    problems = []
    for index, (run_id, events) in enumerate(await run_chain(handle)):
        problems += [f"run {index} ({run_id}): {f}" for f in task_failures(events)]
    assert not problems, "workflow task failures (session stuck):\n" + "\n".join(problems[:10])


async def guarded(
    handle: WorkflowHandle[Any, Any],
    aw: Awaitable[T],
    what: str,
    cap: float = CAP,
) -> T:
    """Await `aw`; fail at once if the session's current run has failing workflow
    tasks, and fail (instead of hanging) after `cap` seconds."""
    return await waits.guarded(_client_of(handle), handle.id, aw, what, cap)


async def status(handle: WorkflowHandle[Any, Any]) -> SessionStatus:
    return await handle.query("status", result_type=SessionStatus)


async def wait_status(
    handle: WorkflowHandle[Any, Any],
    predicate: Callable[[SessionStatus], bool],
    what: str,
    cap: float = CAP,
) -> SessionStatus:
    return await waits.wait_status(_client_of(handle), handle.id, predicate, what, cap)


async def wait_until(
    handle: WorkflowHandle[Any, Any], predicate: Callable[[], bool], what: str, cap: float = CAP
) -> None:
    await waits.wait_until(_client_of(handle), handle.id, predicate, what, cap)


async def result_of(
    handle: WorkflowHandle[Any, SessionResult], cap: float = CAP
) -> SessionResult:
    return await guarded(handle, handle.result(), "the session result", cap)


async def start(
    client: Client,
    task_queue: str,
    project: ProjectState,
    *,
    paused: bool = False,
    prefix: str = "stuck",
    **config: Any,
) -> WorkflowHandle[Any, SessionResult]:
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=SessionConfig(**config), project=project, paused=paused),
        id=f"{prefix}-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=SessionResult,
    )


async def decide(handle: WorkflowHandle[Any, Any], blocker_id: str, text: str = "go") -> str:
    return await handle.execute_update(
        "decide", DecideArgs(blocker_id=blocker_id, decision=text), result_type=str
    )


class Gate:
    """A notifier that holds one lifecycle notification until released.

    The CRITICAL notification runs alongside the sealing and is awaited before the
    continue-as-new, so holding it keeps the session in its handoff (commands are
    queued for the successor) for as long as the test needs."""

    def __init__(self, event: str, times: int = 1) -> None:
        self.event = event
        self.times = times
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.seen: list[LifecycleEvent] = []

    async def __call__(self, event: LifecycleEvent) -> None:
        self.seen.append(event)
        if event.event == self.event and self.times > 0:
            self.times -= 1
            self.entered.set()
            await asyncio.wait_for(self.release.wait(), timeout=25)


class RecordingBrain:
    """The scripted agent, remembering every request body it answered."""

    def __init__(self, inner: Any | None = None) -> None:
        self.inner = inner or ScriptedAgentBrain()
        self.requests: list[dict[str, Any]] = []

    def respond(self, request: dict[str, Any]) -> BrainReply:
        self.requests.append(request)
        return self.inner.respond(request)


_GEN_RE = re.compile(r"You are generation (\d+) of session")


def request_generation(request: dict[str, Any]) -> int:
    """The generation a model request came from (its opening message says so)."""
    first = request["messages"][0]
    content = first.get("content")
    text = content if isinstance(content, str) else json.dumps(content)
    m = _GEN_RE.search(text)
    return int(m.group(1)) if m else 0


def one_failed_task_project(n_tasks: int = 6) -> ProjectState:
    project = synthetic_project(n_tasks, 1)
    first = next(iter(project.tasks))
    project.tasks[first].status = TaskStatus.FAILED
    project.tasks[first].error = "flaky"
    project.tasks[first].attempts = 1
    return project


def blocked_project(n_tasks: int = 4, blockers: tuple[str, ...] = ("B-ASK",)) -> ProjectState:
    project = synthetic_project(n_tasks, 1)
    for bid in blockers:
        project.blockers.append(
            Blocker(id=bid, type=BlockerType.HUMAN_DECISION, description=f"{bid}: which db?")
        )
    return project


# ------------------------------------------------------------------ 1. repeated model error
async def test_same_non_retryable_model_error_twice_opens_a_new_blocker(
    client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        fake.add_fault(Fault(status=401, message="invalid x-api-key (revoked)", times=2))
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, synthetic_project(4, 1))
            st = await wait_status(
                handle,
                lambda s: s.lifecycle == LifecycleState.AWAITING_DECISION and bool(s.open_blockers),
                "the first model-error blocker",
            )
            first = st.open_blockers[0]["id"]
            await guarded(handle, decide(handle, first, "key rotated"), "decide #1")
            # The same error again: a new blocker, not a duplicate id in workflow code.
            st = await wait_status(
                handle,
                lambda s: s.lifecycle == LifecycleState.AWAITING_DECISION
                and any(b["id"] != first for b in s.open_blockers),
                "a second, different model-error blocker",
            )
            second = next(b["id"] for b in st.open_blockers if b["id"] != first)
            await guarded(handle, decide(handle, second, "key fixed"), "decide #2")
            result = await result_of(handle)
    assert result.reason == TerminationReason.TASK_COMPLETED
    ids = [b.id for b in result.project.blockers]
    assert len(ids) == len(set(ids)) >= 2
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 2. two retries in a handoff
async def test_two_retry_task_updates_during_a_handoff(client: Client, task_queue: str) -> None:
    gate = Gate("CRITICAL")
    with FakeAnthropicServer(brain=ScriptedAgentBrain(decision_every=0)) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=gate):
            project = one_failed_task_project()
            failed = next(iter(project.tasks))
            handle = await start(client, task_queue, project, paused=True)
            await wait_status(handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused")
            await handle.signal("flush")
            await guarded(handle, gate.entered.wait(), "the handoff (CRITICAL notification)")
            await wait_status(
                handle,
                lambda s: s.lifecycle
                in (LifecycleState.HANDOFF_PENDING, LifecycleState.HANDOFF_COMPLETE),
                "HANDOFF_PENDING (held by the CRITICAL notification)",
                cap=20,
            )
            outcomes: list[str] = []
            for _ in range(2):
                try:
                    outcomes.append(
                        await guarded(
                            handle,
                            handle.execute_update(
                                "retry_task", TaskCommandArgs(task_id=failed), result_type=str
                            ),
                            "retry_task",
                        )
                    )
                except WorkflowUpdateFailedError as err:
                    outcomes.append(f"rejected: {err.cause}")
            assert not outcomes[0].startswith("rejected"), outcomes  # the task had failed
            gate.release.set()
            await wait_status(handle, lambda s: s.generation >= 1, "the successor")
            await handle.signal("resume")
            result = await result_of(handle)
    assert result.reason == TerminationReason.TASK_COMPLETED, result.message
    assert result.project.tasks[failed].status == TaskStatus.COMPLETED
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 3. a long decision
async def test_decide_text_longer_than_a_decision_title(client: Client, task_queue: str) -> None:
    long_text = "use postgres with logical replication " * 140  # ~5,300 chars
    assert 4_000 < len(long_text) <= 16_000
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, blocked_project(blockers=("B-ONE", "B-TWO")))
            await wait_status(
                handle, lambda s: s.lifecycle == LifecycleState.AWAITING_DECISION, "waiting"
            )
            try:
                # Raw JSON, as the plain `temporal workflow update` CLI sends it: the
                # client-side model would refuse it before it reached the workflow.
                await guarded(
                    handle,
                    handle.execute_update(
                        "decide", {"blocker_id": "B-ONE", "decision": long_text}, result_type=str
                    ),
                    "the long decide",
                )
            except WorkflowUpdateFailedError as err:
                # Rejected cleanly: the message names the field; nothing changed.
                assert "decision" in str(err.cause), err.cause
                st = await status(handle)
                assert "B-ONE" in {b["id"] for b in st.open_blockers}
                assert st.lifecycle == LifecycleState.AWAITING_DECISION
                await guarded(handle, decide(handle, "B-ONE", "use postgres"), "decide B-ONE")
            else:
                # Applied: then in full.
                project = await handle.query("project", result_type=dict)
                titles = [d["title"] for d in project["decisions"] if d.get("blocker_id") == "B-ONE"]
                rationales = [
                    d["rationale"] for d in project["decisions"] if d.get("blocker_id") == "B-ONE"
                ]
                assert any(long_text in t + r for t, r in zip(titles, rationales, strict=True))
            out = await guarded(handle, decide(handle, "B-TWO", "yes"), "a normal decide")
            assert "B-TWO" in out
            result = await result_of(handle)
    assert result.reason == TerminationReason.TASK_COMPLETED
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 4. user tools
BOOM = ToolSpec(
    name="deploy_preview",
    description="Deploy a preview environment.",
    input_schema={"type": "object", "properties": {"branch": {"type": "string"}}},
)


class ToolFirstBrain(RecordingBrain):
    """Calls the user tool on its first turn, then works as the scripted agent."""

    def __init__(self, tool: str) -> None:
        super().__init__()
        self.tool = tool

    def respond(self, request: dict[str, Any]) -> BrainReply:
        self.requests.append(request)
        if len(request["messages"]) == 1 and request_generation(request) == 0:
            return BrainReply(
                content=[
                    {"type": "text", "text": "Deploying a preview first."},
                    {
                        "type": "tool_use", "id": "toolu_user_tool_1", "name": self.tool,
                        "input": {"branch": "main"},
                    },
                ]
            )
        return self.inner.respond(request)

    def tool_results(self) -> list[dict[str, Any]]:
        out = []
        for req in self.requests:
            for m in req["messages"]:
                if isinstance(m.get("content"), list):
                    out += [
                        b for b in m["content"]
                        if isinstance(b, dict) and b.get("type") == "tool_result"
                        and b.get("tool_use_id") == "toolu_user_tool_1"
                    ]
        return out


async def test_user_tool_that_raises_reaches_the_model_as_an_error(
    client: Client, task_queue: str
) -> None:
    calls = 0

    async def deploy_preview(tool_input: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("preview cluster quota exceeded (xq-417)")

    brain = ToolFirstBrain(BOOM.name)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, tools=[UserTool(spec=BOOM, fn=deploy_preview)]
        ):
            handle = await start(client, task_queue, synthetic_project(4, 1), user_tools=[BOOM])
            await wait_until(
                handle, lambda: bool(brain.tool_results()), "the tool error to reach the model",
                cap=30,
            )
            result = await result_of(handle)
    error = brain.tool_results()[0]
    assert error.get("is_error") is True, error
    assert "xq-417" in json.dumps(error.get("content")), error
    assert 1 <= calls <= 3
    assert result.reason == TerminationReason.TASK_COMPLETED
    await assert_no_task_failures(handle)


async def test_abort_cancels_a_slow_user_tool(client: Client, task_queue: str) -> None:
    started = asyncio.Event()

    async def deploy_preview(tool_input: dict[str, Any]) -> str:
        started.set()
        await asyncio.sleep(600)
        return "deployed"

    brain = ToolFirstBrain(BOOM.name)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, tools=[UserTool(spec=BOOM, fn=deploy_preview)]
        ):
            handle = await start(client, task_queue, synthetic_project(4, 1), user_tools=[BOOM])
            await guarded(handle, started.wait(), "the tool to start")
            await handle.signal("abort", AbortArgs(reason="stop the deploy"))
            result = await result_of(handle, cap=30)
    assert result.reason == TerminationReason.USER_ABORT
    assert result.message == "stop the deploy"
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 5. bare namespace
@contextlib.asynccontextmanager
async def bare_server(
    search_attributes: bool = False, extra: list[str] | None = None
) -> AsyncIterator[Client]:
    """A second dev server; by default WITHOUT the Agent* search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_log_level="error",
        search_attributes=ALL_KEYS if search_attributes else (),
        dev_server_extra_args=[
            "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
            *(extra or []),
        ],
    )
    try:
        config = env.client.config()
        config["plugins"] = [HandoffPlugin()]
        yield Client(**config)
    finally:
        await env.shutdown()


async def test_session_on_a_namespace_without_search_attributes(task_queue: str) -> None:
    async with bare_server() as bare:
        with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
            async with running_worker(bare, task_queue, fake.base_url):
                handle = await start(bare, task_queue, synthetic_project(4, 1))
                result = await result_of(handle)
                await assert_no_task_failures(handle)

                async def listed() -> None:
                    query = f"WorkflowId = '{handle.id}' AND AgentLifecycle = 'TERMINATED'"
                    while True:
                        with contextlib.suppress(RPCError):
                            if [w async for w in bare.list_workflows(query)]:
                                return
                        await asyncio.sleep(0.2)

                await guarded(handle, listed(), "the session to be listed by AgentLifecycle", 20)
    assert result.reason == TerminationReason.TASK_COMPLETED


async def test_worker_without_search_attribute_registration_fails_fast(task_queue: str) -> None:
    from temporal_handoff.workers.plugin import HandoffOptions

    async with bare_server() as bare:
        with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:

            async def run_worker() -> None:
                options = HandoffOptions(register_search_attributes=False)  # type: ignore[call-arg]
                model = anthropic.AsyncAnthropic(
                    base_url=fake.base_url, api_key="test-key", max_retries=0
                )
                config = bare.config()
                config["plugins"] = [HandoffPlugin(options, anthropic_client=model)]
                # `Worker.run()` rather than `async with`: a plugin's `run_worker` that
                # raises before starting the worker makes `async with` wait forever.
                await Worker(Client(**config), task_queue=task_queue).run()

            with pytest.raises(Exception) as info:
                await asyncio.wait_for(run_worker(), timeout=30)
    chain = []
    err: BaseException | None = info.value
    while err is not None:
        chain.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    assert any("handoff setup" in text for text in chain), chain


# ------------------------------------------------------------------ 6. human text piling up
async def test_paused_session_with_two_megabytes_of_accepted_text(
    client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, synthetic_project(4, 1), paused=True)
            await wait_status(handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused")
            accepted = rejected = 0
            for i in range(40):
                text = f"note {i}: " + "x" * (60_000 - 10)
                try:
                    await guarded(
                        handle,
                        handle.execute_update("say", SayArgs(text=text), result_type=str),
                        f"say #{i}",
                    )
                    accepted += 1
                except WorkflowUpdateFailedError as err:
                    message = str(err.cause)
                    assert any(w in message for w in ("bytes", "limit", "too", "total")), message
                    rejected += 1
            assert accepted + rejected == 40
            await handle.signal("resume")
            # It makes progress (or finishes) instead of failing every task.
            await wait_status(
                handle,
                lambda s: s.tasks_done >= 1 or s.generation >= 1,
                "progress after resume",
                cap=90,
            )
            await assert_no_task_failures(handle)
            with contextlib.suppress(RPCError):
                await handle.terminate("test over")


async def test_paused_session_continues_as_new_when_suggested(task_queue: str) -> None:
    extra = ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=200"]
    async with bare_server(search_attributes=True, extra=extra) as cl:
        with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
            async with running_worker(cl, task_queue, fake.base_url):
                handle = await start(cl, task_queue, synthetic_project(4, 1), paused=True)
                first_run = handle.first_execution_run_id
                await wait_status(handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused")
                sent = 0
                # Each update adds ~5 events: 80 of them pass the 200-event suggestion.
                for i in range(80):
                    with contextlib.suppress(RPCError, WorkflowUpdateFailedError):
                        await guarded(
                            handle,
                            handle.execute_update(
                                "say", SayArgs(text=f"small note {i}"), result_type=str
                            ),
                            f"say #{i}",
                        )
                        sent += 1

                async def continued() -> str:
                    while True:
                        run = (await cl.get_workflow_handle(handle.id).describe()).run_id
                        if run != first_run:
                            return run
                        await asyncio.sleep(0.1)

                await guarded(handle, continued(), "a continue-as-new while paused", cap=30)
                st = await wait_status(
                    handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused successor"
                )
                assert st.paused
                project = await handle.query("project", result_type=dict)
                await assert_no_task_failures(handle)
                await handle.terminate("test over")
    assert sent >= 60
    assert sum(m.startswith("small note") for m in project["human_messages"]) == sent


# ------------------------------------------------------------------ 7. input growth
def _start_input(events: list[HistoryEvent]) -> bytes:
    attrs = events[0].workflow_execution_started_event_attributes
    return attrs.input.payloads[0].data


async def test_successor_input_does_not_carry_a_copy_of_the_document(
    client: Client, task_queue: str
) -> None:
    brain = ScriptedAgentBrain(summary_words=150, decision_every=2)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(
                client, task_queue, synthetic_project(80, 2), context_window=5_000, max_tokens=300,
                max_generations=40,
            )
            result = await result_of(handle, cap=120)
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 4
    chain = await run_chain(handle)
    overheads = []
    for _, events in chain[1:]:
        data = _start_input(events)
        project = json.loads(data)["project"]
        project_size = len(json.dumps(project, separators=(",", ":"), ensure_ascii=False).encode())
        overheads.append(len(data) - project_size)
    assert max(overheads) < 32 * 1024, f"input minus project per generation: {overheads}"
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 8. calls that never succeed
async def test_unreachable_model_raises_a_blocker(client: Client, task_queue: str) -> None:
    seen: list[LifecycleEvent] = []

    async def notifier(event: LifecycleEvent) -> None:
        seen.append(event)

    async with running_worker(client, task_queue, "http://127.0.0.1:9", notifier=notifier):
        handle = await start(
            client, task_queue, synthetic_project(4, 1), context_window=200_000,
            model_max_attempts=3, model_retry_initial_s=0.1,
        )
        st = await wait_status(
            handle,
            lambda s: s.lifecycle == LifecycleState.AWAITING_DECISION and bool(s.open_blockers),
            "a blocker for the unreachable model",
        )
        assert "connect" in st.open_blockers[0]["description"].lower(), st.open_blockers
        assert "after 3 attempts" in st.open_blockers[0]["description"], st.open_blockers
        await wait_until(
            handle, lambda: any(e.event == "BLOCKED" for e in seen), "a BLOCKED notification"
        )
        await assert_no_task_failures(handle)
        await handle.signal("abort")
        result = await result_of(handle)
        assert result.reason == TerminationReason.USER_ABORT


async def test_pause_cancels_a_model_call_in_flight_and_resume_makes_it_again(
    client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=30.0) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, synthetic_project(3, 1))
            await wait_until(
                handle, lambda: len(fake.message_requests()) >= 1, "the first model call"
            )
            await handle.signal("pause")
            st = await wait_status(handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused")
            assert st.turn == 0  # the cancelled call does not count as a turn
            events = [e for _, evs in await run_chain(handle) for e in evs]
            assert any(
                e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED for e in events
            )
            fake.latency_s = 0.0
            await handle.signal("resume")
            result = await result_of(handle)
    assert result.reason == TerminationReason.TASK_COMPLETED, result.message
    await assert_no_task_failures(handle)

# ------------------------------------------------------------------ 9. events lost by the child
async def test_handoff_child_gets_every_human_message(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(summary_words=90, decision_every=3)
    with FakeAnthropicServer(brain=brain, latency_s=0.01) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(
                client, task_queue, synthetic_project(90, 2), context_window=4_000, max_tokens=300,
                max_generations=60,
            )
            result_task = asyncio.ensure_future(handle.result())
            accepted = 0

            async def say_stream(lane: int) -> None:
                nonlocal accepted
                i = 0
                while not result_task.done():
                    i += 1
                    try:
                        await handle.execute_update(
                            "say", SayArgs(text=f"lane {lane} note {i}"), result_type=str
                        )
                        accepted += 1
                    except (WorkflowUpdateFailedError, RPCError):
                        await asyncio.sleep(0.02)

            async def run() -> SessionResult:
                await asyncio.gather(*(say_stream(lane) for lane in range(4)))
                return result_task.result()

            try:
                result = await guarded(handle, run(), "the session to complete", cap=150)
            finally:
                result_task.cancel()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 10, result.generation
    assert accepted > 100, accepted
    chain = await run_chain(handle)
    assert len(chain) == result.generation + 1
    mismatches = []
    for g in range(result.generation):
        payload = await client.get_workflow_handle(
            f"{handle.id}-handoff-{g}", result_type=HandoffPayload
        ).result()
        successor = json.loads(_start_input(chain[g + 1][1]))
        expected = len(successor["project"]["human_messages"])
        got = payload.document.totals.get("human_messages", 0)
        if got != expected:
            mismatches.append(f"gen {g}: child has {got}, session had {expected}")
    assert not mismatches, mismatches
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 10a. flush during a handoff
async def test_second_flush_during_a_handoff_still_gives_the_successor_a_turn(
    client: Client, task_queue: str
) -> None:
    gate = Gate("CRITICAL")
    brain = RecordingBrain(ScriptedAgentBrain(decision_every=0))
    with FakeAnthropicServer(brain=brain, latency_s=0.05) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=gate):
            handle = await start(client, task_queue, synthetic_project(12, 1))
            await wait_status(handle, lambda s: s.tasks_done >= 1, "first progress")
            await handle.signal("flush")
            await guarded(handle, gate.entered.wait(), "the handoff (CRITICAL notification)")
            await wait_status(
                handle,
                lambda s: s.lifecycle
                in (LifecycleState.HANDOFF_PENDING, LifecycleState.HANDOFF_COMPLETE),
                "HANDOFF_PENDING (held by the CRITICAL notification)",
                cap=20,
            )
            await handle.signal("flush")
            gate.release.set()
            result = await result_of(handle)
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 1
    calls = [request_generation(r) for r in brain.requests]
    empty = [g for g in range(result.generation + 1) if g not in calls]
    assert not empty, f"generations without a model call: {empty} (calls per gen: {calls})"
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 10b. commands while finishing
async def test_say_while_the_session_is_finishing(client: Client, task_queue: str) -> None:
    gate = Gate("TERMINATED")
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.05) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=gate):
            handle = await start(client, task_queue, synthetic_project(30, 2))
            await wait_status(handle, lambda s: s.tasks_done >= 2, "first progress")
            await handle.signal("abort", AbortArgs(reason="done for today"))
            await guarded(handle, gate.entered.wait(), "the session to be finishing")
            reply: str | None = None
            try:
                reply = await guarded(
                    handle,
                    handle.execute_update("say", SayArgs(text="late note 42"), result_type=str),
                    "the late say",
                )
            except WorkflowUpdateFailedError as err:
                assert "clos" in str(err.cause).lower() or "finish" in str(err.cause).lower()
            except RPCError as err:  # the run had already closed: refused as well
                assert "complete" in str(err).lower() or "closed" in str(err).lower(), err
            gate.release.set()
            result = await result_of(handle)
    assert result.reason == TerminationReason.USER_ABORT
    assert result.final_handoff is not None
    if reply is not None:
        assert "next turn" not in reply, reply
        doc = result.final_handoff.document
        assert "late note 42" in result.project.human_messages
        assert doc.totals.get("human_messages") == len(result.project.human_messages)
        assert "late note 42" in doc.to_json()
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 10c. window too small
async def test_window_too_small_for_the_system_prompt_is_refused_at_start(
    client: Client, task_queue: str
) -> None:
    long_prompt = "You are a careful engineer; follow the plan. " * 70  # ~3,200 chars
    try:
        config = SessionConfig(context_window=1_000, system_prompt=long_prompt, max_generations=6)
    except ValidationError as err:
        messages = " ".join(e["msg"] for e in err.errors())
        assert "1000" in messages or "1,000" in messages, messages
        return
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(config=config, project=synthetic_project(4, 1)),
                id=f"stuck-window-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=SessionResult,
            )
            try:
                result = await result_of(handle)
            except WorkflowFailureError as err:
                message = str(err.cause)
                assert "1000" in message or "1,000" in message, message
            else:
                assert result.reason != TerminationReason.MAX_GENERATIONS, result.message
                assert result.generation == 0, result.generation
                assert "1000" in result.message or "1,000" in result.message, result.message
    await assert_no_task_failures(handle)


async def test_window_from_the_models_api_too_small_closes_with_config_error(
    client: Client, task_queue: str
) -> None:
    """The window is only known in the workflow (Models API): the first step refuses it."""
    long_prompt = "You are a careful engineer; follow the plan. " * 70  # ~3,200 chars
    config = SessionConfig(system_prompt=long_prompt, max_generations=6)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), default_context_window=2_000) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(config=config, project=synthetic_project(4, 1)),
                id=f"stuck-window-api-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=SessionResult,
            )
            result = await result_of(handle)
            assert fake.message_requests() == []
    assert result.reason == TerminationReason.CONFIG_ERROR, result.message
    assert result.generation == 0
    assert "2000 tokens" in result.message and "need" in result.message, result.message
    assert result.final_handoff is not None  # --resume-from accepts it with a fixed config
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ 10d. message over the window
async def test_say_bigger_than_the_window_tells_the_sender(client: Client, task_queue: str) -> None:
    big = "please also check the migration scripts for data loss. " * 540  # ~30,000 chars
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(
                client, task_queue, synthetic_project(6, 1), paused=True, context_window=4_000, max_tokens=300
            )
            await wait_status(handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused")
            try:
                reply = await guarded(
                    handle,
                    handle.execute_update("say", SayArgs(text=big), result_type=str),
                    "the big say",
                )
            except WorkflowUpdateFailedError as err:
                message = str(err.cause)
                assert re.search(r"\d", message) and any(
                    w in message for w in ("token", "character", "bytes", "window")
                ), message
            else:
                assert any(
                    w in reply.lower() for w in ("shortened", "truncated", "characters")
                ), reply
            await handle.signal("resume")
            result = await result_of(handle)
    assert result.reason == TerminationReason.TASK_COMPLETED
    await assert_no_task_failures(handle)


# ------------------------------------------------------------------ a retried update, twice
async def test_an_update_retried_with_its_id_after_a_handoff_applies_once(
    client: Client, task_queue: str
) -> None:
    """A client that lost the answer retries with the same update id; the successor run
    (which the server's own dedup does not cover) answers it without applying it again."""
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, synthetic_project(8, 1), paused=True)
            await wait_status(handle, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused")
            first = await handle.execute_update(
                "say", SayArgs(text="marker-once"), id="say-fixed-id", result_type=str
            )
            await handle.signal("flush")
            await handle.signal("resume")
            await wait_status(handle, lambda s: s.generation >= 1, "the successor")
            await handle.signal("pause")
            again = await handle.execute_update(
                "say", SayArgs(text="marker-once"), id="say-fixed-id", result_type=str
            )
            assert again == first
            await handle.signal("resume")
            result = await result_of(handle)
    assert result.project.human_messages.count("marker-once") == 1
    await assert_no_task_failures(handle)
