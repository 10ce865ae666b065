"""`handoff start --resume-from` from every way a session can close.

Real dev server, real worker, the fake Messages API; the operator actions (terminate)
use the plain `temporal` CLI and the resume uses the `handoff` CLI in-process.

One session is terminated mid-turn and resumed once for the module; the tests read it
back: the resumed session completes every task once across both sessions, applies
each accepted `say` once, counts each model call once, keeps the original config
(system prompt, user tools, user, window), `recall`s a predecessor generation across
workflow ids, and `handoff history` links back to the predecessor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anthropic
import pytest_asyncio
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner, Result

from temporal_handoff.cli import app
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.model_io import ModelResponse, ToolSpec
from temporal_handoff.schemas.session import SayArgs, SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import BrainReply
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin
from tests.test_operator_actions import (
    assert_each_task_completed_once,
    guarded,
    session_result,
    temporal_cli,
    wait_status,
)

WINDOW = 4_000
SYSTEM = "You are the resume-test agent. Marker: zebra-1137."
USER = "resume-tester"
LOOKUP = ToolSpec(
    name="lookup", description="Look something up.",
    input_schema={"type": "object", "properties": {"q": {"type": "string"}}},
)
runner = CliRunner()


# ------------------------------------------------------------------ helpers
async def handoff_cli(*args: str) -> Result:
    """The `handoff` CLI in-process (in a thread: its commands call asyncio.run)."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


def address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def assert_one_error(res: Result, *texts: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: "), res.stderr
    assert not any(ln.startswith("error:") for ln in lines[1:]), res.stderr
    flat = " ".join(res.stderr.split())
    for text in texts:
        assert text in flat, res.stderr


@dataclass
class Seen:
    system: str
    tools: list[str]
    session: str
    tool_results: list[str]


class RecordingBrain(ScriptedAgentBrain):
    """The scripted agent, plus: it records what each request carried, calls the user
    tool `lookup` once (on request number `lookup_at`), and at the first turn of a
    session named in `recall_in` recalls generation `recall_gen`'s tasks."""

    def __init__(
        self, *, lookup_at: int | None = None, recall_gen: int = 0, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.lookup_at = lookup_at
        self.recall_in: set[str] = set()
        self.recall_gen = recall_gen
        self.recalled: set[str] = set()

    def respond(self, request: dict[str, Any]) -> BrainReply:
        system = "".join(b.get("text", "") for b in request.get("system") or [])
        messages = request.get("messages") or []
        first = messages[0]["content"] if messages else ""
        session = ""
        if isinstance(first, str) and " of session " in first:
            session = first.split(" of session ", 1)[1].split(".", 1)[0]
        results = [
            str(b.get("content"))
            for m in messages if isinstance(m.get("content"), list)
            for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        with self.lock:
            self.seen.append(
                Seen(system, [t["name"] for t in request.get("tools") or []], session, results)
            )
            n = len(self.seen)
            recall = session in self.recall_in and session not in self.recalled
            if recall:
                self.recalled.add(session)
        if recall:
            return BrainReply(content=[_tool_use("recall", {
                "generation": self.recall_gen, "section": "tasks", "ids": ["P1-T001"],
            }, session)])
        if self.lookup_at is not None and n == self.lookup_at:
            return BrainReply(content=[_tool_use("lookup", {"q": "x"}, str(n))])
        return super().respond(request)


def _tool_use(name: str, tool_input: dict[str, Any], salt: str) -> dict[str, Any]:
    digest = hashlib.sha256(f"{name}{salt}".encode()).hexdigest()[:24]
    return {"type": "tool_use", "id": f"toolu_{digest}", "name": name, "input": tool_input}


@activity.defn(name="tool:lookup")
async def wrong_type_lookup(tool_input: dict[str, Any]) -> dict[str, Any]:
    """A user tool whose activity answers the wrong type (an object, not a string):
    decoding it fails the session workflow (a deterministic failure)."""
    return {"not": "a string"}


@contextlib.asynccontextmanager
async def worker(client: Client, task_queue: str, base_url: str) -> AsyncIterator[Worker]:
    model = anthropic.AsyncAnthropic(base_url=base_url, api_key="test-key", max_retries=0)
    config = client.config()
    config["plugins"] = [HandoffPlugin(anthropic_client=model)]
    async with Worker(
        Client(**config), task_queue=task_queue, activities=[wrong_type_lookup],
        max_concurrent_activities=50,
    ) as w:
        yield w


def session_config(**kw: Any) -> SessionConfig:
    kw.setdefault("context_window", WINDOW)
    kw.setdefault("max_tokens", 300)  # room for the reply within the small window
    return SessionConfig(
        system_prompt=SYSTEM, user=USER, user_tools=[LOOKUP], max_generations=60, **kw
    )


async def start(
    client: Client, task_queue: str, n_tasks: int, *, paused: bool = False, **kw: Any
) -> WorkflowHandle[Any, SessionResult]:
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(
            config=session_config(**kw), project=synthetic_project(n_tasks, 2), paused=paused
        ),
        id=f"resume-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
        result_type=SessionResult,
    )


async def resume_cli(
    env: WorkflowEnvironment, old: str, new: str, task_queue: str, *extra: str
) -> Result:
    return await handoff_cli(
        "start", "--resume-from", old, "--id", new, "--task-queue", task_queue,
        "--address", address(env), *extra,
    )


async def runs_of(client: Client, workflow_id: str) -> list[list[Any]]:
    """Each run's history events (every run of the id, continue-as-new chain)."""
    from temporal_handoff.chain import session_chain

    out = []
    for row in await session_chain(client, workflow_id):
        handle = client.get_workflow_handle(workflow_id, run_id=row.run_id)
        out.append([e async for e in handle.fetch_history_events()])
    return out


async def model_calls(client: Client, workflow_id: str) -> tuple[int, int, Counter[str]]:
    """Over every run of the id: call_model completions a workflow task took in, all
    call_model completions (preflight refusals excluded), and how often each task was
    completed by the results taken in."""
    taken = total = 0
    completed: Counter[str] = Counter()
    for events in await runs_of(client, workflow_id):
        names: dict[int, str] = {}
        last_wft = max(
            (e.event_id for e in events
             if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED), default=0,
        )
        for e in events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                names[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            if e.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                continue
            done = e.activity_task_completed_event_attributes
            if names.get(done.scheduled_event_id) != "call_model":
                continue
            resp = (await client.data_converter.decode(done.result.payloads, [ModelResponse]))[0]
            if resp.preflight_refused:
                continue
            total += 1
            if e.event_id < last_wft:
                taken += 1
                completed.update(
                    str(b["input"]["task_id"]) for b in resp.content
                    if b.get("type") == "tool_use" and b.get("name") == "complete_task"
                )
    return taken, total, completed


async def first_input(client: Client, workflow_id: str) -> SessionInput:
    from temporal_handoff.chain import session_chain

    first = (await session_chain(client, workflow_id))[0]
    handle = client.get_workflow_handle(workflow_id, run_id=first.run_id)
    async for e in handle.fetch_history_events():
        payloads = e.workflow_execution_started_event_attributes.input.payloads
        return (await client.data_converter.decode(payloads, [SessionInput]))[0]
    raise AssertionError("no start event")


# ------------------------------------------------------------------ the terminated session
@dataclass
class Terminated:
    old: str
    new: str
    says: list[str]
    result: SessionResult
    resume: Result
    brain: RecordingBrain
    served: int
    old_calls: tuple[int, int, Counter[str]]
    new_calls: tuple[int, int, Counter[str]]
    old_generations: int


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def terminated(env: WorkflowEnvironment, client: Client) -> Terminated:
    """A session terminated (plain `temporal` CLI) mid-turn after a handoff, with
    accepted human messages, then resumed with `handoff start --resume-from`."""
    task_queue = f"tq-resume-{uuid.uuid4().hex[:8]}"
    brain = RecordingBrain(summary_words=120)
    with FakeAnthropicServer(brain=brain, latency_s=0.05) as fake:
        async with worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 20)
            old = handle.id
            says = []
            for i in range(2):
                text = f"operator note {i} for {old}"
                await handle.execute_update("say", SayArgs(text=text), result_type=str)
                says.append(text)
                await wait_status(client, old, lambda s, i=i: s.tasks_done > i, "progress")
            await wait_status(
                client, old, lambda s: s.generation >= 1 and s.tasks_done >= 6,
                "a handoff and six tasks done",
            )
            # Accepted by the run that is terminated: only its history has it.
            text = f"last note for {old}"
            await handle.execute_update("say", SayArgs(text=text), result_type=str)
            says.append(text)
            # Terminate with a model call in flight (the server answers slowly now).
            fake.latency_s = 2.0
            served = len(fake.message_requests())
            await guarded(client, old, _until_more(fake, served), "a model call in flight")
            await temporal_cli(env, "workflow", "terminate", "--workflow-id", old,
                               "--reason", "operator test")
            fake.latency_s = 0.05
            new = f"{old}-resumed"
            brain.recall_in.add(new)
            res = await resume_cli(env, old, new, task_queue)
            assert res.exit_code == 0, res.output
            result = await session_result(client, new)
            served = sum(1 for r in fake.message_requests() if r.status == 200)
    old_runs = await runs_of(client, old)
    return Terminated(
        old=old, new=new, says=says, result=result, resume=res, brain=brain,
        served=served, old_calls=await model_calls(client, old),
        new_calls=await model_calls(client, new), old_generations=len(old_runs),
    )


async def _until_more(fake: FakeAnthropicServer, n: int) -> None:
    while len(fake.message_requests()) <= n:
        await asyncio.sleep(0.02)


async def test_terminated_session_resumes_and_completes_each_task_once(
    client: Client, terminated: Terminated
) -> None:
    t = terminated
    desc = await client.get_workflow_handle(t.old).describe()
    assert desc.status == WorkflowExecutionStatus.TERMINATED
    assert t.resume.stdout.strip() == t.new
    note = " ".join(t.resume.stderr.split())
    print(note)
    assert f"resuming {t.old} run" in note and "(TERMINATED)" in note, note
    assert "history, replayed" in note, note
    r = t.result
    assert r.reason == TerminationReason.TASK_COMPLETED, (r.reason, r.message)
    # Across both sessions: every task completed, each once, at its first attempt...
    assert_each_task_completed_once(r)
    # ...and the model was not made to redo work: each task's complete_task call was
    # applied once over both sessions' histories.
    applied = t.old_calls[2] + t.new_calls[2]
    assert set(applied) == set(r.project.tasks), set(r.project.tasks) - set(applied)
    twice = {task: n for task, n in applied.items() if n != 1}
    assert not twice, f"tasks completed more than once: {twice}"
    # Every accepted human message is in the state exactly once.
    wrong = {s: r.project.human_messages.count(s) for s in t.says}
    assert all(n == 1 for n in wrong.values()), wrong


async def test_ledger_counts_each_model_call_once(terminated: Terminated) -> None:
    t = terminated
    taken = t.old_calls[0] + t.new_calls[0]
    total = t.old_calls[1] + t.new_calls[1]
    print(f"ledger {t.result.ledger.calls} calls; histories {taken} taken in, "
          f"{total} completed; fake server answered {t.served}")
    # Every call a workflow task took in is counted once; never more than were made.
    assert t.result.ledger.calls >= taken
    assert t.result.ledger.calls <= total <= t.served


async def test_resumed_session_inherits_the_config(
    client: Client, terminated: Terminated
) -> None:
    t = terminated
    inp = await first_input(client, t.new)
    assert inp.config.system_prompt == SYSTEM
    assert inp.config.user == USER
    assert inp.config.context_window == WINDOW
    assert [tool.name for tool in inp.config.user_tools] == ["lookup"]
    # What the model was sent in the resumed session.
    after = [s for s in t.brain.seen if s.session == t.new]
    assert after, "no request from the resumed session"
    assert all(s.system.startswith(SYSTEM) for s in after)
    assert all("lookup" in s.tools for s in after)
    assert all("Handoff from your previous generation" in s.system for s in after)


async def test_recall_reaches_the_predecessor_across_workflow_ids(
    client: Client, terminated: Terminated
) -> None:
    t = terminated
    assert t.new in t.brain.recalled, "the brain never recalled"
    replies = [
        text for s in t.brain.seen if s.session == t.new for text in s.tool_results
        if text.startswith(("{", "error"))
    ]
    assert replies, [s.tool_results for s in t.brain.seen if s.session == t.new][:3]
    recall = replies[0]
    assert not recall.startswith("error"), recall
    # Generation 0's tasks as generation 0 left them: P1-T001 exists in the state.
    assert '"P1-T001"' in recall, recall[:300]


async def test_history_links_back_to_the_predecessor(
    env: WorkflowEnvironment, terminated: Terminated
) -> None:
    t = terminated
    res = await handoff_cli("history", t.new, "--json", "--address", address(env))
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    ids = [r["workflow_id"] for r in rows]
    assert ids == [t.old] * t.old_generations + [t.new] * (len(rows) - t.old_generations), ids
    assert [r["generation"] for r in rows] == list(range(len(rows)))
    assert rows[t.old_generations - 1]["termination"] == "TERMINATED"
    first_new = rows[t.old_generations]
    assert first_new["resumed_from"]["workflow_id"] == t.old
    res = await handoff_cli("history", t.new, "--address", address(env))
    assert res.exit_code == 0, res.output
    assert f"resumed from {t.old}" in " ".join(res.stdout.split())


async def test_a_result_without_a_document_resumes_from_its_state(
    client: Client, terminated: Terminated
) -> None:
    """The resumed session completed (TASK_COMPLETED: no final document); resuming it
    again builds the continuation prompt from the result's state, and the lineage
    keeps both sessions' runs."""
    from temporal_handoff.resume import resume_session

    assert terminated.result.final_handoff is None
    again = await resume_session(client, terminated.new, {"model": "claude-opus-4-6"})
    assert "result's state" in again.note, again.note
    inp = again.input
    assert inp.handoff is not None and inp.handoff.prompt
    assert inp.generation == terminated.result.generation + 1
    assert inp.config.model == "claude-opus-4-6" and inp.config.system_prompt == SYSTEM
    assert {r.workflow_id for r in inp.lineage} == {terminated.old, terminated.new}
    assert [r.generation for r in inp.lineage] == list(range(inp.generation))


async def test_a_history_that_does_not_replay_is_detected(
    client: Client, terminated: Terminated
) -> None:
    """Recorded by other code (here: an activity renamed in the history), the replay
    is refused, so the resume falls back to the state it can trust and says so."""
    from temporal_handoff.resume import RunState, replayed_state

    old = terminated.old
    desc = await client.get_workflow_handle(old).describe()
    history = await client.get_workflow_handle(old, run_id=desc.run_id).fetch_history()
    assert isinstance(await replayed_state(client, history), RunState)
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            e.activity_task_scheduled_event_attributes.activity_type.name = "renamed"
            break
    reason = await replayed_state(client, history)
    assert isinstance(reason, str) and reason, reason


# ------------------------------------------------------------------ a failed session
async def test_failed_session_resumes(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    brain = RecordingBrain(lookup_at=5)
    with FakeAnthropicServer(brain=brain, latency_s=0.02) as fake:
        async with worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 10)
            old = handle.id
            await handle.execute_update("say", SayArgs(text="keep going"), result_type=str)

            async def failed() -> None:
                while (await handle.describe()).status != WorkflowExecutionStatus.FAILED:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(failed(), timeout=180)
            new = f"{old}-resumed"
            res = await resume_cli(env, old, new, task_queue)
            assert res.exit_code == 0, res.output
            result = await session_result(client, new)
    note = " ".join(res.stderr.split())
    print(note)
    assert "(FAILED)" in note and "history, replayed" in note, note
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
    assert result.project.human_messages.count("keep going") == 1
    errors = [e.message for e in result.project.errors]
    assert any("session run failed" in m for m in errors), errors
    await assert_no_work_redone(client, old, new, result)


async def assert_no_work_redone(
    client: Client, old: str, new: str, result: SessionResult
) -> None:
    """Each task completed by exactly one applied model call over both sessions, and
    each such call counted once in the ledger."""
    taken_old, total_old, done_old = await model_calls(client, old)
    taken_new, total_new, done_new = await model_calls(client, new)
    applied = done_old + done_new
    assert {t: n for t, n in applied.items() if n != 1} == {}, applied
    assert set(applied) == set(result.project.tasks)
    assert taken_old + taken_new <= result.ledger.calls <= total_old + total_new


# ------------------------------------------------------------------ a timed-out session
async def test_timed_out_session_resumes(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.3) as fake:
        async with worker(client, task_queue, fake.base_url):
            old = f"resume-{uuid.uuid4().hex[:10]}"
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(config=session_config(), project=synthetic_project(40, 2)),
                id=old, task_queue=task_queue, result_type=SessionResult,
                execution_timeout=timedelta(seconds=3),
            )

            async def timed_out() -> None:
                while (await handle.describe()).status != WorkflowExecutionStatus.TIMED_OUT:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(timed_out(), timeout=180)
            fake.latency_s = 0.0
            new = f"{old}-resumed"
            res = await resume_cli(env, old, new, task_queue)
            assert res.exit_code == 0, res.output
            result = await session_result(client, new, cap=90)
    note = " ".join(res.stderr.split())
    print(note)
    assert "(TIMED_OUT)" in note and "history, replayed" in note, note
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
    await assert_no_work_redone(client, old, new, result)


# ------------------------------------------------------------------ running, unknown
async def test_resume_refuses_a_running_session_then_waits_with_wait(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.05) as fake:
        async with worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 8, paused=True)
            old = handle.id
            new = f"{old}-resumed"
            try:
                res = await asyncio.wait_for(resume_cli(env, old, new, task_queue), timeout=120)
            except TimeoutError:
                await handle.terminate("the resume hung on a running session")
                raise AssertionError("`start --resume-from` hung on a running session") from None
            assert_one_error(res, "still running", "--wait", f"handoff abort {old}", code=2)
            waiting = asyncio.ensure_future(resume_cli(env, old, new, task_queue, "--wait"))
            await handle.signal("abort")
            res = await asyncio.wait_for(waiting, timeout=180)
            assert res.exit_code == 0, res.output
            result = await session_result(client, new)
    assert "(USER_ABORT)" in " ".join(res.stderr.split())
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 8


async def test_resume_errors_are_one_line(env: WorkflowEnvironment) -> None:
    res = await handoff_cli(
        "start", "--resume-from", f"no-such-{uuid.uuid4().hex[:6]}", "--address", address(env)
    )
    assert_one_error(res, "resume_from: unknown workflow", code=2)
    res = await handoff_cli(
        "start", "--resume-from", "x", "--config", '{"no_such_key": 1}',
        "--address", address(env),
    )
    assert_one_error(res, "no_such_key", code=2)
    res = await handoff_cli("start", "--wait", "--address", address(env))
    assert_one_error(res, "--wait needs --resume-from", code=2)


def test_resume_input_keeps_the_original_config() -> None:
    from temporal_handoff.resume import merge_config
    from temporal_handoff.schemas.handoff import HandoffPayload
    from temporal_handoff.schemas.tokens import TokenLedger

    payload = HandoffPayload(prompt="p", prompt_tokens=1, level="standard",
                             requested_level="standard", budget=1200)
    result = SessionResult(
        session_id="s", reason=TerminationReason.USER_ABORT, generation=2,
        project=synthetic_project(3, 1), ledger=TokenLedger(), final_handoff=payload,
    )
    original = session_config()
    assert result.resume_input(original=original).config == original
    merged = merge_config(original, {"model": "claude-opus-4-6"})
    assert merged.model == "claude-opus-4-6" and merged.system_prompt == SYSTEM
    assert result.resume_input(merged, original=original).config == merged
