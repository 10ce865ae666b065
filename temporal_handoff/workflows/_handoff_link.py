"""The session's link to its `HandoffWorkflow` child: start, event cursor, deltas, seal.

The cursor (how many of the book's events the child has) moves *before* any await, so
an event recorded by a handler while a signal or the child start is in flight is
forwarded with the next delta or the seal, never skipped. Sessions recorded before
that fix replay the old order (`workflow.patched("handoff-cursor-1")`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.events import HandoffDelta, HandoffInput, SealRequest
    from temporal_handoff.schemas.handoff import HandoffPayload
    from temporal_handoff.schemas.project import StateEvent


class HandoffLink:
    def __init__(self) -> None:
        self.handle: workflow.ChildWorkflowHandle[Any, HandoffPayload] | None = None
        self.sent = 0
        """Events (of the book's list) the child has or will get from signals in flight."""
        self.deltas = 0

    @property
    def started(self) -> bool:
        return self.handle is not None

    async def start(self, inp: HandoffInput, child_id: str, events: list[StateEvent]) -> None:
        """Start the child with a snapshot; `inp.events_since_last_handoff` is `events` now."""
        fixed = workflow.patched("handoff-cursor-1")
        if fixed:
            self.sent = len(inp.events_since_last_handoff)
        self.handle = await workflow.start_child_workflow(
            "HandoffWorkflow",
            inp,
            id=child_id,
            result_type=HandoffPayload,
            static_summary=f"handoff of generation {inp.generation}",
            static_details=(
                f"Builds the handoff payload for session {inp.session_id}, generation "
                f"{inp.generation} → {inp.generation + 1}."
            ),
        )
        if not fixed:
            self.sent = len(events)

    async def send_delta(self, events: list[StateEvent]) -> None:
        """Forward the events recorded since the last delta (none: no signal)."""
        assert self.handle is not None
        new = events[self.sent :]
        if not new:
            return
        fixed = workflow.patched("handoff-cursor-1")
        if fixed:
            self.sent = len(events)
        self.deltas += 1
        await self.handle.signal("delta", HandoffDelta(events=new, seq=self.deltas))
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
            ChildWorkflowError: the payload could not be built.
        """
        assert self.handle is not None
        await self.handle.signal("seal", req)
        return await self.handle

    async def cancel(self) -> None:
        """Cancel a child that is no longer needed and wait for it to close."""
        if self.handle is None:
            return
        self.handle.cancel()
        try:
            await self.handle
        except (ChildWorkflowError, asyncio.CancelledError):
            pass
        self.handle = None
