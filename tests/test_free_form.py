"""A free-form session end to end: a goal and no tasks, a scripted conversational agent
with a user tool, two handoffs, `finish`; every generation's replies read back through
the `transcript` query and `handoff transcript`, answers through `handoff say --wait`.

Real Temporal dev server, real worker and `anthropic` client, the strict fake Messages
API; conversation payloads in the payload store (the CLI reads them from there).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from temporal_handoff import (
    ProjectState,
    SessionResult,
    ToolSpec,
    UserTool,
    synthetic_project,
    transcripts,
)
from temporal_handoff.cli import app
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.transcript import TranscriptEntry, TranscriptPage, TranscriptQuery
from temporal_handoff.testing import (
    BrainReply,
    ConversationBrain,
    EchoBrain,
    Exchange,
    FakeAnthropicServer,
)
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage
from tests.conftest import running_worker
from tests.helpers import start_session
from tests.waits import wait_status

runner = CliRunner()
GOAL = "Answer the customer's questions about order A-1"

LOOKUP = ToolSpec(
    name="lookup_order",
    description="Look up an order by id: status, carrier, ship date.",
    input_schema={
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
)

EXCHANGES = [
    Exchange(
        when="where is my order",
        tool="lookup_order",
        tool_input={"order_id": "A-1"},
        note="Order A-1 shipped with DHL on 2026-11-30.",
        reply="Your order A-1: {result}.",
    ),
    Exchange(
        when="change the address",
        reply="A shipped parcel's address cannot be changed; I can open a return instead.",
    ),
    Exchange(
        when="decision on blocker `REFUND-A-1`",
        reply="Your refund for A-1 is approved; you will get an email.",
    ),
    Exchange(
        when="refund",
        tool="add_blocker",
        tool_input={
            "blocker_id": "REFUND-A-1", "blocker_type": "human_decision",
            "description": "The customer asks for a refund of A-1: approve?",
        },
        reply="(never sent: the session waits for the decision)",
    ),
    Exchange(
        when="thanks",
        reply="Glad I could help. Closing this conversation.",
        finish="Order A-1 shipped with DHL; the address cannot change after shipping.",
    ),
]


class Recording:
    """The conversational agent, keeping the system prompt of every request."""

    def __init__(self, brain: ConversationBrain) -> None:
        self.brain = brain
        self.systems: list[str] = []

    def respond(self, request: dict[str, Any]) -> BrainReply:
        self.systems.append("\n".join(b["text"] for b in request.get("system") or []))
        return self.brain.respond(request)


async def cli(store: Path, *args: str) -> Result:
    """The CLI in a thread (its commands run their own event loop), reading the store."""
    return await asyncio.to_thread(
        runner.invoke, app, list(args), env={"HANDOFF_STORAGE_DIR": str(store)}
    )


async def collect(entries: AsyncIterator[TranscriptEntry]) -> list[TranscriptEntry]:
    return [e async for e in entries]


async def page(client: Client, wid: str) -> TranscriptPage:
    handle = client.get_workflow_handle(wid)
    return await handle.query("transcript", TranscriptQuery(limit=500), result_type=TranscriptPage)


async def handed_off_and_waiting(client: Client, wid: str, generation: int) -> None:
    await client.get_workflow_handle(wid).signal("flush")
    await wait_status(
        client, wid, lambda s: s.generation == generation and s.awaiting_input,
        f"generation {generation} to wait for the human",
    )


async def test_free_form_session_converses_hands_off_and_finishes(
    env: WorkflowEnvironment, client: Client, tmp_path: Path
) -> None:
    address = env.client.service_client.config.target_host
    store = tmp_path / "payloads"
    storage = external_storage(store)
    starter = Client(**{**client.config(), "plugins": [HandoffPlugin(storage=storage)]})
    lookups: list[dict[str, Any]] = []

    async def lookup_order(args: dict[str, Any]) -> str:
        lookups.append(args)
        return f"shipped 2026-11-30 with DHL (order {args['order_id']})"

    task_queue = f"tq-free-{uuid.uuid4()}"
    wid = f"free-form-{uuid.uuid4()}"
    agent = Recording(ConversationBrain(EXCHANGES))
    with FakeAnthropicServer(brain=agent) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, storage=storage,
            tools=[UserTool(spec=LOOKUP, fn=lookup_order)],
        ):
            started = await cli(
                store, "start", "--goal", GOAL, "--id", wid, "--task-queue", task_queue,
                "--config", json.dumps({"user_tools": [LOOKUP.model_dump()]}),
                "--address", address,
            )
            assert started.exit_code == 0 and started.stdout.strip() == wid, started.output
            handle = starter.get_workflow_handle(wid, result_type=SessionResult)
            # What `transcript --follow` prints: every entry as it comes, across
            # handoffs, until the session closes.
            following = asyncio.ensure_future(collect(transcripts.follow(starter, wid, set())))
            # Generation 0 greets and waits for the human, visibly.
            st = await wait_status(starter, wid, lambda s: s.awaiting_input, "the greeting")
            assert st.lifecycle == LifecycleState.AWAITING_INPUT
            assert st.health.model_calls == 1

            said = await cli(store, "say", wid, "Where is my order A-1?", "--wait", "--address", address)
            assert said.exit_code == 0, said.output
            assert said.stdout.strip() == "Your order A-1: shipped 2026-11-30 with DHL (order A-1)."
            assert lookups == [{"order_id": "A-1"}]
            gen0 = await page(starter, wid)
            assert [e.role for e in gen0.entries] == [
                "session", "agent", "human", "agent", "tool", "tool", "agent",
            ]
            assert gen0.entries[3].tool_calls[0].startswith("lookup_order ")
            assert gen0.awaiting_input

            await handed_off_and_waiting(starter, wid, 1)
            answer = await cli(store, "say", wid, "Can I change the address?", "--wait", "--address", address)
            assert answer.exit_code == 0, answer.output
            assert "cannot be changed" in answer.stdout
            gen1 = await page(starter, wid)
            assert gen1.generation == 1
            assert [e.text for e in gen1.entries if e.role == "agent"][-1] == answer.stdout.strip()

            # A question that needs a human decision: --wait returns, naming the blocker.
            asked = await cli(store, "say", wid, "I want a refund", "--wait", "--address", address)
            assert asked.exit_code == 0, asked.output
            assert "waiting for a human decision on REFUND-A-1" in asked.stderr
            decided = await cli(store, "decide", wid, "REFUND-A-1", "approve", "--address", address)
            assert decided.exit_code == 0, decided.output
            st = await wait_status(starter, wid, lambda s: s.awaiting_input, "the refund answer")
            assert st.generation == 1 and not st.open_blockers
            gen1 = await page(starter, wid)
            refund = [e.text for e in gen1.entries if e.role == "agent"][-1]
            assert refund == EXCHANGES[2].reply

            await handed_off_and_waiting(starter, wid, 2)
            bye = await cli(store, "say", wid, "thanks!", "--wait", "--address", address)
            assert bye.exit_code == 0, bye.output
            result = await handle.result()
            live = await asyncio.wait_for(following, 30)

    assert bye.stdout.strip() == "Glad I could help. Closing this conversation."
    assert result.reason == TerminationReason.FINISHED
    assert result.generation == 2
    assert result.summary == EXCHANGES[-1].finish
    assert result.final_reply == "Glad I could help. Closing this conversation."
    assert result.project.notes == ["Order A-1 shipped with DHL on 2026-11-30."]

    summary = await cli(store, "result", wid, "--address", address)
    assert json.loads(summary.stdout)["final_reply"] == result.final_reply, summary.output
    # Every generation's replies, read back from history and the payload store.
    shown = await cli(store, "transcript", wid, "--json", "--address", address)
    assert shown.exit_code == 0, shown.output
    entries = [json.loads(line) for line in shown.stdout.splitlines()]
    said_by = [(e["generation"], e["text"]) for e in entries if e["role"] == "agent" and e["text"]]
    assert {g for g, _ in said_by} == {0, 1, 2}
    replies = [t for _, t in said_by]
    for text in (said.stdout.strip(), answer.stdout.strip(), refund, result.final_reply):
        assert text in replies, text
    # Each successor's handoff carried the goal, the agent's note and the recent exchange.
    handoffs = {t for t in agent.systems if "Handoff from your previous generation" in t}
    first = [t for t in handoffs if "generation 0 → 1" in t]
    second = [t for t in handoffs if "generation 1 → 2" in t]
    assert len(first) == len(second) == 1 and len(handoffs) == 2
    for text in handoffs:
        assert GOAL in text and "Order A-1 shipped with DHL on 2026-11-30." in text
    assert "<human_message>Where is my order A-1?</human_message>" in first[0]
    assert "[agent] Your order A-1: shipped 2026-11-30 with DHL (order A-1)." in first[0]
    # The newest lines of the exchange, across both generations, oldest first.
    lines = second[0].split("## Recent exchange (oldest first)\n")[1].split("\n\n")[0]
    assert lines.splitlines()[-4:] == [
        "<human_message>I want a refund</human_message>",
        "<human_message>Human decision on blocker `REFUND-A-1`: approve</human_message>",
        f"[agent] {EXCHANGES[2].reply}",
        "… and 2 more (recall with `recall` tool: {\"generation\": 1, \"section\": \"human_messages\"})",
    ]
    assert "<human_message>Can I change the address?</human_message>" in lines
    assert [(e.generation, e.text) for e in live if e.role == "agent" and e.text] == said_by
    # On a closed session --follow prints everything and returns.
    after = await cli(store, "transcript", wid, "--follow", "--json", "--address", address)
    assert after.exit_code == 0 and after.stdout == shown.stdout, after.output
    only = await cli(store, "transcript", wid, "--generation", "1", "--address", address)
    assert only.exit_code == 0, only.output
    assert "cannot be changed" in only.stdout and "[gen 1 #" in only.stdout
    assert "[gen 0 " not in only.stdout


async def test_quiet_replies_follow_config(client: Client, task_queue: str) -> None:
    """A task session ends after `max_quiet_turns` replies without tools (was always 3);
    a goal-only session told to nudge does the same; one that waits (the default) waits
    visibly until aborted. Each result carries the agent's last reply."""
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            tasks = await start_session(
                client, task_queue, synthetic_project(3, 1), prefix="quiet", max_quiet_turns=1
            )
            nudged = await start_session(
                client, task_queue, ProjectState(goal="chat"), prefix="quiet",
                when_quiet="nudge", max_quiet_turns=2,
            )
            waiting = await start_session(client, task_queue, ProjectState(goal="chat"), prefix="quiet")
            st = await wait_status(client, waiting.id, lambda s: s.awaiting_input, "the wait")
            assert st.lifecycle == LifecycleState.AWAITING_INPUT and st.health.model_calls == 1
            await waiting.signal("abort", "done here")
            results = [await h.result() for h in (tasks, nudged, waiting)]
    assert [r.reason for r in results] == [
        TerminationReason.AGENT_FINISHED, TerminationReason.AGENT_FINISHED,
        TerminationReason.USER_ABORT,
    ]
    assert [r.health.model_calls for r in results] == [1, 2, 1]
    assert results[0].final_reply.startswith("Echo: Project: ")
    assert results[1].final_reply.startswith("Echo: Continue toward the goal.")
    assert results[2].final_reply.startswith("Echo: Session: ")
    assert results[2].final_handoff is not None
