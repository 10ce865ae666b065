"""The strict fake rejects what the real Messages API rejects, the way it does.

One case per rule, sent with the real ``anthropic`` client: the HTTP status, the error
``type`` and the message are the real API's (texts as seen in real error bodies, see
`temporal_handoff.testing.fake_validation`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from temporal_handoff.testing import EchoBrain, FakeAnthropicServer
from temporal_handoff.testing.brain import filler

MODEL = "claude-sonnet-4-5-20250929"
SMALL_OLD = "claude-opus-4-1"  # rejects prompt + max_tokens over the window (no overflow stop)
SMALL_NEW = "claude-sonnet-4-6"  # stops with model_context_window_exceeded instead
SMALL_WINDOW = 3_000


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(
        brain=EchoBrain(),
        context_windows={SMALL_OLD: SMALL_WINDOW, SMALL_NEW: SMALL_WINDOW},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(fake: FakeAnthropicServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0) as c:
        yield c


def _use(i: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": i, "name": "complete_task", "input": {"task_id": "T1"}}


def _result(i: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": i, "content": "ok"}


CASES: dict[str, tuple[dict[str, Any], int, str, str]] = {
    "first message not user": (
        {"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Go"}]},
        400, "invalid_request_error", 'messages: first message must use the "user" role',
    ),
    "system role in messages": (
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Go"}]},
        400, "invalid_request_error",
        'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
        'parameter, not "system" as an input message role.',
    ),
    "empty assistant content mid-conversation": (
        {"messages": [{"role": "user", "content": "Go"}, {"role": "assistant", "content": []},
                      {"role": "user", "content": "Continue"}]},
        400, "invalid_request_error",
        "messages.1: all messages must have non-empty content except for the optional final "
        "assistant message",
    ),
    "empty string content": (
        {"messages": [{"role": "user", "content": ""}]},
        400, "invalid_request_error",
        "messages.0: all messages must have non-empty content except for the optional final "
        "assistant message",
    ),
    "empty text block": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Go"},
                                                   {"type": "text", "text": ""}]}]},
        400, "invalid_request_error", "messages: text content blocks must be non-empty",
    ),
    "whitespace-only text block": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": " \n"}]}]},
        400, "invalid_request_error",
        "messages: text content blocks must contain non-whitespace text",
    ),
    "tool_result without its tool_use": (
        {"messages": [{"role": "user", "content": "Go"},
                      {"role": "assistant", "content": "Done."},
                      {"role": "user", "content": [_result("toolu_x")]}]},
        400, "invalid_request_error",
        "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
        "toolu_x. Each `tool_result` block must have a corresponding `tool_use` block in "
        "the previous message.",
    ),
    "tool_use not answered in the next message": (
        {"messages": [{"role": "user", "content": "Go"},
                      {"role": "assistant", "content": [_use("toolu_a"), _use("toolu_b")]},
                      {"role": "user", "content": [_result("toolu_a")]}]},
        400, "invalid_request_error",
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
        "after: toolu_b. Each `tool_use` block must have a corresponding `tool_result` block "
        "in the next message.",
    ),
    "max_tokens 0": (
        {"max_tokens": 0},
        400, "invalid_request_error", "max_tokens: Input should be greater than or equal to 1",
    ),
    "max_tokens over the model's output limit": (
        {"max_tokens": 65_536, "timeout": 60.0},  # timeout: the SDK's long-call guard
        400, "invalid_request_error",
        "max_tokens: 65536 > 64000, which is the maximum allowed number of output tokens for "
        "claude-sonnet-4-5-20250929",
    ),
    "unknown model": (
        {"model": "claude-3-7-sonnet-20250125"},
        404, "not_found_error", "model: claude-3-7-sonnet-20250125",
    ),
    "no anthropic-version header": (
        {"extra_headers": {"anthropic-version": anthropic.Omit()}},
        400, "invalid_request_error", "anthropic-version: header is required",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rejected_like_the_api(client: anthropic.Anthropic, case: str) -> None:
    overrides, status, error_type, message = CASES[case]
    kwargs: dict[str, Any] = {
        "model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Go"}],
    }
    kwargs.update(overrides)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**kwargs)
    err = caught.value
    assert err.status_code == status
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["error"] == {"type": error_type, "message": message}
    assert err.body["request_id"] == err.request_id
    # count_tokens validates the same body (without max_tokens).
    if "max_tokens" not in overrides:
        kwargs.pop("max_tokens")
        with pytest.raises(anthropic.APIStatusError) as counted:
            client.messages.count_tokens(**kwargs)
        assert counted.value.status_code == status
        assert isinstance(counted.value.body, dict)
        assert counted.value.body["error"] == {"type": error_type, "message": message}


def test_valid_conversations_accepted(client: anthropic.Anthropic) -> None:
    """What the API does accept: tool pairing across turns, consecutive user messages
    (the API combines them), an empty final assistant message (prefill)."""
    messages: list[Any] = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": [{"type": "text", "text": "On it."}, _use("toolu_a")]},
        {"role": "user", "content": [_result("toolu_a")]},
        {"role": "user", "content": "Continue with the plan."},
        {"role": "assistant", "content": []},
    ]
    reply = client.messages.create(model=MODEL, max_tokens=100, messages=messages)
    assert reply.stop_reason == "end_turn"


def test_window_rules(client: anthropic.Anthropic, fake: FakeAnthropicServer) -> None:
    """Prompt over the window: "prompt is too long". Prompt + max_tokens over it: 400 on
    models without the overflow stop, accepted on those with it."""
    text = filler("window", 1_500)  # ~1,500+ tokens: fits the window, not with 2,000 more
    msgs: list[Any] = [{"role": "user", "content": text}]
    prompt = fake.prompt_tokens({"model": SMALL_OLD, "messages": msgs})  # what create counts
    assert prompt < SMALL_WINDOW < prompt + 2_000
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=SMALL_OLD, max_tokens=2_000, messages=msgs)
    assert caught.value.body["error"]["message"] == (  # type: ignore[index]
        f"input length and `max_tokens` exceed context limit: {prompt} + 2000 > "
        f"{SMALL_WINDOW}, decrease input length or `max_tokens` and try again"
    )
    client.messages.create(model=SMALL_NEW, max_tokens=2_000, messages=msgs)  # accepted
    long = [{"role": "user", "content": filler("window", 4_000)}]
    with pytest.raises(anthropic.BadRequestError) as too_long:
        client.messages.create(model=SMALL_NEW, max_tokens=10, messages=long)
    assert re.fullmatch(
        rf"prompt is too long: \d+ tokens > {SMALL_WINDOW} maximum",
        too_long.value.body["error"]["message"],  # type: ignore[index]
    )


def test_models_api_serves_the_catalogue(client: anthropic.Anthropic) -> None:
    """Per-model windows and output limits, a 1M-token model, unknown ids 404."""
    opus = client.models.retrieve("claude-opus-4-6")
    assert (opus.max_input_tokens, opus.max_tokens) == (1_000_000, 128_000)
    haiku = client.models.retrieve("claude-haiku-4-5-20251001")
    assert (haiku.max_input_tokens, haiku.max_tokens) == (200_000, 64_000)
    ids = {m.id for m in client.models.list().data}
    assert {"claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"} <= ids
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.models.retrieve("claude-nonexistent")
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "not_found_error", "message": "model: claude-nonexistent",
    }


def test_streaming_requests_are_validated_before_the_stream(client: anthropic.Anthropic) -> None:
    """A rejected ``stream: true`` request gets the JSON error, no event stream."""
    overrides, status, error_type, message = CASES["empty assistant content mid-conversation"]
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model=MODEL, max_tokens=100, **overrides) as stream:
            stream.get_final_message()
    assert caught.value.status_code == status
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": error_type, "message": message,
    }
