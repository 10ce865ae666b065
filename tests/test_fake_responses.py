"""Replies of the real Messages API that the fake now produces, through the real SDK:
cut at `max_tokens` (also inside a tool input, JSON and SSE), a full context window
(`model_context_window_exceeded` on newer models, 400 on older ones), a mid-stream
`event: error`, and 413 for a body over the byte limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anthropic
import pytest

from temporal_handoff.testing import FakeAnthropicServer, Fault, ScriptedAgentBrain
from temporal_handoff.testing.fake_responses import stops_at_window

NEW = "claude-sonnet-4-6"
OLD = "claude-3-5-haiku-20241022"
TOOLS: Any = [
    {
        "name": "complete_task",
        "description": "Mark a task complete.",
        "input_schema": {
            "type": "object",
            "properties": {"task_id": {"type": "string"}, "summary": {"type": "string"}},
            "required": ["task_id", "summary"],
        },
    }
]
ASK: Any = [{"role": "user", "content": "Next eligible tasks: `P1-T001`"}]
WINDOW = 500  # holds the prompt (with the tool-use system prompt), not 4,096 more


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropicServer]:
    brain = ScriptedAgentBrain(decision_every=0, summary_words=60)
    with FakeAnthropicServer(
        brain=brain, context_windows={NEW: WINDOW, OLD: WINDOW}, default_context_window=200_000
    ) as srv:
        yield srv


@pytest.fixture
async def client(server: FakeAnthropicServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    server.clear_faults()
    server.reset_log()
    async with anthropic.AsyncAnthropic(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=10
    ) as c:
        yield c
    server.clear_faults()


def test_which_models_stop_at_the_window() -> None:
    for model in ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-haiku-4-5",
                  "claude-opus-4-5", "claude-sonnet-4-6", "claude-opus-4-6", "claude-fake"):
        assert stops_at_window(model), model
    for model in ("claude-3-5-haiku-20241022", "claude-3-7-sonnet-latest", "claude-opus-4-1",
                  "claude-sonnet-4-20250514", "claude-opus-4-0", "claude-2.1"):
        assert not stops_at_window(model), model


async def test_full_reply_is_not_cut(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=ASK,
                                       tools=TOOLS)
    assert msg.stop_reason == "tool_use" and msg.usage.output_tokens < 1024
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert set(use.input) == {"task_id", "summary"}  # type: ignore[arg-type]


async def _one_param_budget(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> int:
    """An output limit that holds the reply's text and its tool call's first parameter,
    not its second (measured with the server's own counter)."""
    full = await client.messages.create(model="claude-sonnet-4-5", max_tokens=1024,
                                        messages=ASK, tools=TOOLS)
    text, use = (b.model_dump(exclude_none=True) for b in full.content)
    cut = dict(use, input={"task_id": use["input"]["task_id"]})
    server.reset_log()
    return server.output_tokens([text, cut], "claude-sonnet-4-5") + 1


async def test_json_reply_cut_inside_a_tool_input(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    limit = await _one_param_budget(client, server)
    msg = await client.messages.create(model="claude-sonnet-4-5", max_tokens=limit,
                                       messages=ASK, tools=TOOLS)
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == limit
    assert server.message_requests()[0].usage["output_tokens"] == limit  # type: ignore[index]
    # The call looks well-formed; only the stop reason says the summary never came.
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.input == {"task_id": "P1-T001"}


async def test_stream_cut_inside_a_tool_input(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    limit = await _one_param_budget(client, server)
    partial = ""
    async with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=limit, messages=ASK, tools=TOOLS
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                partial += event.partial_json
        msg = await stream.get_final_message()
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == limit
    assert partial == '{"task_id":"P1-T001"'  # stops mid-object: no closing brace
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial)
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.input == {"task_id": "P1-T001"}  # the SDK's partial parse


async def test_text_cut_at_max_tokens(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=ASK,
                                       tools=TOOLS)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 4
    assert [b.type for b in msg.content] == ["text"]
    text = msg.content[0].text  # type: ignore[union-attr]
    assert text and "Working on `P1-T001`.".startswith(text) and len(text) < 20


async def test_newer_model_stops_at_a_full_window(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    msg = await client.messages.create(model=NEW, max_tokens=4096, messages=ASK, tools=TOOLS)
    prompt = msg.usage.input_tokens
    assert msg.stop_reason == "model_context_window_exceeded"
    assert prompt + msg.usage.output_tokens == WINDOW and msg.usage.output_tokens > 0


async def test_older_model_rejects_prompt_plus_max_tokens_over_the_window(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(model=OLD, max_tokens=4096, messages=ASK, tools=TOOLS)
    prompt = server.message_requests()[0].input_tokens
    assert info.value.type == "invalid_request_error"
    assert info.value.api_message == (
        f"input length and `max_tokens` exceed context limit: {prompt} + 4096 > {WINDOW}, "
        "decrease input length or `max_tokens` and try again"
    )
    ok = await client.messages.create(model=OLD, max_tokens=50, messages=ASK, tools=TOOLS)
    assert ok.stop_reason in ("tool_use", "max_tokens")


async def test_mid_stream_overload_after_a_200(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    server.add_fault(Fault(stream_error="overloaded_error", stream_error_after=4, times=1))
    async with aiohttp.ClientSession() as raw, raw.post(
        f"{server.base_url}/v1/messages",
        json={"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": ASK, "stream": True},
        headers={"anthropic-version": "2023-06-01", "x-api-key": "test"},
    ) as response:
        status, text = response.status, await response.text()
    assert status == 200
    events = [line for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: error"
    assert len(events) == 5 and "message_stop" not in text
    assert text.rstrip().endswith(
        'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    server.add_fault(Fault(stream_error="overloaded_error", times=1))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=1024, messages=ASK
        ) as stream:
            async for _ in stream:
                pass
    assert info.value.status_code == 200 and info.value.type == "overloaded_error"
    # Not streaming: the same fault is the HTTP error.
    server.add_fault(Fault(stream_error="overloaded_error", times=1))
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=ASK)
    assert info.value.status_code == 529 and info.value.type == "overloaded_error"


async def test_mid_stream_overload_at_a_natural_rate() -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), stream_error_rate=0.5, seed=1) as srv:
        async with anthropic.AsyncAnthropic(
            base_url=srv.base_url, api_key="test", max_retries=0
        ) as c:
            outcomes = []
            for _ in range(20):
                try:
                    async with c.messages.stream(
                        model="claude-sonnet-4-5", max_tokens=1024, messages=ASK
                    ) as stream:
                        await stream.get_final_message()
                    outcomes.append("ok")
                except anthropic.APIStatusError as err:
                    assert err.status_code == 200 and err.type == "overloaded_error"
                    outcomes.append("overloaded")
    assert 3 <= outcomes.count("overloaded") <= 17


async def test_request_over_the_byte_limit_is_413() -> None:
    with FakeAnthropicServer(max_request_bytes=2_000) as srv:
        async with anthropic.AsyncAnthropic(
            base_url=srv.base_url, api_key="test", max_retries=0
        ) as c:
            ok = await c.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)
            assert ok.stop_reason
            with pytest.raises(anthropic.APIStatusError) as info:
                await c.messages.create(
                    model="claude-sonnet-4-5", max_tokens=100,
                    messages=[{"role": "user", "content": "x " * 2_000}],
                )
    assert info.value.status_code == 413 and info.value.type == "request_too_large"
