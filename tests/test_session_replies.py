"""The session against replies real Claude gives, each produced by the fake's natural
behaviour (no forced fault): a reply cut at `max_tokens` inside a tool call, a
mid-stream overload after a 200, every overflow form, and a `max_tokens` the model
cannot produce."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import SessionInput, SessionResult, SessionStatus
from temporal_handoff.testing import BrainReply, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import filler
from temporal_handoff.testing.fake_tokens import TokenCounter
from temporal_handoff.testing.reading import READ_FILE, ReadingBrain, read_file
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import UserTool
from tests.conftest import running_worker
from tests.waits import guarded

NEW = "claude-sonnet-4-6"  # stops at a full window (model_context_window_exceeded)
OLD = "claude-3-5-haiku-20241022"  # 400 "input length and `max_tokens` exceed context limit"


class RecordingBrain(ScriptedAgentBrain):
    """The scripted agent, keeping every request body it answered."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def respond(self, request: dict[str, Any]) -> BrainReply:
        with self._lock:
            self.bodies.append(request)
        return super().respond(request)


async def start(
    client: Client, task_queue: str, n_tasks: int, **config: Any
) -> WorkflowHandle[Any, SessionResult]:
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=SessionConfig(**config), project=synthetic_project(n_tasks, 2)),
        id=f"replies-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=SessionResult,
    )


async def finished_without_blocker(
    client: Client, handle: WorkflowHandle[Any, SessionResult], cap: float = 90.0
) -> SessionResult:
    """The result; fails at once if the session opens a blocker instead (a model
    failure it could not get past on its own)."""
    latest = client.get_workflow_handle(handle.id)

    async def poll() -> SessionResult:
        while True:
            desc = await latest.describe()
            if desc.status != WorkflowExecutionStatus.RUNNING:
                return await handle.result()
            with contextlib.suppress(RPCError):
                st = await latest.query("status", result_type=SessionStatus)
                if st.open_blockers:
                    raise AssertionError(f"the session opened a blocker: {st.open_blockers}")
            await asyncio.sleep(0.1)

    return await guarded(client, handle.id, poll(), "the session to finish", cap)


def assert_completed(result: SessionResult, n_tasks: int) -> None:
    assert result.reason == TerminationReason.TASK_COMPLETED, result.message
    assert all(t.status == TaskStatus.COMPLETED for t in result.project.tasks.values())
    assert result.health.tasks_completed == n_tasks
    assert not [b for b in result.project.blockers if b.id.startswith("MODEL-")]


# ---------------------------------------------------------------- max_tokens
async def test_tool_call_cut_at_max_tokens_is_never_run(client: Client, task_queue: str) -> None:
    words = 60
    brain = RecordingBrain(summary_words=words, decision_every=0)
    n = 4
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, n, max_tokens=64)
            result = await finished_without_blocker(client, handle)
        reqs = fake.message_requests()
    assert_completed(result, n)
    # The fake cut replies inside complete_task's input (after task_id, before summary);
    # run, such a call would complete a task with an empty summary.
    cut = [r for r in reqs if r.usage and r.usage["output_tokens"] == 64]
    assert len(cut) == 1
    for task_id, task in result.project.tasks.items():
        assert task.summary == filler(task_id, words), task_id
    # A cut reply never enters the conversation; the turn is asked again with
    # max_tokens doubled, which stays for the generation's later turns.
    for body in brain.bodies:
        for message in body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else []:
                if block.get("type") == "tool_use" and block["name"] == "complete_task":
                    assert "summary" in block["input"], block
    assert [b["max_tokens"] for b in brain.bodies] == [64] + [128] * (len(brain.bodies) - 1)


async def test_cut_reply_raises_a_blocker_when_configured(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(summary_words=60, decision_every=0)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 2, max_tokens=64, on_max_tokens="blocker")
            with pytest.raises(AssertionError, match="max_tokens"):
                await finished_without_blocker(client, handle)
            st = await handle.query("status", result_type=SessionStatus)
            await handle.terminate()
    (blocker,) = st.open_blockers
    assert blocker["id"].startswith("MODEL-") and "max_tokens=64" in blocker["description"]
    assert st.tasks_done == 0  # the cut complete_task was not run


# ---------------------------------------------------------------- mid-stream overload
async def test_mid_stream_overload_is_retried(client: Client, task_queue: str) -> None:
    n = 6
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), stream_error_rate=0.3, seed=3) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(
                client, task_queue, n, max_tokens=1024, stream_threshold=512,
                model_retry_initial_s=0.1,
            )
            result = await finished_without_blocker(client, handle)
            history = await client.get_workflow_handle(handle.id).fetch_history()
        reqs = fake.message_requests()
    assert_completed(result, n)
    overloaded = [r for r in reqs if r.error == "mid-stream overloaded_error"]
    assert overloaded and all(r.status == 200 and r.stream for r in overloaded)
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) >= 2  # retried by Temporal, visible in the history


# ---------------------------------------------------------------- overflow forms
def _window_exceeded(window: int):  # type: ignore[no-untyped-def]
    return lambda r: (
        r.status == 200 and r.usage and r.input_tokens + r.usage["output_tokens"] == window
    )


@pytest.mark.parametrize(
    "form", ["exceed_context_limit", "prompt_too_long", "window_exceeded", "too_large"]
)
async def test_every_overflow_form_hands_off(client: Client, task_queue: str, form: str) -> None:
    """The session believes in a bigger window than the API has (a config override),
    so its pre-flight lets the prompt grow until the API itself says it is full. Which
    form comes first depends on the step sizes: long replies fill the window during a
    reply (`model_context_window_exceeded`); a short reply whose tool result is a big
    file pushes the next prompt over it (`prompt is too long`)."""
    n = 40
    words = 150 if form == "window_exceeded" else 40
    brain: Any = ScriptedAgentBrain(tasks_per_turn=2, decision_every=0, summary_words=words)
    tools: list[UserTool] = []
    extra: dict[str, Any] = {}
    if form == "prompt_too_long":
        counter = TokenCounter()

        def plan(request: dict[str, Any]) -> tuple[str, int] | None:
            # Once, in the first generation, past half the real window: a file that
            # alone would fill it.
            first = "Handoff from your previous generation" not in str(request.get("system"))
            return ("prose", 4_000) if first and counter.prompt(request) > 2_500 else None

        brain = ReadingBrain(plan, brain)
        tools = [UserTool(spec=READ_FILE, fn=read_file)]
        extra = {"user_tools": [READ_FILE]}
    if form == "too_large":
        fake = FakeAnthropicServer(brain=brain, max_request_bytes=24_000)
        config: dict[str, Any] = {}
        seen = lambda r: r.status == 413  # noqa: E731
    else:
        model = OLD if form == "exceed_context_limit" else NEW
        fake = FakeAnthropicServer(brain=brain, context_windows={model: 5_000})
        config = {"model": model, "context_window": 12_000}
        if form == "exceed_context_limit":
            seen = lambda r: r.status == 400 and "exceed context limit" in r.error  # noqa: E731
        elif form == "prompt_too_long":
            seen = lambda r: r.status == 400 and "prompt is too long" in r.error  # noqa: E731
        else:
            seen = _window_exceeded(5_000)
    with fake:
        async with running_worker(client, task_queue, fake.base_url, tools=tools):
            handle = await start(client, task_queue, n, max_tokens=1_500, **config, **extra)
            result = await finished_without_blocker(client, handle, cap=180)
        reqs = fake.message_requests()
    assert_completed(result, n)
    assert [r for r in reqs if seen(r)], form
    assert result.generation >= 1


async def test_prompt_plus_max_tokens_is_reserved_in_the_preflight(
    client: Client, task_queue: str
) -> None:
    """With the true window, the session hands off before prompt + max_tokens can
    exceed it: an older model never answers 400."""
    n = 40
    brain = RecordingBrain(tasks_per_turn=2, decision_every=0)
    with FakeAnthropicServer(brain=brain, context_windows={OLD: 6_000}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, n, model=OLD, max_tokens=1_500)
            result = await finished_without_blocker(client, handle, cap=180)
        reqs = fake.message_requests()
    assert_completed(result, n)
    assert result.generation >= 1
    assert [r.status for r in reqs if r.status != 200] == []
    # Every request's own prompt + max_tokens fits (the turns reserve 1,500; a handoff
    # note's turn, its own 400).
    sent = [(fake.prompt_tokens(b), b["max_tokens"]) for b in brain.bodies]
    assert max(p for p, m in sent if m == 1_500) + 1_500 <= 6_000
    assert all(p + m <= 6_000 for p, m in sent), sent


# ---------------------------------------------------------------- output limit
async def test_max_tokens_over_the_output_limit_is_refused_at_start(
    client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), max_output_tokens=64_000) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 3, max_tokens=100_000)
            result = await guarded(client, handle.id, handle.result(), "the result")
        assert fake.message_requests() == []
    assert result.reason == TerminationReason.CONFIG_ERROR
    assert result.message.startswith("max_tokens: 100000 ") and "64000" in result.message
    assert "\n" not in result.message
    assert result.final_handoff is not None  # resumable with a fixed config


def test_max_tokens_room_in_a_small_window() -> None:
    cfg = SessionConfig(max_tokens=4_096)
    assert cfg.max_tokens_shortfall(64_000, NEW) is None
    reason = cfg.model_copy(update={"max_tokens": 10_000}).max_tokens_shortfall(8_192, NEW)
    assert reason == f"max_tokens: 10000 is above {NEW}'s output limit of 8192 tokens (Models API)"
    assert cfg.max_tokens_room(200_000) > 4_096
    assert cfg.max_tokens_room(4_000) == 4_000 - cfg.fixed_prompt_tokens() - 500


async def test_max_tokens_too_big_for_the_window_is_reduced_to_fit(
    client: Client, task_queue: str
) -> None:
    """A session whose window cannot hold max_tokens beside its prompt (e.g. an input
    from an older worker) still runs: each call asks for what fits."""
    n = 6
    brain = RecordingBrain(tasks_per_turn=2, decision_every=0)
    with FakeAnthropicServer(brain=brain, context_windows={OLD: 4_000}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, n, model=OLD, max_tokens=4_096)
            result = await finished_without_blocker(client, handle, cap=120)
        reqs = fake.message_requests()
    assert_completed(result, n)
    room = SessionConfig().max_tokens_room(4_000)
    assert {b["max_tokens"] for b in brain.bodies} == {room}
    assert [r.status for r in reqs if r.status != 200] == []
