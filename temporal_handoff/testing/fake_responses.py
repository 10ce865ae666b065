"""Replies the real Messages API gives that a naive fake never produces.

Used by `FakeAnthropicServer`; everything here is about the *answer* to a valid
request (request validation lives elsewhere):

* **Cut at ``max_tokens``** (`limit_reply`): the reply stops after exactly
  ``max_tokens`` output tokens with ``stop_reason: "max_tokens"``, possibly inside a
  ``tool_use`` input. Like the API without fine-grained tool streaming, a tool input
  is produced one complete parameter at a time: a parameter cut off by the limit
  never appears. So the streamed ``input_json_delta`` fragments stop mid-object
  (``{"task_id":"T1"`` — no closing brace) and the non-streaming ``input`` holds
  only the parameters completed before the cut, which is also what the SDK's
  partial-JSON parser yields from the stream. Either way the tool call *looks*
  well-formed: only ``stop_reason`` says it is not.
* **Context window full** (`context_limit`): a prompt above the window is
  rejected (400 ``prompt is too long: N tokens > M maximum``). A prompt that fits but
  leaves less than ``max_tokens`` of room is answered, for models from Claude Sonnet
  4.5 on (`stops_at_window`), and cut when the window is full with
  ``stop_reason: "model_context_window_exceeded"``; older models reject it up
  front with 400 ``input length and `max_tokens` exceed context limit: P + T > W,
  decrease input length or `max_tokens` and try again``.
* **Overloaded mid-stream** (`interrupting_send`): after a 200 and some SSE events
  the server sends ``event: error`` with
  ``{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}``
  and ends the stream. The Python SDK raises `anthropic.APIStatusError` whose
  ``status_code`` is 200 and ``type`` is ``overloaded_error``.
* **Request too large** (`check_request_size`): a body above the byte limit (32 MB
  on the real API) gets 413 ``request_too_large``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from temporal_handoff.activities.tokenizer import get_encoder

__all__ = [
    "MAX_REQUEST_BYTES",
    "LimitedReply",
    "StreamInterrupted",
    "check_request_size",
    "context_limit",
    "exceed_context_limit_message",
    "interrupting_send",
    "limit_reply",
    "stops_at_window",
]

MAX_REQUEST_BYTES = 32 * 1024 * 1024
"""Largest Messages API request body the real API accepts (413 above)."""

REQUEST_TOO_LARGE_MESSAGE = "Request exceeds the maximum allowed number of bytes."

# Models released before Claude Sonnet 4.5 reject prompt + max_tokens > window with a
# 400; from Sonnet 4.5 on (Haiku 4.5, Opus 4.5, the 4.6 models and later) the API
# answers and stops with `model_context_window_exceeded`.
_LEGACY_RE = re.compile(
    r"^claude-(?:[0-3](?:[-.]|$)|instant|(?:opus|sonnet)-4(?:-[01])?(?:-\d{8})?$)"
)


def stops_at_window(model: str) -> bool:
    """Whether ``model`` stops at a full window (True) or 400s when prompt +
    ``max_tokens`` exceeds it (False: models before Claude Sonnet 4.5)."""
    return _LEGACY_RE.match(model) is None


def exceed_context_limit_message(prompt: int, max_tokens: int, window: int) -> str:
    """The real API's 400 text for prompt + max_tokens over the window (older models)."""
    return (
        f"input length and `max_tokens` exceed context limit: {prompt} + {max_tokens} > "
        f"{window}, decrease input length or `max_tokens` and try again"
    )


def check_request_size(raw: str | bytes, limit: int) -> str | None:
    """The 413 message if the body is over ``limit`` bytes, else None."""
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    return REQUEST_TOO_LARGE_MESSAGE if size > limit else None


def context_limit(
    model: str, prompt: int, max_tokens: int, window: int, *, stops: bool | None = None
) -> tuple[int, str] | str:
    """How many output tokens the reply may have, and the stop reason if it hits that.

    Returns ``(limit, stop_reason)``; or the 400 message (a str) when the request is
    rejected because prompt + ``max_tokens`` exceeds the window on an older model.
    (A prompt alone over the window is rejected before this is consulted.) ``stops``:
    whether the model stops at the window (the model table's ``stops_on_overflow``);
    None guesses from the model id.
    """
    room = window - prompt
    if max_tokens <= room:
        return max_tokens, "max_tokens"
    if not (stops_at_window(model) if stops is None else stops):
        return exceed_context_limit_message(prompt, max_tokens, window)
    return max(room, 0), "model_context_window_exceeded"


@dataclass
class LimitedReply:
    """A reply after applying an output-token limit.

    Attributes:
        content: The content blocks as the client receives them.
        output_tokens: Output tokens billed (the limit when cut).
        stop_reason: The stop reason when cut (``max_tokens`` or
            ``model_context_window_exceeded``), else None.
        partial_json: For a cut ``tool_use`` block, by block index: the JSON text the
            stream sends (incomplete object, no closing brace).
    """

    content: list[dict[str, Any]]
    output_tokens: int
    stop_reason: str | None = None
    partial_json: dict[int, str] = field(default_factory=dict)


def _cut_text(block: Mapping[str, Any], budget: int, count: BlockCount) -> str:
    """The longest token prefix of a text block's text whose block counts at most
    ``budget`` (binary search: counts grow with the prefix)."""
    enc = get_encoder()
    text = str(block.get("text", ""))
    ids = enc.encode_ordinary(text)
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(dict(block, text=enc.decode(ids[:mid]))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return enc.decode(ids[:lo]) if lo > 0 else ""


BlockCount = Callable[[Mapping[str, Any]], int]
"""Output tokens of one reply block (the server's counter)."""


def limit_reply(
    content: Sequence[Mapping[str, Any]],
    output_tokens: int,
    limit: int,
    stop_reason: str,
    count: BlockCount,
) -> LimitedReply:
    """Cut ``content`` (whose full output count is ``output_tokens``) to ``limit`` tokens.

    Blocks are generated in order: whole blocks while they fit, then the block that
    crosses the limit is cut (text at a token boundary; a tool input after its last
    complete parameter) and later blocks are never generated.
    """
    blocks = [dict(b) for b in content]
    if output_tokens <= limit:
        return LimitedReply(content=blocks, output_tokens=output_tokens)
    out: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    used = 0
    for block in blocks:
        cost = count(block)
        if used + cost <= limit:
            out.append(block)
            used += cost
            continue
        budget = limit - used
        if block.get("type") == "text":
            text = _cut_text(block, budget, count)
            if text:
                out.append(dict(block, text=text))
        elif block.get("type") == "tool_use":
            full = block.get("input")
            params = list(full.items()) if isinstance(full, dict) else []
            kept: dict[str, Any] = {}
            for key, value in params:
                trial = dict(kept, **{key: value})
                if count(dict(block, input=trial)) > budget:
                    break
                kept = trial
            out.append(dict(block, input=kept))
            partial[len(out) - 1] = "{" + ",".join(
                json.dumps(k) + ":" + json.dumps(v, separators=(",", ":"))
                for k, v in kept.items()
            )
        break
    return LimitedReply(
        content=out, output_tokens=limit, stop_reason=stop_reason, partial_json=partial
    )


class StreamInterrupted(Exception):
    """Raised by `interrupting_send` once it has sent the ``error`` event."""


Send = Callable[[str, dict[str, Any]], Awaitable[None]]


def interrupting_send(
    send: Send, after_events: int, error_type: str = "overloaded_error", message: str = "Overloaded"
) -> Send:
    """Wrap an SSE ``send`` so that after ``after_events`` events it sends
    ``event: error`` and raises `StreamInterrupted` (the caller ends the stream)."""
    sent = 0

    async def wrapped(event: str, data: dict[str, Any]) -> None:
        nonlocal sent
        if sent >= max(1, after_events):
            await send(
                "error",
                {"type": "error", "error": {"type": error_type, "message": message}},
            )
            raise StreamInterrupted()
        sent += 1
        await send(event, data)

    return wrapped
