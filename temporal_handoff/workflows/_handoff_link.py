"""The session's link to its `HandoffWorkflow` child: start, event cursor, deltas, seal.

The cursor (how many of the book's events the child has) moves *before* any await, so
an event recorded by a handler while a signal or the child start is in flight is
forwarded with the next delta or the seal, never skipped. Sessions recorded before
that fix replay the old order (`workflow.patched("handoff-cursor-1")`).

The child can disappear under the session: `temporal workflow reset` makes a new run
whose recorded child belongs to the old run (closed, or still running with the same
id), an operator can terminate it, it can time out. Every such case surfaces as
:class:`ChildGone`, and the session builds the payload itself instead (`build_handoff`
activity) or starts a new child. A child never outlives its session: it has an
execution timeout and is terminated when the run that started it closes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.config import CompressionLevel
    from temporal_handoff.schemas.events import HandoffDelta, HandoffInput, SealRequest
    from temporal_handoff.schemas.handoff import PAYLOAD_TOO_LARGE, HandoffContext, HandoffPayload
    from temporal_handoff.schemas.project import ProjectState
    from temporal_handoff.schemas.state_events import StateEvent


async def build_payload(
    state: ProjectState,
    context: HandoffContext,
    level: CompressionLevel,
    budgets: dict[CompressionLevel, int],
    max_payload_bytes: int,
    summary: str,
) -> HandoffPayload:
    """The `build_handoff` activity, as the child and the session (without a child) call it.

    Raises:
        ActivityError: the payload cannot be built (e.g. over `max_payload_bytes`).
    """
    return await workflow.execute_activity(
        "build_handoff",
        {
            "state": state.model_dump(mode="json"),
            "context": context.model_dump(mode="json"),
            "level": level.value,
            "budgets": {k.value: v for k, v in budgets.items()},
            "calibration": context.ledger.calibration,
            "max_payload_bytes": max_payload_bytes,
        },
        result_type=HandoffPayload,
        start_to_close_timeout=timedelta(seconds=60),
        retry_policy=RetryPolicy(maximum_attempts=5),
        summary=summary,
    )


DEFAULT_CHILD_TIMEOUT = timedelta(hours=24)
"""`SessionConfig.handoff_child_timeout_s` by default."""


class ChildGone(Exception):
    """The child cannot be used (closed, reset away, terminated, not startable)."""


def is_build_failure(err: ChildWorkflowError) -> bool:
    """Did the child fail because the payload cannot be built (not because it vanished)?"""
    cause: BaseException | None = err.cause
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type == PAYLOAD_TOO_LARGE:
            return True
        cause = cause.__cause__
    return False


class HandoffLink:
    def __init__(self) -> None:
        self.handle: workflow.ChildWorkflowHandle[Any, HandoffPayload] | None = None
        self.sent = 0
        """Events (of the book's list) the child has or will get from signals in flight."""
        self.deltas = 0
        self._owned = False
        """Checked (after a reset) that the child reports to this run."""

    @property
    def started(self) -> bool:
        return self.handle is not None

    def drop(self) -> None:
        self.handle = None

    async def _check_owned(self) -> None:
        """In a run made by `temporal workflow reset`, make sure the child reports to
        this run (one `handoff_child_owner` activity per run); else it is gone.

        Raises:
            ChildGone: the child belongs to the run that was reset away.
        """
        info = workflow.info()
        if self._owned or info.run_id == info.original_execution_run_id:
            return
        if not workflow.patched("reset-safe-child-1"):
            return
        assert self.handle is not None
        try:
            owner = await workflow.execute_activity(
                "handoff_child_owner",
                self.handle.id,
                result_type=str,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5),
                summary="is the handoff child ours (after a reset)?",
            )
        except ActivityError as err:
            owner = f"(unknown: {err.cause or err})"  # cannot tell: do not wait on it
        if owner != info.run_id:
            await self._abandon()
            raise ChildGone(f"the handoff child reports to run {owner or '(none)'}, not this run")
        self._owned = True

    async def start(
        self,
        inp: HandoffInput,
        child_id: str,
        events: list[StateEvent],
        timeout: timedelta = DEFAULT_CHILD_TIMEOUT,
    ) -> None:
        """Start the child with a snapshot; `inp.events_since_last_handoff` is `events` now.

        The child gets `timeout` as its execution timeout and is terminated when this
        run closes (parent close policy), so it never outlives the session; sessions
        recorded before replay without the timeout (`workflow.patched("child-timeout-1")`).
        If a child with that id is still running (it belongs to a run that was reset
        away), the stale one is cancelled and this run's child gets a run-scoped id.

        Raises:
            ChildGone: no child could be started.
        """
        fixed = workflow.patched("handoff-cursor-1")
        if fixed:
            self.sent = len(inp.events_since_last_handoff)
        bounded = workflow.patched("child-timeout-1")
        try:
            self.handle = await self._start(inp, child_id, timeout if bounded else None)
        except WorkflowAlreadyStartedError:
            await _cancel_stale(child_id)
            try:
                self.handle = await self._start(
                    inp,
                    f"{child_id}-{workflow.info().run_id[:8]}",
                    timeout if bounded else None,
                )
            except FailureError as err:
                raise ChildGone(str(err)) from err
        if not fixed:
            self.sent = len(events)

    @staticmethod
    async def _start(
        inp: HandoffInput, child_id: str, timeout: timedelta | None
    ) -> workflow.ChildWorkflowHandle[Any, HandoffPayload]:
        return await workflow.start_child_workflow(
            "HandoffWorkflow",
            inp,
            id=child_id,
            result_type=HandoffPayload,
            execution_timeout=timeout,
            parent_close_policy=ParentClosePolicy.TERMINATE,
            static_summary=f"handoff of generation {inp.generation}",
            static_details=(
                f"Builds the handoff payload for session {inp.session_id}, generation "
                f"{inp.generation} → {inp.generation + 1}."
            ),
        )

    async def send_delta(self, events: list[StateEvent]) -> None:
        """Forward the events recorded since the last delta (none: no signal).

        Raises:
            ChildGone: the child cannot receive signals any more.
        """
        assert self.handle is not None
        new = events[self.sent :]
        if not new:
            return
        await self._check_owned()
        fixed = workflow.patched("handoff-cursor-1")
        if fixed:
            self.sent = len(events)
        self.deltas += 1
        try:
            await self.handle.signal("delta", HandoffDelta(events=new, seq=self.deltas))
        except FailureError as err:
            await self._abandon()
            raise ChildGone(str(err)) from err
        if not fixed:
            self.sent = len(events)

    def take_rest(self, events: list[StateEvent]) -> list[StateEvent]:
        """The events not forwarded yet, marked as forwarded (they ride on the seal)."""
        rest = events[self.sent :]
        self.sent = len(events)
        return rest

    async def seal(self, req: SealRequest) -> HandoffPayload:
        """Seal the child and wait for its payload.

        Raises:
            ChildWorkflowError: the payload cannot be built (over its size cap).
            ChildGone: the child vanished (closed, terminated, reset away).
        """
        assert self.handle is not None
        await self._check_owned()
        handle = self.handle
        try:
            await handle.signal("seal", req)
            return await handle
        except ChildWorkflowError as err:
            self.handle = None
            if is_build_failure(err):
                raise
            raise ChildGone(str(err)) from err
        except FailureError as err:
            await self._abandon()
            raise ChildGone(str(err)) from err

    async def cancel(self) -> None:
        """Cancel a child that is no longer needed.

        By id, not through the child handle: after a reset the child still runs but
        belongs to the old run, so a cancel through the handle is NOT_FOUND and its
        result would never arrive here. Its own cancellation closes it. Sessions
        recorded before replay the old way (through the handle, awaiting it)."""
        if self.handle is None:
            return
        if workflow.patched("cancel-child-by-id-1"):
            handle = self.handle
            await self._abandon()
            info = workflow.info()
            if self._owned or info.run_id == info.original_execution_run_id:
                # Ours: wait until it closed, so this run does not close (and
                # terminate it mid-task) while it handles the cancel.
                try:
                    await handle
                except (FailureError, asyncio.CancelledError):
                    pass
            return
        handle, self.handle = self.handle, None
        handle.cancel()
        try:
            await handle
        except (FailureError, asyncio.CancelledError):
            pass

    async def _abandon(self) -> None:
        if self.handle is not None:
            child_id = self.handle.id
            self.handle = None
            await _cancel_stale(child_id)


async def _cancel_stale(child_id: str) -> None:
    try:
        await workflow.get_external_workflow_handle(child_id).cancel()
    except FailureError:
        pass  # already closed: nothing to clean up
