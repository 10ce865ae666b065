"""Record the histories replayed in CI (`tests/test_replay.py`).

    .venv/bin/python -m tests.record_histories v1     # writes tests/histories/v1/

Runs one session on a fresh dev server against the fake model: ≥ 2 handoffs, human
commands (say, decide, pause/resume), a model call that fails once and is retried,
(from v2) a non-retryable model error that repeats after the human decides, and (from v3)
signals sent the wrong way (a `say` signal, an unknown name, `pause` with input), and
(from v5) the agent's note at each handoff. Writes every run's history and every handoff
child's history as JSON.

    .venv/bin/python -m tests.record_histories free-form-v1

records a free-form session instead (a goal and no tasks, patch free-form-1): a
conversation with a user tool, a human decision, pause/resume, a retried model call,
two handoffs (`flush` while it waits for the human) and `finish`. `free-form-v2` is the
same session recorded with the prompt-cache TTL policy (patch cache-ttl-auto-1: its
waits are measured, each call's TTL chosen and shown in the activity summary).
Re-record only on purpose: a replay failure after a code change means the change is
not deterministic-compatible with running sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from temporal_handoff.chain import session_chain
from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import DecideArgs, SayArgs, SessionResult, SessionStatus
from temporal_handoff.testing import (
    ConversationBrain,
    Exchange,
    FakeAnthropicServer,
    Fault,
    ScriptedAgentBrain,
)
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin, UserTool
from tests.conftest import running_worker
from tests.helpers import start_session

HISTORIES = Path(__file__).parent / "histories"
OLD = ("v0", "v1", "v2", "v3", "v4")
"""Versions recorded before the handoff note."""


async def main(version: str) -> None:
    out = HISTORIES / version
    out.mkdir(parents=True, exist_ok=True)
    env = await start_dev_server()
    config = env.client.config()
    config["plugins"] = [HandoffPlugin()]
    client = Client(**config)
    if version.startswith("free-form"):
        try:
            handle, result = await free_form_session(client)
            await write_chain(client, handle.id, out, result)
        finally:
            await env.shutdown()
        return
    brain = ScriptedAgentBrain(tasks_per_turn=2, blocker_every=9)
    try:
        with FakeAnthropicServer(brain=brain, latency_s=0.01) as fake:
            fake.add_fault(Fault(status=529, times=1, retry_after=0.2))
            # The same non-retryable error twice on one turn: two distinct blockers.
            fake.add_fault(Fault(status=401, times=2, path="/v1/messages"))
            async with running_worker(client, "record", fake.base_url):
                # From v5: handoff notes (patch handoff-note-1) small enough for this
                # window, and the HandoffProbeMisses search attribute.
                notes = {} if version in OLD else {"handoff_note_max_tokens": 60}
                handle = await start_session(
                    client, "record", synthetic_project(40, 3), prefix="recorded",
                    context_window=3_500, max_tokens=300, **notes,
                )
                await handle.execute_update("say", SayArgs(text="prefer small steps"))
                await handle.signal("pause")
                await asyncio.sleep(0.3)
                await handle.signal("resume")
                if version not in ("v0", "v1", "v2"):
                    # Commands sent the wrong way: visible rejections (from v3).
                    await handle.signal("say", SayArgs(text="sent as a signal"))
                    await handle.signal("no_such_command")
                    await handle.signal("pause", "now")
                result_task = asyncio.ensure_future(
                    client.get_workflow_handle(handle.id, result_type=SessionResult).result()
                )
                while not result_task.done():
                    st = await handle.query("status", result_type=SessionStatus)
                    for b in st.open_blockers:
                        # A status read just before the previous decide landed can list a
                        # blocker already resolved: that refusal is expected here.
                        with contextlib.suppress(WorkflowUpdateFailedError):
                            await handle.execute_update(
                                "decide", DecideArgs(blocker_id=b["id"], decision="approved")
                            )
                    await asyncio.sleep(0.05)
                result = result_task.result()
        await write_chain(client, handle.id, out, result)
    finally:
        await env.shutdown()


async def write_chain(client: Client, workflow_id: str, out: Path, result: SessionResult) -> None:
    """Every run's history and every handoff child's history, and a README.json."""
    handle = client.get_workflow_handle(workflow_id)
    chain = await session_chain(client, handle.id)
    assert len(chain) >= 3, "need at least two handoffs"
    for f in out.glob("*.json"):
        f.unlink()
    for row in chain:
        h = client.get_workflow_handle(handle.id, run_id=row.run_id)
        history = await h.fetch_history()
        (out / f"session-gen{row.generation}.json").write_text(history.to_json())
        if row.handoff_child:
            child = await client.get_workflow_handle(row.handoff_child).fetch_history()
            (out / f"handoff-gen{row.generation}.json").write_text(child.to_json())
    meta = {
        "workflow_id": handle.id,
        "generations": len(chain),
        "reason": result.reason.value,
        "decisions": len(result.project.decisions),
    }
    (out / "README.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(meta)


LOOKUP = ToolSpec(
    name="lookup_order", description="Look up an order by id",
    input_schema={"type": "object", "properties": {"order_id": {"type": "string"}}},
)
CHAT = [
    Exchange(
        when="where is my order", tool="lookup_order", tool_input={"order_id": "A-1"},
        note="A-1 shipped with DHL.", reply="Your order A-1: {result}.",
    ),
    Exchange(when="decision on blocker", reply="Refund approved."),
    Exchange(
        when="refund", tool="add_blocker",
        tool_input={"blocker_id": "REFUND", "blocker_type": "human_decision",
                    "description": "refund A-1?"},
        reply="(waits for the decision)",
    ),
    Exchange(when="thanks", reply="Goodbye.", finish="A-1 shipped; refund approved."),
]


async def free_form_session(client: Client) -> tuple[WorkflowHandle[Any, SessionResult], SessionResult]:
    async def lookup(args: dict[str, Any]) -> str:
        return "shipped with DHL"

    async def until(what: Callable[[SessionStatus], bool]) -> SessionStatus:
        while True:
            with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                st = await latest.query("status", result_type=SessionStatus)
                if what(st):
                    return st
            await asyncio.sleep(0.05)

    with FakeAnthropicServer(brain=ConversationBrain(CHAT), latency_s=0.01) as fake:
        fake.add_fault(Fault(status=529, times=1, retry_after=0.2))
        async with running_worker(
            client, "record-free", fake.base_url, tools=[UserTool(spec=LOOKUP, fn=lookup)]
        ):
            handle = await start_session(
                client, "record-free", ProjectState(goal="answer about order A-1"),
                prefix="recorded-free", user_tools=[LOOKUP],
            )
            latest = client.get_workflow_handle(handle.id)
            await until(lambda s: s.awaiting_input)
            await latest.execute_update("say", SayArgs(text="Where is my order A-1?"))
            await until(lambda s: s.awaiting_input and s.health.model_calls >= 3)
            await latest.signal("pause")
            await until(lambda s: s.paused)
            await latest.signal("resume")
            await latest.signal("flush")
            await until(lambda s: s.generation == 1 and s.awaiting_input)
            await latest.execute_update("say", SayArgs(text="I want a refund"))
            await until(lambda s: bool(s.open_blockers))
            await latest.execute_update("decide", DecideArgs(blocker_id="REFUND", decision="yes"))
            await until(lambda s: s.awaiting_input and not s.open_blockers)
            await latest.signal("flush")
            await until(lambda s: s.generation == 2 and s.awaiting_input)
            await latest.execute_update("say", SayArgs(text="thanks"))
            result = await client.get_workflow_handle(handle.id, result_type=SessionResult).result()
    assert result.reason.value == "FINISHED", result
    return handle, result


if __name__ == "__main__":
    import sys

    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "current"))
