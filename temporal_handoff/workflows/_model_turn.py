"""One model turn's Temporal side: call the model, map its failures, run the tools.

Every outcome is a value the run loop can act on; nothing here raises into the loop:
- the model answered (`ModelOutcome.response`);
- the context overflowed (`overflow`): hand off;
- the call cannot succeed now (non-retryable error, or the retry limit reached):
  `failure`, which the session turns into a human-decision blocker;
- a human paused or aborted while the call was in flight (`interrupted`): the
  activity is cancelled and the turn does not count (unless its result had already
  come: then it is used, never dropped and paid for twice).

User tools run with their own `ToolPolicy`; when the attempts are spent, the error goes
to the model as a `tool_result` with `is_error: true`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.config import SessionConfig
    from temporal_handoff.schemas.estimator import ModelFit
    from temporal_handoff.schemas.model_io import (
        BilledAnswers,
        ModelRequest,
        ModelResponse,
        ToolSpec,
        message_text,
    )
    from temporal_handoff.schemas.tokens import TokenLedger

T = TypeVar("T")


class Interrupted(Exception):
    """A human paused or aborted while an activity was in flight; it was cancelled."""


async def until_done_or_interrupted(
    handle: workflow.ActivityHandle[T], interrupted: Callable[[], bool]
) -> T:
    """Await an activity unless a human interrupts first; then cancel it.

    Raises:
        Interrupted: the activity was cancelled.
        ActivityError: the activity failed.
    """
    try:
        await workflow.wait_condition(lambda: handle.done() or interrupted())
    except asyncio.CancelledError:
        # The workflow itself was cancelled (`temporal workflow cancel`): the activity is
        # not awaited here, so cancel it as awaiting it would have.
        handle.cancel()
        raise
    if handle.done() or not workflow.patched("interruptible-calls-1"):
        return await handle
    handle.cancel()
    try:
        result = await handle
    except (ActivityError, asyncio.CancelledError):
        raise Interrupted() from None
    # The activity had completed: its result came in the same workflow task as the
    # interruption (signals are handled first), so the cancel came too late. The call
    # was made (and paid for): use it, as if the result had come a moment earlier.
    # Sessions recorded before replay the old way (result dropped, call made again).
    if workflow.patched("interrupted-call-result-1"):
        return result
    raise Interrupted()


OCCUPANCY_FIT_PATCH = "occupancy-fit-1"
"""Sessions estimate occupancy with the model's fit (`estimator`) and the exact count
near the limit; those recorded before use the ratio-only calibration."""


def occupancy_fit(ledger: TokenLedger, model: str) -> ModelFit | None:
    """The fit the pre-flight uses (None: the ratio-only calibration, for sessions
    recorded before the fit)."""
    return ledger.fit_for(model) if workflow.patched(OCCUPANCY_FIT_PATCH) else None


def model_request(
    cfg: SessionConfig,
    ledger: TokenLedger,
    model: str,
    *,
    system: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    max_tokens: int,
    turn: int,
    generation: int,
    known_upto: int,
    preflight_limit: int,
    cache_ttl: Literal["5m", "1h"] | None = None,
) -> ModelRequest:
    """A `call_model` input on the session's ledger: the conversation's turns and the
    handoff note's turn alike (what is new since the last call, calibration, fit)."""
    return ModelRequest(
        model=model,
        system=system,
        messages=messages,
        tools=tools,
        max_tokens=max_tokens,
        turn=turn,
        generation=generation,
        known_occupancy=ledger.occupancy,
        new_from_index=known_upto if ledger.occupancy else 0,
        calibration=ledger.calibration,
        preflight_limit=preflight_limit,
        fit=occupancy_fit(ledger, model),
        stream_threshold=cfg.stream_threshold,
        cache_ttl=cache_ttl,
    )


def record_call(ledger: TokenLedger, model: str, resp: ModelResponse) -> None:
    """Add a completed call to the ledger: usage, the fit's sample, the pre-flight's
    error (pure bookkeeping: no command depends on it)."""
    ledger.record(
        resp.usage,
        model,
        resp.estimated_new_tokens,
        new=resp.new_content,
        estimated_prompt=resp.estimated_prompt_tokens if resp.new_content else None,
        exact_count=resp.counted_prompt_tokens is not None,
    )


def record_refusal(ledger: TokenLedger, resp: ModelResponse) -> None:
    """A pre-flight that refused the call (the session hands off): count its exact
    count, if it asked for one (bookkeeping only)."""
    if resp.counted_prompt_tokens is not None:
        ledger.exact_counts += 1


def appended_tokens(ledger: TokenLedger, model: str, message: dict[str, Any]) -> int:
    """Estimated tokens of a message appended after the last call (the lifecycle gauge
    until the next call measures it). No tiktoken here: the fit on characters."""
    chars = len(message_text(message))
    if workflow.patched(OCCUPANCY_FIT_PATCH):
        return ledger.fit_for(model).estimate_chars(chars, messages=1)
    # Sessions recorded before: ~4 characters per token, ratio-calibrated.
    return int(chars / 4 * ledger.calibration) + 1


def model_retry(cfg: SessionConfig) -> RetryPolicy:
    """Retryable errors back off from `model_retry_initial_s`, at most
    `model_max_attempts` times; non-retryable ones fail at once."""
    initial = cfg.model_retry_initial_s
    return RetryPolicy(
        initial_interval=timedelta(seconds=initial),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=max(60.0, initial)),
        maximum_attempts=cfg.model_max_attempts,
    )


@dataclass
class ModelOutcome:
    response: ModelResponse | None = None
    overflow: bool = False
    overflow_message: str = ""
    """The API's words for the overflow (e.g. "prompt is too long: …")."""
    failure: str | None = None
    """Why the call cannot succeed now (shown on the blocker)."""
    interrupted: bool = False
    failed_billed: BilledAnswers | None = None
    """When the call failed: answers its attempts received and lost (still billed)."""

    def lost(self) -> BilledAnswers:
        """Answers billed for this call that the conversation never got."""
        if self.response is not None and not self.response.cancelled:
            r = self.response
            return BilledAnswers(usage=r.lost_usage, answers=r.lost_answers)
        return self.failed_billed or BilledAnswers()


def billed_in_failure(err: BaseException) -> BilledAnswers:
    """What a failed call's attempts were billed for: the usage they heartbeated (on a
    timeout) or put in their error's details; cumulative, so the largest wins."""
    best = BilledAnswers()
    seen: BaseException | None = err
    while seen is not None:
        details: Any = ()
        if isinstance(seen, ApplicationError):
            details = seen.details
        elif isinstance(seen, TimeoutError):
            details = seen.last_heartbeat_details
        for detail in details or ():
            found = BilledAnswers.from_detail(detail)
            if found is not None and found.answers > best.answers:
                best = found
        seen = seen.__cause__ if seen.__cause__ is not seen else None
    return best


def error_parts(err: ActivityError) -> tuple[Any, str]:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details else {}
        if isinstance(details, dict):
            return details.get("status"), str(details.get("message", cause.message))
        return None, cause.message
    return None, str(cause or err)


async def call_model(
    req: ModelRequest, cfg: SessionConfig, interrupted: Callable[[], bool], summary: str
) -> ModelOutcome:
    handle = workflow.start_activity(
        "call_model",
        req,
        result_type=ModelResponse,
        start_to_close_timeout=timedelta(seconds=cfg.model_call_timeout_s),
        schedule_to_close_timeout=timedelta(seconds=cfg.model_retry_timeout_s),
        heartbeat_timeout=timedelta(seconds=max(30.0, cfg.model_call_timeout_s / 4))
        if req.max_tokens > req.stream_threshold
        else None,
        retry_policy=model_retry(cfg),
        summary=summary,
        # A pause/abort waits for the attempt to stop (it learns of the cancel by
        # heartbeat): an answer that came meanwhile is used, and answers billed to earlier
        # attempts come back as `lost_usage`, instead of being dropped unseen.
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
        if workflow.patched("billed-cancel-1")
        else ActivityCancellationType.TRY_CANCEL,
    )
    try:
        response = await until_done_or_interrupted(handle, interrupted)
    except Interrupted:
        return ModelOutcome(interrupted=True)
    except ActivityError as err:
        billed = billed_in_failure(err)
        status, message = error_parts(err)
        if status == 413 or "prompt is too long" in message:
            return ModelOutcome(overflow=True, overflow_message=message, failed_billed=billed)
        if "exceed context limit" in message and workflow.patched("overflow-forms-1"):
            # Older models: prompt + max_tokens over the window (a 400).
            return ModelOutcome(overflow=True, overflow_message=message, failed_billed=billed)
        if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
            failure = f"model unreachable after {cfg.model_max_attempts} attempts: {message}"
        elif err.retry_state == RetryState.TIMEOUT:
            failure = f"model unreachable for {cfg.model_retry_timeout_s:.0f} s: {message}"
        else:
            failure = f"model call failed ({status}): {message}"
        return ModelOutcome(failure=failure, failed_billed=billed)
    if response.cancelled:
        return ModelOutcome(
            interrupted=True,
            failed_billed=BilledAnswers(usage=response.lost_usage, answers=response.lost_answers),
        )
    return ModelOutcome(response=response)


async def run_user_tool(
    spec: ToolSpec, tool_input: dict[str, Any], turn: int, interrupted: Callable[[], bool]
) -> tuple[str, bool]:
    """Run `tool:<name>` with the tool's policy; (content, is_error) for the tool_result."""
    policy = spec.policy
    handle = workflow.start_activity(
        f"tool:{spec.name}",
        tool_input,
        result_type=str,
        start_to_close_timeout=timedelta(seconds=policy.timeout_s),
        retry_policy=RetryPolicy(
            initial_interval=timedelta(seconds=policy.retry_initial_s),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=max(60.0, policy.retry_initial_s)),
            maximum_attempts=policy.max_attempts,
            non_retryable_error_types=list(policy.non_retryable_errors) or None,
        ),
        summary=f"tool {spec.name} (turn {turn})",
    )
    try:
        return str(await until_done_or_interrupted(handle, interrupted)), False
    except Interrupted:
        return "error: interrupted by a human (pause or abort) before the tool finished", True
    except ActivityError as err:
        cause = err.cause
        text = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        attempts = (
            f" after {policy.max_attempts} attempts"
            if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
            else ""
        )
        return f"error: tool {spec.name} failed{attempts}: {text}", True
