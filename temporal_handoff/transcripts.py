"""Read what the agent said, across generations: `handoff transcript` and `say --wait`.

A running generation answers the `transcript` query. A closed one is read from its
Temporal history (:mod:`temporal_handoff.runs`): its last `call_model` input holds the
generation's conversation and that call's result the agent's last reply; the client's
data converter fetches both from the payload store when they were kept out of history. Both go through
`transcript_of`, so they read alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.runs import Run, read_run, read_runs
from temporal_handoff.schemas.session import SessionResult
from temporal_handoff.schemas.transcript import (
    TranscriptEntry,
    TranscriptPage,
    TranscriptQuery,
    transcript_of,
)

POLL_S = 0.2


def run_transcript(run: Run, max_chars: int = 4_000) -> list[TranscriptEntry]:
    """One closed run's transcript, from its history (its last model call)."""
    if run.last_model_request is None:
        return []
    messages = list(run.last_model_request.messages)
    reply = run.last_model_reply
    if reply is not None and reply.content and not reply.preflight_refused and not reply.cancelled:
        messages.append({"role": "assistant", "content": reply.content})
    return transcript_of(messages, run.generation, max_chars)


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
    client: Client, run: Run, max_chars: int = 4_000
) -> list[TranscriptEntry]:
    """One generation's entries: live if its run is open, else from history."""
    if run.status == "RUNNING":
        with contextlib.suppress(WorkflowQueryFailedError, RPCError):
            page = await live_transcript(client, run.workflow_id, run.run_id, max_chars)
            return page.entries
        # It closed meanwhile: its history is complete now.
        run = await read_run(client, run.workflow_id, run.run_id)
    return run_transcript(run, max_chars)


async def session_transcript(
    client: Client, workflow_id: str, generation: int | None = None, max_chars: int = 4_000
) -> list[TranscriptEntry]:
    """Every generation's entries, oldest first (or only `generation`'s).

    Raises:
        ValueError: the session has no such generation.
    """
    runs = await read_runs(client, workflow_id)
    if generation is not None:
        runs = [r for r in runs if r.generation == generation]
        if not runs:
            raise ValueError(f"generation: {workflow_id!r} has no generation {generation}")
    out: list[TranscriptEntry] = []
    for run in runs:
        out += await generation_transcript(client, run, max_chars)
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
            for run in await read_runs(client, workflow_id):
                if run.run_id in read or (run.status == "RUNNING" and running):
                    continue
                if run.status != "RUNNING":
                    read.add(run.run_id)
                fresh += await generation_transcript(client, run, max_chars)
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
