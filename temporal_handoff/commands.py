"""Client-side sending of human commands, with the retries Temporal asks callers for.

An update can be refused before the workflow saw it — while a workflow task fails
or the run is continuing-as-new (`WorkflowNotReady`), or when the server has not
seen a poller recently — and the caller is expected to try again. Those refusals
mean the update was not applied, so a retry cannot apply it twice.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

RETRYABLE_MARKERS = (
    "WorkflowNotReady",
    "workflow task failure",
    "no poller seen",
    # The run closed (continue-as-new) before the update was admitted; the retry goes
    # to the successor run.
    "workflow execution already completed",
    "workflow is closing",
    "aborted by closing workflow",
)


def _retryable(err: RPCError) -> bool:
    if err.status not in (RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.UNAVAILABLE):
        return False
    text = f"{err.message} {err.raw_grpc_status!r}"
    return err.status == RPCStatusCode.UNAVAILABLE or any(m in text for m in RETRYABLE_MARKERS)


async def send_update(
    handle: WorkflowHandle[Any, Any],
    name: str,
    arg: Any,
    *,
    attempts: int = 20,
    delay_s: float = 0.1,
) -> str:
    """`execute_update` that retries refusals which leave the update unapplied.

    Every attempt carries the same update id: the server deduplicates it within a run,
    and the session remembers the reply per id across runs, so a retry after an
    ambiguous failure is answered, never applied twice.
    """
    update_id = f"{name}-{uuid.uuid4()}"
    for attempt in range(attempts):
        try:
            return await handle.execute_update(name, arg, id=update_id, result_type=str)
        except RPCError as err:
            if not _retryable(err) or attempt == attempts - 1:
                raise
            await asyncio.sleep(min(2.0, delay_s * (attempt + 1)))
    raise AssertionError("unreachable")  # pragma: no cover
