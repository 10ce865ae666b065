"""500 human commands while a session hands off repeatedly: each applied exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

from temporalio.client import Client, WorkflowUpdateFailedError

from temporal_handoff.commands import send_update
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import DecideArgs, SayArgs, SessionResult, SessionStatus
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session

SAYS = 430
PAUSE_PAIRS = 40


async def test_500_mixed_commands_across_handoffs(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(tasks_per_turn=1, blocker_every=7, summary_words=30)
    sent = Counter()
    decided: list[str] = []
    with FakeAnthropicServer(brain=brain, latency_s=0.01) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(90, 3), prefix="storm",
                context_window=4_000, max_tokens=300, max_generations=100,
            )
            result_task = asyncio.ensure_future(
                client.get_workflow_handle(handle.id, result_type=SessionResult).result()
            )

            async def say(i: int) -> None:
                # A full inbox of human text is refused with its reason ("wait for the
                # next turn"): a polite client waits and sends it again.
                while True:
                    try:
                        await send_update(handle, "say", SayArgs(text=f"note #{i}"))
                        return
                    except WorkflowUpdateFailedError as err:
                        if "human text" not in str(err.cause):
                            raise
                        await asyncio.sleep(0.2)

            async def says() -> None:
                for batch in range(0, SAYS, 10):
                    await asyncio.gather(*(say(i) for i in range(batch, min(batch + 10, SAYS))))
                    sent["say"] += min(10, SAYS - batch)

            async def pauses() -> None:
                for _ in range(PAUSE_PAIRS):
                    await handle.signal("pause")
                    await asyncio.sleep(0.02)
                    await handle.signal("resume")
                    sent["pause"] += 1
                    sent["resume"] += 1
                    await asyncio.sleep(0.05)

            async def decisions() -> None:
                while not result_task.done():
                    st = await handle.query("status", result_type=SessionStatus)
                    for b in st.open_blockers:
                        try:
                            await send_update(
                                handle, "decide",
                                DecideArgs(blocker_id=b["id"], decision=f"ok {b['id']}"),
                            )
                            decided.append(b["id"])
                        except WorkflowUpdateFailedError:
                            pass  # resolved between our query and update
                    await asyncio.sleep(0.02)

            await asyncio.gather(says(), pauses(), decisions())
            result = await result_task
        requests = fake.message_requests()

    total = sent["say"] + sent["pause"] + sent["resume"] + len(decided)
    assert total >= 500, total
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 3  # it handed off repeatedly meanwhile
    assert result.project.completed_count == 90
    # Every message exactly once in the final state.
    counts = Counter(m for m in result.project.human_messages if m.startswith("note #"))
    assert counts == Counter({f"note #{i}": 1 for i in range(SAYS)})
    # Every decision exactly once, each on a real blocker, all blockers resolved.
    human = Counter(d.blocker_id for d in result.project.decisions if d.by.startswith("human"))
    assert human == Counter(decided)
    assert all(b.status == "resolved" for b in result.project.blockers)
    # 40 pause/resume pairs: a paused session never finishes, so completion shows the
    # last command applied was a resume.
    assert sent["pause"] == sent["resume"] == PAUSE_PAIRS
    assert all(r.status == 200 for r in requests)
