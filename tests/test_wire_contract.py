"""The session against the strict fake: what Claude really answers never makes the
session send a request the API rejects.

Driven by the fake's natural behaviour, not by injected faults: the scripted agent ends
some turns with ``content: []`` after tool results (as Claude does), or starts a reply
with a blank text block. Sent back, either is a 400 from the real API (and from the
strict fake), which the session would turn into a human blocker, again on every retry.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client

from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import SessionResult
from temporal_handoff.testing import BrainReply, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.fake_server import RequestRecord
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session
from tests.waits import wait_until


def _rejected(fake: FakeAnthropicServer) -> list[RequestRecord]:
    return [r for r in fake.message_requests() if r.status is not None and r.status >= 400]


async def _run(client: Client, task_queue: str, fake: FakeAnthropicServer, tasks: int) -> SessionResult:
    """Run a session to its end; stop early (and say why) once a request is rejected."""
    async with running_worker(client, task_queue, fake.base_url):
        handle = await start_session(client, task_queue, synthetic_project(tasks, 2), prefix="wire")
        result = asyncio.ensure_future(handle.result())
        try:
            await wait_until(
                client, handle.id, lambda: result.done() or bool(_rejected(fake)),
                "the session to finish or a request to be rejected",
            )
        finally:
            if not result.done():
                result.cancel()
                await handle.terminate("test over")
        rejected = _rejected(fake)
        assert not rejected, [(r.status, r.error) for r in rejected]
        return result.result()


def _assert_done(result: SessionResult, tasks: int) -> None:
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert all(t.status == TaskStatus.COMPLETED for t in result.project.tasks.values())
    assert result.health.tasks_completed == tasks
    assert not [b for b in result.project.blockers if b.id.startswith("MODEL-")]


async def test_empty_turns_after_tool_results(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(empty_turn_every=2, decision_every=0)
    with FakeAnthropicServer(brain=brain) as fake:
        result = await _run(client, task_queue, fake, tasks=8)
        empty = [r for r in fake.message_requests() if r.usage and r.usage["output_tokens"] == 0]
    _assert_done(result, 8)
    assert len(empty) >= 2  # the agent did end turns with content: []


class _BlankIntroBrain(ScriptedAgentBrain):
    """Starts every tool-using reply with an empty text block before its own intro."""

    def respond(self, request: dict[str, Any]) -> BrainReply:
        reply = super().respond(request)
        if any(b.get("type") == "tool_use" for b in reply.content):
            reply.content.insert(0, {"type": "text", "text": ""})
        return reply


async def test_blank_text_blocks_in_replies(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=_BlankIntroBrain(decision_every=0)) as fake:
        result = await _run(client, task_queue, fake, tasks=4)
    _assert_done(result, 4)


def test_wire_messages_drops_only_what_the_api_rejects() -> None:
    from temporal_handoff.schemas.model_io import wire_messages

    use = {"type": "tool_use", "id": "toolu_1", "name": "complete_task", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": [{"type": "text", "text": " "}, use]},
        {"role": "user", "content": [result]},
        {"role": "assistant", "content": []},
        {"role": "user", "content": "Continue"},
        {"role": "assistant", "content": []},  # final: a prefill, allowed
    ]
    assert wire_messages(messages) == [
        messages[0],
        {"role": "assistant", "content": [use]},
        messages[2],
        messages[4],
        messages[5],
    ]
    assert wire_messages(messages[:3])[2] is messages[2]  # untouched messages pass as they are


def test_session_model_tables_are_the_published_ones() -> None:
    """`max_tokens` is checked at config time against the same published limits the
    strict fake enforces (so the session never sends a max_tokens the API rejects)."""
    from temporal_handoff.schemas.config import SessionConfig
    from temporal_handoff.schemas.tokens import CONTEXT_WINDOWS, MAX_OUTPUT_TOKENS
    from temporal_handoff.testing.fake_models import MODELS

    assert {m: MODELS[m].max_output_tokens for m in MAX_OUTPUT_TOKENS} == MAX_OUTPUT_TOKENS
    # The fallback windows (Models API unreachable) are the published ones too.
    assert {m: MODELS[m].context_window for m in CONTEXT_WINDOWS} == CONTEXT_WINDOWS
    assert SessionConfig(model="claude-sonnet-4-6", max_tokens=128_000).max_tokens == 128_000
