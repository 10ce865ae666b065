"""Worker processes killed with SIGKILL mid-session, and the dev server restarted."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.chain import session_chain
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import DecideArgs, SayArgs, SessionResult, SessionStatus
from temporal_handoff.schemas.tokens import TokenUsage
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin
from tests.conftest import running_worker
from tests.helpers import start_session

ROOT = Path(__file__).resolve().parent.parent
KILLS = 10


def spawn_worker(address: str, task_queue: str, base_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ANTHROPIC_BASE_URL=base_url, ANTHROPIC_API_KEY="test-key")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", address, task_queue],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def test_sigkill_workers_ten_times(env: WorkflowEnvironment, client: Client) -> None:
    address = env.client.service_client.config.target_host
    task_queue = f"crash-{uuid.uuid4()}"
    rng = random.Random(42)
    brain = ScriptedAgentBrain(tasks_per_turn=1, blocker_every=11)
    decided: list[str] = []
    kills = 0
    with FakeAnthropicServer(brain=brain, latency_s=0.05) as fake:
        handle = await start_session(
            client, task_queue, synthetic_project(70, 3), prefix="crash",
            context_window=4_000, max_tokens=300, model_call_timeout_s=2.0, model_retry_initial_s=0.1,
            task_timeout=timedelta(seconds=2),
        )
        result_task = asyncio.ensure_future(
            client.get_workflow_handle(handle.id, result_type=SessionResult).result()
        )
        said = False
        deadline = asyncio.get_running_loop().time() + 240
        while not result_task.done():
            assert asyncio.get_running_loop().time() < deadline, "session did not finish"
            proc = spawn_worker(address, task_queue, fake.base_url)
            # Kill after a random 1-2.5 s, or after the session ends once we have
            # killed enough.
            lifetime = rng.uniform(1.0, 2.5) if kills < KILLS else 240.0
            until = asyncio.get_running_loop().time() + lifetime
            try:
                while asyncio.get_running_loop().time() < until and not result_task.done():
                    try:
                        if not said:
                            await asyncio.wait_for(
                                handle.execute_update("say", SayArgs(text="keep the API stable")),
                                3,
                            )
                            said = True
                        st = await handle.query("status", result_type=SessionStatus)
                        for b in st.open_blockers:
                            await asyncio.wait_for(
                                handle.execute_update(
                                    "decide", DecideArgs(blocker_id=b["id"], decision="yes")
                                ),
                                3,
                            )
                            decided.append(b["id"])
                    except Exception:
                        pass
                    await asyncio.sleep(0.1)
            finally:
                if not result_task.done():
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                else:
                    proc.terminate()
                proc.wait(timeout=30)
        result = await result_task

    assert kills >= KILLS
    assert result.reason == TerminationReason.TASK_COMPLETED
    project = result.project
    assert project.completed_count == 70
    assert project.duplicate_completions == 0  # no task completed twice
    assert result.health.tasks_completed == 70
    assert "keep the API stable" in project.human_messages  # no human command lost
    human = {d.blocker_id for d in project.decisions if d.by.startswith("human")}
    assert set(decided) <= human
    assert all(b.status == "resolved" for b in project.blockers)
    # Token totals equal the usage returned by the model calls that completed.
    chain = await session_chain(client, handle.id)
    completed = sum((row.usage for row in chain), TokenUsage())
    assert result.ledger.total_tokens == completed.total
    # (The handoff note's turns are calls too, counted apart from the conversation's.)
    assert result.ledger.calls == sum(row.turns + row.note_calls for row in chain)
    assert result.ledger.note_calls == sum(row.note_calls for row in chain)
    # What the fake answered (and the API would bill) vs the ledger's billed line: a
    # random kill can land between an answer and its usage heartbeat (never counted
    # twice, so billed ≤ answered); tests/test_billed_usage.py pins the equality.
    answered = [r.usage or {} for r in fake.requests if r.path == "/v1/messages" and r.answered]
    answered_total = sum(sum(u.values()) for u in answered)
    billed = result.ledger.billed_tokens
    assert billed <= answered_total
    print(
        f"\nRELIABILITY crashes: {kills} SIGKILLs survived; {project.completed_count} tasks, "
        f"0 completed twice, {len(decided)} decisions + 1 message kept, "
        f"{result.ledger.total_tokens} tokens = sum of completed calls; billed {billed} "
        f"({result.ledger.lost_answers} lost answers) of {answered_total} answered "
        f"in {len(answered)} answers"
    )


async def test_dev_server_restart_mid_session(tmp_path: Path) -> None:
    db = str(tmp_path / "temporal.db")
    port = 20000 + random.Random().randrange(20000)
    env = await start_dev_server(db_file=db, port=port)
    task_queue = f"restart-{uuid.uuid4()}"
    try:
        config = env.client.config()
        config["plugins"] = [HandoffPlugin()]
        client = Client(**config)
        with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.05) as fake:
            handle = await start_session(
                client, task_queue, synthetic_project(40, 2), prefix="restart",
                context_window=4_000, max_tokens=300, model_retry_initial_s=0.1,
            )
            async with running_worker(client, task_queue, fake.base_url):
                while (await handle.query("status", result_type=SessionStatus)).tasks_done < 5:
                    await asyncio.sleep(0.05)
            await env.shutdown()  # the server goes away mid-session ...
            env = await start_dev_server(db_file=db, port=port)  # ... and comes back
            config = env.client.config()
            config["plugins"] = [HandoffPlugin()]
            client = Client(**config)
            async with running_worker(client, task_queue, fake.base_url):
                result = await client.get_workflow_handle(
                    handle.id, result_type=SessionResult
                ).result()
    finally:
        await env.shutdown()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 40
    assert result.project.duplicate_completions == 0
