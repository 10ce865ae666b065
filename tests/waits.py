"""Waiting on a session in the integration tests.

Tests wait on conditions, never on the clock. Every wait watches the session's current
run: it fails at once when that run has failing workflow tasks (a stuck session), and
after `cap` seconds instead of hanging (a way to fail, not a bound).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.service import RPCError

from temporal_handoff.schemas.session import SessionStatus

T = TypeVar("T")

CAP = 30.0
"""Seconds before a wait gives up (a way to fail instead of hanging, not a bound)."""

BENIGN_CAUSES = {
    # The server refuses a completion that raced a new signal/update; the SDK retries
    # at once with the new event. Normal under command storms, not a stuck task.
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_UPDATE,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_STICKY_TASK_QUEUE,
    # The reset point itself: the server fails the workflow task it resets to.
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW,
}


async def history(client: Client, workflow_id: str, run_id: str | None) -> list[HistoryEvent]:
    """The events of one run (None: the current run)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    return [e async for e in handle.fetch_history_events()]


def task_failures(events: list[HistoryEvent]) -> list[str]:
    """The failed workflow tasks of a run that mean a stuck session, one line each."""
    out = []
    for index, e in enumerate(events):
        if e.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            continue
        attrs = e.workflow_task_failed_event_attributes
        if attrs.cause in BENIGN_CAUSES:
            continue
        if attrs.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_FORCE_CLOSE_COMMAND and (
            events[index + 1 :]
            and events[index + 1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED
        ):
            continue  # the task in flight when the run was terminated (by a reset)
        cause = WorkflowTaskFailedCause.Name(attrs.cause)
        out.append(f"event {e.event_id} {cause}: {attrs.failure.message[:300]}")
    return out


async def latest_failures(client: Client, workflow_id: str) -> list[str]:
    try:
        return task_failures(await history(client, workflow_id, None))
    except RPCError:
        return []


async def guarded(
    client: Client, workflow_id: str, aw: Awaitable[T], what: str, cap: float = CAP
) -> T:
    """Await `aw`; fail at once if the session's current run has failing workflow
    tasks, and after `cap` seconds instead of hanging."""
    task = asyncio.ensure_future(aw)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cap
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            failures = await latest_failures(client, workflow_id)
            if failures:
                raise AssertionError(f"session stuck while waiting for {what}: {failures[0]}")
            if loop.time() > deadline:
                raise AssertionError(f"gave up after {cap:.0f}s waiting for {what}")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def wait_status(
    client: Client,
    workflow_id: str,
    predicate: Callable[[SessionStatus], bool],
    what: str,
    cap: float = CAP,
) -> SessionStatus:
    """The current run's `status` query, once `predicate` holds."""
    handle = client.get_workflow_handle(workflow_id)

    async def poll() -> SessionStatus:
        while True:
            with contextlib.suppress(RPCError):  # e.g. between two runs of a continue-as-new
                st = await handle.query("status", result_type=SessionStatus)
                if predicate(st):
                    return st
            await asyncio.sleep(0.05)

    return await guarded(client, workflow_id, poll(), what, cap)


async def wait_history(
    client: Client,
    workflow_id: str,
    predicate: Callable[[list[HistoryEvent]], bool],
    what: str,
    cap: float = CAP,
) -> list[HistoryEvent]:
    """The current run's events, once `predicate` holds."""

    async def poll() -> list[HistoryEvent]:
        while True:
            events = await history(client, workflow_id, None)
            if predicate(events):
                return events
            await asyncio.sleep(0.1)

    return await guarded(client, workflow_id, poll(), what, cap)


async def wait_until(
    client: Client, workflow_id: str, predicate: Callable[[], bool], what: str, cap: float = CAP
) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await guarded(client, workflow_id, poll(), what, cap)
