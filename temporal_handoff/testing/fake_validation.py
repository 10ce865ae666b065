"""Request validation of the fake Messages API: what the real API rejects, and how.

Pure functions over the parsed JSON body (no I/O): each returns None when the request
is acceptable, or a `Rejection` — the HTTP status, error ``type`` and message the real
API answers. Messages are the real API's texts, as seen in its error bodies
(``{"type":"error","error":{"type":...,"message":...},"request_id":...}``).

Rules, in the order they are checked:

* ``anthropic-version`` header present (400).
* ``model``, ``max_tokens`` (messages only) and ``messages`` present (400 "Field required").
* roles are ``user``/``assistant``; ``role: "system"`` gets the API's own hint (400).
* the first message is a ``user`` message (400).
* the model exists (404 ``not_found_error`` "model: <id>").
* ``1 <= max_tokens <= the model's output limit`` (400).
* every message has non-empty content, except an optional final assistant message
  (400 "messages.N: all messages must have non-empty content…").
* no empty or whitespace-only text block, in messages or ``system`` (400).
* consecutive messages of one role form one turn (the API combines them); every
  ``tool_result`` answers a ``tool_use`` of the previous (assistant) turn, and every
  ``tool_use`` is answered in the next (user) turn (400).

After the prompt is counted, `check_window` adds the window rules: a prompt over the
window is "prompt is too long"; prompt + ``max_tokens`` over the window is rejected only
by models that do not stop with ``model_context_window_exceeded`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from temporal_handoff.testing.fake_models import FakeModel, find_model

__all__ = ["ModelLookup", "Rejection", "check_window", "validate_request"]


class ModelLookup(Protocol):
    """Finds a model by id: a ``dict[str, FakeModel]``, or the server's resolver."""

    def get(self, model_id: str, /) -> FakeModel | None: ...


@dataclass(frozen=True)
class Rejection:
    """An error answer: HTTP status, error ``type`` and message."""

    status: int
    error_type: str
    message: str


def _bad(message: str) -> Rejection:
    return Rejection(400, "invalid_request_error", message)


def validate_request(
    body: Mapping[str, Any],
    models: ModelLookup,
    *,
    anthropic_version: str | None,
    count_tokens: bool = False,
) -> Rejection | None:
    """Validate a ``/v1/messages`` (or ``/count_tokens``) body like the real API.

    Args:
        body: The parsed JSON body.
        models: Looks up a model id (e.g. `fake_models.MODELS`, or the server).
        anthropic_version: The request's ``anthropic-version`` header (None: absent).
        count_tokens: The body is a ``count_tokens`` request (no ``max_tokens``).
    """
    if not anthropic_version:
        return _bad("anthropic-version: header is required")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        return _bad("model: Field required")
    max_tokens = body.get("max_tokens")
    if not count_tokens and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
        return _bad("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _bad("messages: Field required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return _bad(f"messages.{index}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            return _bad(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return _bad(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    if not messages or messages[0].get("role") != "user":
        return _bad('messages: first message must use the "user" role')

    model = models.get(model_id)
    if model is None and isinstance(models, Mapping):
        model = find_model(model_id, models)  # dated ids of a plain catalogue
    if model is None:
        return Rejection(404, "not_found_error", f"model: {model_id}")
    if not count_tokens:
        assert isinstance(max_tokens, int)
        if max_tokens < 1:
            return _bad("max_tokens: Input should be greater than or equal to 1")
        if max_tokens > model.max_output_tokens:
            return _bad(
                f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum "
                f"allowed number of output tokens for {model_id}"
            )

    last = len(messages) - 1
    for index, message in enumerate(messages):
        content = message.get("content")
        if index == last and message["role"] == "assistant":
            continue  # an optional final assistant message (prefill) may be empty
        if content is None or content == "" or content == []:
            return _bad(
                f"messages.{index}: all messages must have non-empty content except for "
                "the optional final assistant message"
            )
    text_error = _empty_text("messages", [_blocks(m.get("content")) for m in messages])
    if text_error is None and isinstance(body.get("system"), list):
        text_error = _empty_text("system", [body["system"]])
    if text_error is not None:
        return text_error
    return _tool_pairing(messages)


def check_window(prompt_tokens: int, max_tokens: int, model: FakeModel) -> Rejection | None:
    """The window rules, once the prompt is counted (see the module docstring)."""
    window = model.context_window
    if prompt_tokens > window:
        return _bad(f"prompt is too long: {prompt_tokens} tokens > {window} maximum")
    if prompt_tokens + max_tokens > window and not model.stops_on_overflow:
        return _bad(
            f"input length and `max_tokens` exceed context limit: {prompt_tokens} + "
            f"{max_tokens} > {window}, decrease input length or `max_tokens` and try again"
        )
    return None


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, list):
        return content
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return []


def _empty_text(where: str, block_lists: list[list[Any]]) -> Rejection | None:
    """Empty text blocks first (the API reports that before whitespace-only ones)."""
    texts = [
        b.get("text")
        for blocks in block_lists
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "text"
    ]
    # Text inside tool_result content is held to the same rule.
    for blocks in block_lists:
        for b in blocks:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                inner = b.get("content")
                if isinstance(inner, list):
                    texts.extend(
                        x.get("text")
                        for x in inner
                        if isinstance(x, dict) and x.get("type") == "text"
                    )
    if any(not isinstance(t, str) or t == "" for t in texts):
        return _bad(f"{where}: text content blocks must be non-empty")
    if any(isinstance(t, str) and not t.strip() for t in texts):
        return _bad(f"{where}: text content blocks must contain non-whitespace text")
    return None


def _tool_pairing(messages: list[dict[str, Any]]) -> Rejection | None:
    """tool_use ↔ tool_result pairing across turns (consecutive same-role messages = one turn)."""
    # turns: (role, [(message index, block index, block)], first message index)
    turns: list[tuple[str, list[tuple[int, int, dict[str, Any]]], int]] = []
    for index, message in enumerate(messages):
        blocks = [
            (index, k, b) for k, b in enumerate(_blocks(message.get("content"))) if isinstance(b, dict)
        ]
        if turns and turns[-1][0] == message["role"]:
            turns[-1][1].extend(blocks)
        else:
            turns.append((message["role"], blocks, index))
    for t, (role, blocks, _first) in enumerate(turns):
        if role == "user":
            previous = turns[t - 1][1] if t > 0 else []
            offered = {b.get("id") for _, _, b in previous if b.get("type") == "tool_use"}
            for m, k, b in blocks:
                if b.get("type") == "tool_result" and b.get("tool_use_id") not in offered:
                    return _bad(
                        f"messages.{m}.content.{k}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {b.get('tool_use_id')}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous "
                        "message."
                    )
        elif t + 1 < len(turns):
            answered = {
                b.get("tool_use_id") for _, _, b in turns[t + 1][1] if b.get("type") == "tool_result"
            }
            missing = [
                (m, str(b.get("id")))
                for m, _, b in blocks
                if b.get("type") == "tool_use" and b.get("id") not in answered
            ]
            if missing:
                return _bad(
                    f"messages.{missing[0][0]}: `tool_use` ids were found without "
                    "`tool_result` blocks immediately after: "
                    + ", ".join(i for _, i in missing)
                    + ". Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
    return None
