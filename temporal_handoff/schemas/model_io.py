"""The model call's contract: what a workflow sends to `call_model` and gets back.

Messages use the Anthropic Messages API wire shape (plain dicts), so the activity
passes them to the SDK unchanged and the fake server reads exactly what Claude reads.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from temporal_handoff.schemas.base import DurableModel
from temporal_handoff.schemas.estimator import ModelFit, NewContent
from temporal_handoff.schemas.tokens import TokenUsage

Message = dict[str, Any]
"""One Messages API message: ``{"role": "user"|"assistant", "content": str | [blocks]}``."""


class ToolPolicy(DurableModel):
    """How the session runs a user tool's activity (`tool:<name>`).

    After `max_attempts` (or on an error whose type is in `non_retryable_errors`) the
    error goes to the model as a `tool_result` with `is_error: true`; the session goes on.
    """

    max_attempts: int = Field(default=3, ge=1, le=100)
    """Attempts of one tool call, the first included."""
    timeout_s: float = Field(default=60.0, gt=0, le=24 * 3600)
    """start-to-close timeout of one attempt."""
    retry_initial_s: float = Field(default=1.0, gt=0, le=600)
    """First retry interval (doubles, up to 60 s)."""
    non_retryable_errors: list[str] = Field(default_factory=list, max_length=50)
    """Exception class names (or ApplicationError types) that are not retried."""


class ToolSpec(DurableModel):
    """A tool offered to the model (Messages API `tools` entry) and how it runs."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    policy: ToolPolicy = Field(default_factory=ToolPolicy)
    """Retries and timeout of the tool's activity; never sent to the model."""

    def wire(self) -> dict[str, Any]:
        """The Messages API `tools` entry."""
        return self.model_dump(include={"name", "description", "input_schema"})


class ModelRequest(DurableModel):
    """Input of the `call_model` activity."""

    model: str
    system: list[dict[str, Any]] = Field(default_factory=list)
    """System blocks (``{"type": "text", "text": ..., "cache_control": ...}``)."""
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    max_tokens: int = Field(default=4096, ge=1)
    turn: int = 0
    """Turn number in this generation, for the activity summary and logs."""
    generation: int = 0
    known_occupancy: int = 0
    """Exact tokens of the prompt as of the previous call (input + cache + output)."""
    new_from_index: int = 0
    """Index of the first message not covered by `known_occupancy`."""
    calibration: float = 1.0
    """Factor applied to tiktoken estimates, learned from observed usage."""
    preflight_limit: int | None = None
    """If the estimated prompt exceeds this many tokens, do not call the model."""
    fit: ModelFit | None = None
    """The model's occupancy fit (`estimator`); when set, it replaces `calibration`
    and the API's exact count is asked for when the limit is near."""
    stream_threshold: int = 16_000
    """`max_tokens` above which the call streams (SSE) with heartbeats."""


class ModelResponse(DurableModel):
    """Output of the `call_model` activity: content, exact usage, and the pre-flight estimate."""

    content: list[dict[str, Any]] = Field(default_factory=list)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    stop_reason: str | None = None
    model: str = ""
    estimated_new_tokens: int = 0
    """Raw (uncalibrated) tiktoken estimate of the messages from `new_from_index`."""
    estimated_prompt_tokens: int = 0
    """known_occupancy + calibrated estimate of the new content."""
    preflight_refused: bool = False
    """True when the estimate exceeded `preflight_limit`; no model call was made."""
    new_content: NewContent | None = None
    """What was measured of the new content (teaches the fit)."""
    counted_prompt_tokens: int | None = None
    """The API's `count_tokens` answer, when the pre-flight asked for it (near the
    limit)."""
    streamed: bool = False
    lost_usage: TokenUsage = Field(default_factory=TokenUsage)
    """Usage of answers earlier attempts of this call received but whose result was
    lost (killed worker, timeout): billed by the API, not part of the conversation."""
    lost_answers: int = 0
    cancelled: bool = False
    """The call was cancelled (pause, abort) before an answer it could use: nothing to
    append; only `lost_usage` (billed answers of earlier attempts) counts."""


class BilledAnswers(DurableModel):
    """What one model call has been billed for so far, over its attempts.

    Heartbeat details of `call_model` (so the next attempt, or the timeout failure,
    carries it) and the last detail of its `ApplicationError`s.
    """

    usage: TokenUsage = Field(default_factory=TokenUsage)
    answers: int = 0

    def plus(self, usage: TokenUsage) -> BilledAnswers:
        return BilledAnswers(usage=self.usage + usage, answers=self.answers + 1)

    @classmethod
    def from_detail(cls, detail: Any) -> BilledAnswers | None:
        """Decode one heartbeat/failure detail; None if it is not ours."""
        if isinstance(detail, dict) and "billed_answers" in detail:
            try:
                return cls.model_validate(detail["billed_answers"])
            except ValueError:
                return None
        return None

    def detail(self) -> dict[str, Any]:
        return {"billed_answers": self.model_dump(mode="json")}


class ModelInfoRequest(DurableModel):
    model: str
    override: int | None = None


class ModelInfoResult(DurableModel):
    model: str
    context_window: int = Field(gt=0)
    source: str
    """'config', 'models_api' or 'table'."""
    max_output_tokens: int | None = None
    """The model's output limit (largest `max_tokens`) from the Models API; None if
    unknown."""


def block_text(block: Any) -> str:
    """The text a tokenizer sees for one content block (or a plain string)."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return str(block)
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return f"{block.get('name', '')} {json.dumps(block.get('input', {}), sort_keys=True)}"
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return "\n".join(block_text(b) for b in content)
        return str(content)
    if kind in ("thinking", "redacted_thinking"):
        return str(block.get("thinking", ""))
    return json.dumps(block, sort_keys=True)


def message_text(message: Message) -> str:
    """The text of one message, as counted for token estimates."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return "\n".join(block_text(b) for b in content)


def _blank_text(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "text" and not str(
        block.get("text", "")
    ).strip()


def wire_content(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A reply's blocks as they may be sent back: no empty or whitespace-only text block
    (the API answers 400 "text content blocks must be non-empty")."""
    return [b for b in content if not _blank_text(b)]


def wire_messages(messages: list[Message]) -> list[Message]:
    """The conversation as the Messages API accepts it.

    Blank text blocks are dropped, and so is an assistant message left with no content
    unless it is the last one (Claude may end a turn with ``content: []``; sent back,
    it is a 400 "all messages must have non-empty content except for the optional final
    assistant message"). The user messages around it are then consecutive, which the
    API combines into one turn. Unchanged messages are passed through as they are.
    """
    out: list[Message] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list) and any(_blank_text(b) for b in content):
            message = dict(message, content=wire_content(content))
            content = message["content"]
        if message.get("role") == "assistant" and content in ([], "") and index != last:
            continue
        out.append(message)
    return out


def prompt_text(
    messages: list[Message],
    system: list[dict[str, Any]] | str | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Concatenated text of a whole prompt: system, tool definitions, messages.

    The activity estimates new content on this extraction; Claude (and the fake
    server) count more than its text: framing, the tool-use system prompt, a different
    tokenizer (`estimator` learns the difference).
    """
    parts: list[str] = []
    if isinstance(system, str):
        parts.append(system)
    elif system:
        parts.extend(block_text(b) for b in system)
    for tool in tools or []:
        parts.append(json.dumps(tool, sort_keys=True))
    parts.extend(message_text(m) for m in messages)
    return "\n".join(parts)


StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "model_context_window_exceeded",
]
