"""`handoff worker` processes on one dev server: scaling out, a killed worker, and the
SIGTERM drain.

Each worker is a real `handoff worker` subprocess (connection from the TEMPORAL_*
environment, model calls to the loopback fake Messages API via ANTHROPIC_BASE_URL,
conversation content in a store directory shared by all of them). The test process
starts the sessions and reads results and histories back with the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import DescribeTaskQueueMode, EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage

HANDOFF = str(Path(sys.executable).with_name("handoff"))
NO_HANDOFFS = 200_000  # context window: these tests are about workers, not handoffs


@dataclass
class WorkerProc:
    identity: str
    proc: subprocess.Popen[bytes]
    log: Path
    killed_at: datetime | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """`handoff worker` subprocesses sharing a task queue and a conversation store."""

    env: WorkflowEnvironment
    task_queue: str
    base_url: str
    store: Path
    tmp: Path
    workers: dict[str, WorkerProc] = field(default_factory=dict)
    _polling: set[str] = field(default_factory=set)

    def spawn(self, identity: str, *args: str) -> WorkerProc:
        log = self.tmp / f"{identity}.log"
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("TEMPORAL_", "HANDOFF_", "ANTHROPIC_"))
        }
        env.update(
            TEMPORAL_ADDRESS=self.env.client.service_client.config.target_host,
            TEMPORAL_NAMESPACE=self.env.client.namespace,
            HANDOFF_TASK_QUEUE=self.task_queue,
            HANDOFF_STORAGE_DIR=str(self.store),
            ANTHROPIC_BASE_URL=self.base_url,
            ANTHROPIC_API_KEY="test-key",
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [HANDOFF, "worker", "--identity", identity, *args],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        w = WorkerProc(identity, proc, log)
        self.workers[identity] = w
        return w

    async def pollers(self) -> set[str]:
        """Identities seen polling both the workflow and the activity task queue.

        Enhanced mode asks every partition of the task queue (a poller waiting on a
        child partition is not reported by the root partition's legacy answer).
        """
        try:
            resp = await self.env.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self.env.client.namespace,
                    task_queue=TaskQueue(name=self.task_queue),
                    api_mode=DescribeTaskQueueMode.DESCRIBE_TASK_QUEUE_MODE_ENHANCED,
                    report_pollers=True,
                    task_queue_types=[TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
                )
            )
        except RPCError as err:
            # Under load the dev server sometimes cancels the partition fan-out
            # ("operation was canceled"): no answer this time, ask again.
            if err.status not in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
                raise
            return self._polling
        seen: dict[int, set[str]] = {}
        for info in resp.versions_info.values():
            for kind, by_type in info.types_info.items():
                seen.setdefault(kind, set()).update(p.identity for p in by_type.pollers)
        both = [
            seen.get(TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, set()),
            seen.get(TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, set()),
        ]
        self._polling |= both[0] & both[1]
        return self._polling

    async def wait_polling(self, *identities: str, timeout: float = 240.0) -> None:
        """Until every worker polls; the bound only catches a worker that never starts
        (an exited one fails at once), so it is generous for a loaded 2-core machine."""
        deadline = time.monotonic() + timeout
        while not set(identities) <= (seen := await self.pollers()):
            for i in identities:
                w = self.workers[i]
                assert w.proc.poll() is None, f"{i} exited early:\n{w.output()}"
            logs = "\n".join(f"--- {i}\n{self.workers[i].output()}" for i in identities)
            assert time.monotonic() < deadline, f"not polling: {identities}, seen {seen}\n{logs}"
            await asyncio.sleep(0.2)

    def stop_all(self) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(timeout=10)


@pytest.fixture
def fake_brain() -> ScriptedAgentBrain:
    return ScriptedAgentBrain(tasks_per_turn=1, decision_every=0)


@contextlib.asynccontextmanager
async def cluster(
    env: WorkflowEnvironment, tmp: Path, fake: FakeAnthropicServer
) -> AsyncIterator[tuple[Cluster, Client]]:
    store = tmp / "store"
    c = Cluster(env, f"tq-{uuid.uuid4()}", fake.base_url, store, tmp)
    config = env.client.config()
    config["plugins"] = [HandoffPlugin(storage=external_storage(store))]
    try:
        yield c, Client(**config)
    finally:
        c.stop_all()


async def start_sessions(
    client: Client, task_queue: str, n: int, tasks: int, prefix: str, **cfg: object
) -> list[WorkflowHandle[object, SessionResult]]:
    config = SessionConfig(context_window=NO_HANDOFFS, **cfg)  # type: ignore[arg-type]
    return [
        await client.start_workflow(
            "AgentSessionWorkflow",
            SessionInput(config=config, project=synthetic_project(tasks, 2, seed=i)),
            id=f"{prefix}-{i:02d}-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            result_type=SessionResult,
        )
        for i in range(n)
    ]


@dataclass
class Attempt:
    workflow_id: str
    activity: str
    identity: str
    attempt: int
    started: datetime
    failure_type: str = ""


async def activity_attempts(client: Client, workflow_id: str) -> list[Attempt]:
    """Every activity attempt that reached history (started events), with its worker."""
    out: list[Attempt] = []
    scheduled: dict[int, str] = {}
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = event.activity_task_started_event_attributes
            failure = a.last_failure.application_failure_info.type if a.HasField("last_failure") else ""
            out.append(
                Attempt(
                    workflow_id, scheduled[a.scheduled_event_id], a.identity, a.attempt,
                    event.event_time.ToDatetime(tzinfo=UTC), failure,
                )
            )
    return out


def in_flight(fake: FakeAnthropicServer) -> list[object]:
    return [r for r in fake.message_requests() if r.status is None]


def ok_calls(fake: FakeAnthropicServer) -> Counter[str]:
    return Counter(
        (r.metadata or {}).get("user_id", "") for r in fake.message_requests() if r.status == 200
    )


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def assert_completed(results: list[SessionResult]) -> None:
    for r in results:
        assert r.reason == TerminationReason.TASK_COMPLETED, (r.session_id, r.reason, r.message)
        assert r.project.completed_count == len(r.project.tasks)
        assert r.project.duplicate_completions == 0


# ------------------------------------------------------------------------- tests
async def test_three_workers_thirty_sessions_one_killed(
    env: WorkflowEnvironment, tmp_path: Path, fake_brain: ScriptedAgentBrain
) -> None:
    with FakeAnthropicServer(brain=fake_brain, latency_s=0.25) as fake:
        async with cluster(env, tmp_path, fake) as (c, client):
            for name in ("w1", "w2", "w3"):
                c.spawn(name)
            await c.wait_polling("w1", "w2", "w3")
            handles = await start_sessions(
                client, c.task_queue, 30, 8, "multi",
                model_call_timeout_s=4.0, model_retry_initial_s=0.1,
            )
            # Mid-run: a third of the sessions' model calls are done.
            await wait_for(lambda: sum(ok_calls(fake).values()) >= 90, 60, "90 model calls")
            victim = c.workers["w1"]
            victim.proc.kill()  # SIGKILL: no drain, its in-flight work times out
            victim.killed_at = datetime.now(UTC)
            victim.proc.wait(timeout=10)
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=90
            )
            assert all(c.workers[w].proc.poll() is None for w in ("w2", "w3"))
            attempts = [a for h in handles for a in await activity_attempts(client, h.id)]

    assert len(results) == 30
    assert_completed(results)
    killed = victim.killed_at
    assert killed is not None
    before = Counter(a.identity for a in attempts if a.started < killed)
    after = Counter(a.identity for a in attempts if a.started >= killed)
    # All three shared the work before the kill ...
    assert set(before) == {"w1", "w2", "w3"}, before
    assert min(before.values()) >= 0.15 * sum(before.values()), before
    # ... and afterwards the two survivors did all of it, each a fair share.
    assert set(after) == {"w2", "w3"}, after
    assert min(after.values()) >= 0.25 * sum(after.values()), after
    # Sessions w1 was working on were finished by the others.
    w1_sessions = {a.workflow_id for a in attempts if a.identity == "w1"}
    resumed = {a.workflow_id for a in attempts if a.started >= killed and a.workflow_id in w1_sessions}
    assert len(resumed) >= 5
    # The worker started from the CLI logged its configuration.
    assert "polling task queue " + c.task_queue in c.workers["w2"].output()


async def test_sigterm_drains_in_flight_activities(
    env: WorkflowEnvironment, tmp_path: Path, fake_brain: ScriptedAgentBrain
) -> None:
    with FakeAnthropicServer(brain=fake_brain, latency_s=1.5) as fake:
        async with cluster(env, tmp_path, fake) as (c, client):
            health = tmp_path / "w1.alive"
            w1 = c.spawn("w1", "--graceful-shutdown-s", "30", "--health-file", str(health))
            await c.wait_polling("w1")
            assert health.exists()
            handles = await start_sessions(
                client, c.task_queue, 6, 4, "drain", model_call_timeout_s=30.0,
            )
            # Wait until every session has a model call in flight, mid-session.
            await wait_for(
                lambda: sum(ok_calls(fake).values()) >= 6 and len(in_flight(fake)) >= 6,
                60, "6 model calls in flight",
            )
            pending = {r.request_id for r in in_flight(fake)}  # type: ignore[attr-defined]
            t_term = datetime.now(UTC)
            w1.proc.send_signal(signal.SIGTERM)
            c.spawn("w2")
            rc = await asyncio.to_thread(w1.proc.wait, 30)
            drained_at = datetime.now(UTC)
            by_id = {r.request_id: r for r in fake.message_requests()}
            # w1 finished every call it had in flight before exiting (the fake server
            # answered them all) and exited 0, with its health file removed.
            assert rc == 0, w1.output()
            assert all(by_id[i].status == 200 for i in pending)
            assert not health.exists()
            stopped = re.search(r"(\d+) activit(?:y|ies) finished during shutdown, (\d+) handed back", w1.output())
            assert stopped, w1.output()
            assert int(stopped[1]) >= len(pending) and int(stopped[2]) == 0, w1.output()
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=60
            )
            attempts = {h.id: await activity_attempts(client, h.id) for h in handles}

    assert_completed(results)
    calls = ok_calls(fake)
    for result in results:
        sid = result.session_id
        # No attempt lost or counted twice: every model call the fake server answered
        # is in the ledger exactly once, and no call_model needed a second attempt.
        assert calls[sid] == result.ledger.calls > 0, sid
        model = [a for a in attempts[sid] if a.activity == "call_model"]
        assert len(model) == result.ledger.calls
        assert all(a.attempt == 1 for a in model), model
        # w1 ran the calls in flight at SIGTERM to completion; w2 took over after.
        assert any(a.identity == "w1" for a in model)
        assert any(a.identity == "w2" and a.started > t_term for a in model)
        assert not any(a.identity == "w1" and a.started > drained_at for a in model)


async def test_sigterm_hands_back_what_cannot_finish(
    env: WorkflowEnvironment, tmp_path: Path, fake_brain: ScriptedAgentBrain
) -> None:
    with FakeAnthropicServer(brain=fake_brain, latency_s=30.0) as fake:
        async with cluster(env, tmp_path, fake) as (c, client):
            w1 = c.spawn("w1", "--graceful-shutdown-s", "0.5")
            await c.wait_polling("w1")
            handles = await start_sessions(
                client, c.task_queue, 4, 2, "handback",
                model_call_timeout_s=30.0, model_retry_initial_s=0.1,
            )
            # Every session's first call is in flight on w1 (and slow); w2 joins.
            await wait_for(lambda: len(in_flight(fake)) >= 4, 30, "4 model calls in flight")
            c.spawn("w2")
            await c.wait_polling("w2")
            fake.latency_s = 0.05
            w1.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(w1.proc.wait, 20)
            assert rc == 0, w1.output()
            assert "0 activities finished during shutdown, 4 handed back" in w1.output(), w1.output()
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=60
            )
            attempts = [a for h in handles for a in await activity_attempts(client, h.id)]

    assert_completed(results)
    # Each call cut short by the shutdown was retried at once by w2 (not after its
    # 30 s timeout): attempt 2, last failure WorkerShutdown.
    retried = [a for a in attempts if a.activity == "call_model" and a.attempt > 1]
    assert retried and all(a.failure_type == "WorkerShutdown" for a in retried), retried
    assert {a.identity for a in retried} == {"w2"}
    assert {a.workflow_id for a in retried} == {h.id for h in handles}


def test_worker_cli_reports_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.prod]\naddress = "127.0.0.1:1"\n')
    env = {**os.environ, "TEMPORAL_CONFIG_FILE": str(config)}
    proc = subprocess.run(
        [HANDOFF, "worker", "--profile", "nope"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Profile 'nope' not found" in proc.stderr and "Traceback" not in proc.stderr
