"""Read what the agent said, across generations: `handoff transcript` and `say --wait`.

A running generation answers the `transcript` query. A closed one is read from its
Temporal history: its last `call_model` input holds the generation's conversation and
that call's result the agent's last reply; the client's data converter fetches both
from the payload store when they were kept out of history. Both go through
`transcript_of`, so they read alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.chain import RunSummary, session_chain
from temporal_handoff.schemas.model_io import ModelRequest, ModelResponse
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.schemas.transcript import (
    TranscriptEntry,
    TranscriptPage,
    TranscriptQuery,
    transcript_of,
)

POLL_S = 0.2


async def run_transcript(
    client: Client, workflow_id: str, run_id: str, max_chars: int = 4_000
) -> list[TranscriptEntry]:
    """One closed run's transcript, from its history (its last model call)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    generation = 0
    last_input: Payloads | None = None
    last_id = 0
    answers: dict[int, Payloads] = {}
    async for event in handle.fetch_history_events():
        et = event.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            inp = (await client.data_converter.decode(attrs.input.payloads, [SessionInput]))[0]
            generation = inp.generation
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs_s = event.activity_task_scheduled_event_attributes
            if attrs_s.activity_type.name == "call_model":
                last_input, last_id = attrs_s.input, event.event_id
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            answers[done.scheduled_event_id] = done.result
    if last_input is None:
        return []
    req: ModelRequest = (
        await client.data_converter.decode(last_input.payloads, [ModelRequest])
    )[0]
    messages = list(req.messages)
    result = answers.get(last_id)
    if result is not None:
        resp: ModelResponse = (
            await client.data_converter.decode(result.payloads, [ModelResponse])
        )[0]
        if resp.content and not resp.preflight_refused and not resp.cancelled:
            messages.append({"role": "assistant", "content": resp.content})
    return transcript_of(messages, generation, max_chars)


async def live_transcript(
    client: Client, workflow_id: str, run_id: str | None = None, max_chars: int = 4_000
) -> TranscriptPage:
    """All entries of a running generation (the `transcript` query, every page)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    page = await handle.query(
        "transcript", TranscriptQuery(limit=500, max_chars=max_chars), result_type=TranscriptPage
    )
    while len(page.entries) < page.total:
        more = await handle.query(
            "transcript",
            TranscriptQuery(offset=len(page.entries), limit=500, max_chars=max_chars),
            result_type=TranscriptPage,
        )
        if not more.entries:
            break
        page.entries += more.entries
    return page


async def generation_transcript(
    client: Client, row: RunSummary, max_chars: int = 4_000
) -> list[TranscriptEntry]:
    """One generation's entries: live if its run is open, else from history."""
    if row.status == "RUNNING":
        with contextlib.suppress(WorkflowQueryFailedError, RPCError):
            page = await live_transcript(client, row.workflow_id, row.run_id, max_chars)
            return page.entries
        # It closed meanwhile: its history is complete now.
    return await run_transcript(client, row.workflow_id, row.run_id, max_chars)


async def session_transcript(
    client: Client, workflow_id: str, generation: int | None = None, max_chars: int = 4_000
) -> list[TranscriptEntry]:
    """Every generation's entries, oldest first (or only `generation`'s).

    Raises:
        ValueError: the session has no such generation.
    """
    rows = await session_chain(client, workflow_id)
    if generation is not None:
        rows = [r for r in rows if r.generation == generation]
        if not rows:
            raise ValueError(f"generation: {workflow_id!r} has no generation {generation}")
    out: list[TranscriptEntry] = []
    for row in rows:
        out += await generation_transcript(client, row, max_chars)
    return out


async def follow(
    client: Client, workflow_id: str, seen: set[tuple[int, int]], max_chars: int = 4_000
) -> AsyncIterator[TranscriptEntry]:
    """New entries of the session as they come, until it closes.

    Each poll is a describe and a query of the current run; the chain is read again
    only when a new run appears (a handoff), to pick up the closed runs' last words
    from their history."""
    handle = client.get_workflow_handle(workflow_id)
    read: set[str] = set()
    """Closed runs read whole (their history does not change)."""
    current = ""
    while True:
        desc = await handle.describe()
        running = desc.status == WorkflowExecutionStatus.RUNNING
        fresh: list[TranscriptEntry] = []
        if desc.run_id != current or not running:
            current = desc.run_id
            for row in await session_chain(client, workflow_id):
                if row.run_id in read or (row.status == "RUNNING" and running):
                    continue
                if row.status != "RUNNING":
                    read.add(row.run_id)
                fresh += await generation_transcript(client, row, max_chars)
        if running:
            with contextlib.suppress(WorkflowQueryFailedError, RPCError):
                page = await live_transcript(client, workflow_id, desc.run_id, max_chars)
                fresh += page.entries
        for entry in fresh:
            key = (entry.generation, entry.index)
            if key not in seen:
                seen.add(key)
                yield entry
        if not running:
            return
        await asyncio.sleep(POLL_S)


@dataclass
class Mark:
    """Where the conversation stood before a message was sent."""

    generation: int
    total: int


async def mark(client: Client, workflow_id: str, attempts: int = 25) -> Mark:
    """The current generation and its transcript length (retried across a
    continue-as-new, when no run answers for a moment)."""
    for _ in range(attempts - 1):
        with contextlib.suppress(WorkflowQueryFailedError, RPCError):
            page = await live_transcript(client, workflow_id)
            return Mark(page.generation, page.total)
        await asyncio.sleep(POLL_S)
    page = await live_transcript(client, workflow_id)
    return Mark(page.generation, page.total)


def _answer(entries: list[TranscriptEntry], text: str, since: int) -> list[TranscriptEntry] | None:
    """The agent's entries after the human entry carrying `text` (None: not there yet)."""
    probe = text.strip().splitlines()[0] if text.strip() else text
    for i in range(len(entries) - 1, since - 1, -1):
        if entries[i].role == "human" and probe in entries[i].text:
            return [e for e in entries[i + 1 :] if e.role == "agent"]
    return None


@dataclass
class Reply:
    """The agent's answer to one message."""

    text: str
    result: SessionResult | None = None
    """Set if the session ended."""
    decisions: list[str] = field(default_factory=list)
    """Human-decision blockers the session now waits on."""


async def wait_for_reply(client: Client, workflow_id: str, text: str, before: Mark) -> Reply:
    """The agent's answer to the message `text` sent after `before`: its text replies
    until it waits for the next message or a decision, or the session ends."""
    handle = client.get_workflow_handle(workflow_id, result_type=SessionResult)
    while True:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            result = await handle.result()
            return Reply(result.final_reply, result)
        page: TranscriptPage | None = None
        with contextlib.suppress(WorkflowQueryFailedError, RPCError):
            page = await live_transcript(client, workflow_id)
        if page is not None:
            same = page.generation == before.generation
            agent = _answer(page.entries, text, before.total if same else 0)
            if agent is None and not same:
                # Our message went to an earlier generation; this one picked it up.
                agent = [e for e in page.entries if e.role == "agent"]
            # Done when the agent waits for the next message, or (a session that does
            # not wait) when its newest reply calls no tool.
            done = page.awaiting_input or page.closed or bool(agent and not agent[-1].tool_calls)
            said = "\n\n".join(e.text for e in agent or [] if e.text)
            if page.awaiting_decision:  # no answer comes before a human decides
                return Reply(said, decisions=page.awaiting_decision)
            if done and said:
                return Reply(said)
        await asyncio.sleep(POLL_S)
