"""The Anthropic call, as Temporal activities.

`AsyncAnthropic` is built here from the worker's environment (`ANTHROPIC_API_KEY`,
`ANTHROPIC_BASE_URL`), never in workflow code and never passed through history, with
`max_retries=0`: Temporal owns retries, so each attempt is visible in history.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import anthropic
from temporalio import activity
from temporalio.exceptions import ApplicationError

from temporal_handoff.activities.cache_breakpoints import with_conversation_breakpoints
from temporal_handoff.activities.tokenizer import count_tokens, dense_tokens
from temporal_handoff.schemas.estimator import (
    DENSE_CHARS_PER_TOKEN,
    NewContent,
    counted_fits,
    preflight,
)
from temporal_handoff.schemas.model_io import (
    BilledAnswers,
    ModelInfoRequest,
    ModelInfoResult,
    ModelRequest,
    ModelResponse,
    message_text,
    prompt_text,
    wire_messages,
)
from temporal_handoff.schemas.tokens import TokenUsage, fallback_context_window

T = TypeVar("T")

RETRYABLE_STATUS = {408, 409, 429}
"""Plus every status ≥ 500 (the SDK's own rule)."""

RETRYABLE_ERROR_TYPES = frozenset(
    {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}
)
"""`error.type`s that are transient whatever the HTTP status: a mid-stream
`overloaded_error` arrives after a 200 (the SDK raises `APIStatusError` with
`status_code == 200`)."""
PERMANENT_ERROR_TYPES = frozenset(
    {
        "invalid_request_error", "authentication_error", "permission_error",
        "not_found_error", "request_too_large", "billing_error",
    }
)
"""`error.type`s that the same request cannot get past by retrying."""


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds), as the SDK reads them."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    sec = headers.get("retry-after")
    if sec is not None:
        try:
            return float(sec)
        except ValueError:
            return None
    return None


def map_api_error(err: Exception) -> ApplicationError:
    """Translate an SDK error into a Temporal ApplicationError with the right retry policy.

    Honour `x-should-retry`; else classify by the API's `error.type`
    (`RETRYABLE_ERROR_TYPES`, `PERMANENT_ERROR_TYPES`), else by status: retry
    408/409/429/≥500 and connection errors (with `next_retry_delay` from
    `retry-after`), and fail fast on everything else with the API's own message.
    """
    if isinstance(err, anthropic.APIStatusError):
        status = err.status_code
        headers = err.response.headers
        should = headers.get("x-should-retry")
        if should == "true":
            retryable = True
        elif should == "false":
            retryable = False
        elif err.type in RETRYABLE_ERROR_TYPES:
            retryable = True
        elif err.type in PERMANENT_ERROR_TYPES:
            retryable = False
        else:
            retryable = status in RETRYABLE_STATUS or status >= 500
        delay = retry_after_seconds(headers)
        message = err.api_message or str(err)
        return ApplicationError(
            f"Anthropic API {status}: {message}",
            {"status": status, "message": message, "type": err.type},
            type=f"AnthropicStatus{status}",
            non_retryable=not retryable,
            next_retry_delay=timedelta(seconds=delay) if retryable and delay else None,
        )
    if isinstance(err, anthropic.APIConnectionError):
        return ApplicationError(
            f"Anthropic connection error: {err}", type="AnthropicConnectionError"
        )
    return ApplicationError(f"{type(err).__name__}: {err}", type=type(err).__name__)


def _usage(raw: Any) -> TokenUsage:
    return TokenUsage(
        input_tokens=getattr(raw, "input_tokens", 0) or 0,
        output_tokens=getattr(raw, "output_tokens", 0) or 0,
        cache_creation_input_tokens=getattr(raw, "cache_creation_input_tokens", 0) or 0,
        cache_read_input_tokens=getattr(raw, "cache_read_input_tokens", 0) or 0,
        cache_creation_1h_input_tokens=getattr(
            getattr(raw, "cache_creation", None), "ephemeral_1h_input_tokens", 0
        )
        or 0,
    )


def _billed_before() -> BilledAnswers:
    """Answers earlier attempts of this call received and never returned (their usage,
    heartbeated as soon as each answer came): billed, yet no result carried them."""
    for detail in reversed(activity.info().heartbeat_details or ()):
        found = BilledAnswers.from_detail(detail)
        if found is not None:
            return found
    return BilledAnswers()


def _with_billed(err: ApplicationError, billed: BilledAnswers) -> ApplicationError:
    """The same error, with the lost answers' usage as its last detail (so a call
    that finally fails still tells the workflow what it was billed)."""
    if billed.answers == 0:
        return err
    return ApplicationError(
        err.message,
        *err.details,
        billed.detail(),
        type=err.type,
        non_retryable=err.non_retryable,
        next_retry_delay=err.next_retry_delay,
    )


class ModelActivities:
    """Model activities sharing one client per worker process.

    Args:
        client: an `AsyncAnthropic`; by default built lazily from the environment.
        heartbeat_every_s: heartbeat interval while streaming.
        conversation_cache: put the moving prompt-cache breakpoint on the conversation
            (`cache_breakpoints`); off, only the workflow's system breakpoint is sent.
    """

    def __init__(
        self,
        client: anthropic.AsyncAnthropic | None = None,
        heartbeat_every_s: float = 5.0,
        conversation_cache: bool = True,
    ) -> None:
        self._client = client
        self._heartbeat_every_s = heartbeat_every_s
        self._conversation_cache = conversation_cache

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            # Secrets come from the worker's environment only; `api_key=None` lets the
            # SDK read ANTHROPIC_API_KEY itself so the value never passes through us.
            self._client = anthropic.AsyncAnthropic(
                max_retries=0,
                base_url=os.environ.get("ANTHROPIC_BASE_URL") or None,
                api_key=os.environ.get("ANTHROPIC_API_KEY") or "no-key-fake-server",
            )
        return self._client

    @activity.defn(name="call_model")
    async def call_model(self, req: ModelRequest) -> ModelResponse:
        """One Messages API call with a pre-flight context check.

        Each answer's usage is heartbeated the moment it arrives, added to what earlier
        attempts heartbeated: if this attempt's result is then lost, the next attempt
        returns it as `lost_usage` (or the final failure carries it).
        """
        billed = _billed_before()
        so_far = [billed]  # plus this attempt's answer once it came
        if req.new_from_index == 0:
            new_text = prompt_text(req.messages, req.system, [t.wire() for t in req.tools])
        else:
            new_text = "\n".join(message_text(m) for m in req.messages[req.new_from_index :])
        raw_new = count_tokens(new_text)
        new = NewContent(
            tokens=raw_new,
            dense_tokens=dense_tokens(new_text, DENSE_CHARS_PER_TOKEN) if req.fit else 0,
            chars=len(new_text),
            messages=len(req.messages) - req.new_from_index,
            whole=req.new_from_index == 0,
        )
        counted: int | None = None
        if req.fit is None:
            estimate = req.known_occupancy + math.ceil(raw_new * req.calibration)
            refused = req.preflight_limit is not None and estimate > req.preflight_limit
        else:
            estimate, counted, refused = await self._preflight(req, new)
        if refused:
            return ModelResponse(
                estimated_new_tokens=raw_new,
                estimated_prompt_tokens=estimate,
                preflight_refused=True,
                model=req.model,
                lost_usage=billed.usage,
                lost_answers=billed.answers,
                new_content=new,
                counted_prompt_tokens=counted,
            )
        kwargs: dict[str, Any] = {
            "model": req.model,
            "max_tokens": req.max_tokens,
            # Never an empty assistant turn or a blank text block on the wire, even
            # from sessions recorded before the workflow stopped keeping them.
            "messages": wire_messages(req.messages),
            "metadata": {"user_id": activity.info().workflow_id or "session"},
        }
        if req.system:
            kwargs["system"] = req.system
        if req.tools:
            kwargs["tools"] = [t.wire() for t in req.tools]
        if self._conversation_cache:
            # Built here, not in the workflow: history keeps the messages unmarked.
            kwargs["messages"] = with_conversation_breakpoints(
                req.messages, req.system, kwargs.get("tools")
            )
        streamed = req.max_tokens > req.stream_threshold
        answer: list[Any] = []  # this attempt's whole answer, once it came
        try:
            if streamed:
                events = [0]
                message = await self._heartbeating(
                    self._stream(kwargs, so_far, answer, events), so_far, events
                )
            else:
                message = await self._heartbeating(self.client.messages.create(**kwargs), so_far)
                activity.heartbeat(billed.plus(_usage(message.usage)).detail())
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as err:
            raise _with_billed(map_api_error(err), so_far[0]) from None
        except asyncio.CancelledError:
            # Cancelled (pause, abort, shutdown) once answers were billed: hand them back
            # (this attempt's whole answer is used; earlier lost ones are counted).
            if answer:
                message = answer[0]
            elif so_far[0].answers:
                return ModelResponse(
                    model=req.model,
                    cancelled=True,
                    lost_usage=so_far[0].usage,
                    lost_answers=so_far[0].answers,
                )
            else:
                raise
        return ModelResponse(
            content=[b.model_dump(exclude_none=True) for b in message.content],
            usage=_usage(message.usage),
            stop_reason=message.stop_reason,
            model=message.model,
            estimated_new_tokens=raw_new,
            estimated_prompt_tokens=estimate,
            streamed=streamed,
            new_content=new,
            counted_prompt_tokens=counted,
            lost_usage=billed.usage,
            lost_answers=billed.answers,
        )

    async def _preflight(self, req: ModelRequest, new: NewContent) -> tuple[int, int | None, bool]:
        """(estimate, exact count or None, refuse?) with the model's fit: decided from
        the estimate unless the limit is within its uncertainty; then from the API's
        `count_tokens` (if that fails, the estimate's upper bound decides)."""
        assert req.fit is not None
        new_estimate = req.fit.estimate(new)
        estimate = req.known_occupancy + new_estimate
        if req.preflight_limit is None:
            return estimate, None, False
        check = preflight(req.known_occupancy, new_estimate, req.preflight_limit)
        if check.decision != "count":
            return estimate, None, check.decision == "refuse"
        kwargs: dict[str, Any] = {"model": req.model, "messages": wire_messages(req.messages)}
        if req.system:
            kwargs["system"] = req.system
        if req.tools:
            kwargs["tools"] = [t.wire() for t in req.tools]
        try:
            counted = (await self.client.messages.count_tokens(**kwargs)).input_tokens
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as err:
            activity.logger.info("count_tokens unavailable (%s); deciding on the estimate", err)
            return estimate, None, check.high > req.preflight_limit
        return estimate, counted, not counted_fits(counted, req.preflight_limit)

    async def _heartbeating(
        self, call: Awaitable[T], so_far: list[BilledAnswers], events: list[int] | None = None
    ) -> T:
        """Await `call`, heartbeating every `heartbeat_every_s` what was billed so far
        (a bare heartbeat would erase it on the server): a cancel (pause, abort)
        reaches an attempt only through a heartbeat. With `events` (a stream's event
        count) heartbeats stop once none came for half the heartbeat timeout, so a
        stalled stream still times out (within 1.5 heartbeat timeouts)."""
        task = asyncio.ensure_future(call)
        loop = asyncio.get_running_loop()
        timeout = activity.info().heartbeat_timeout
        seen, seen_at = 0, loop.time()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._heartbeat_every_s)
                if done:
                    return task.result()
                now = loop.time()
                if events is not None and events[0] != seen:
                    seen, seen_at = events[0], now
                if events is None or timeout is None or now - seen_at < timeout.total_seconds() / 2:
                    activity.heartbeat(so_far[0].detail())
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _stream(
        self,
        kwargs: dict[str, Any],
        so_far: list[BilledAnswers],
        answer: list[Any],
        events: list[int],
    ) -> Any:
        """Stream (SSE): the SDK refuses long non-streaming calls. The whole answer's
        usage is heartbeated at `message_stop` (`_heartbeating` sends the rest)."""
        async with self.client.messages.stream(**kwargs) as stream:
            async for event in stream:
                events[0] += 1
                if event.type == "message_stop":
                    answer.append(stream.current_message_snapshot)
                    so_far[0] = so_far[0].plus(_usage(answer[0].usage))
                    activity.heartbeat(so_far[0].detail())
            return await stream.get_final_message()

    @activity.defn(name="model_info")
    async def model_info(self, req: ModelInfoRequest) -> ModelInfoResult:
        """Context window: config override, else the Models API, else the built-in table.
        Output limit (`max_tokens` of the ModelInfo): the Models API, else unknown."""
        window: int | None = None
        output: int | None = None
        try:
            info = await self.client.models.retrieve(req.model)
            window = getattr(info, "max_input_tokens", None) or None
            output = getattr(info, "max_tokens", None) or None
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as err:
            activity.logger.info("Models API unavailable for %s (%s); using table", req.model, err)
        limit = int(output) if output else None
        if req.override:
            return ModelInfoResult(
                model=req.model, context_window=req.override, source="config",
                max_output_tokens=limit,
            )
        if window:
            return ModelInfoResult(
                model=req.model, context_window=int(window), source="models_api",
                max_output_tokens=limit,
            )
        return ModelInfoResult(
            model=req.model, context_window=fallback_context_window(req.model), source="table",
            max_output_tokens=limit,
        )
