"""`HandoffWorkflow`: the child that turns a session's state into a handoff payload.

Started when the session enters WARNING with a snapshot of the project state; fed
the events the session applies after each turn (signal `delta`); sealed by signal
`seal` at the handoff threshold, on FLUSH, or when Temporal suggests
continue-as-new. It then builds the payload in an activity and returns it.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.events import HandoffDelta, HandoffInput, SealRequest
    from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload
    from temporal_handoff.schemas.project import EventError, StateEvent, apply_event
    from temporal_handoff.workflows._handoff_link import build_payload


@workflow.defn(name="HandoffWorkflow")
class HandoffWorkflow:
    @workflow.init
    def __init__(self, inp: HandoffInput | None = None) -> None:
        if inp is None:
            raise ApplicationError("HandoffWorkflow needs a HandoffInput argument", non_retryable=True)
        self._inp = inp
        self._state = inp.state.model_copy(deep=True)
        self._events: list[StateEvent] = list(inp.events_since_last_handoff)
        self._deltas = 0
        self._seal: SealRequest | None = None
        self._skipped: list[str] = []

    @workflow.signal(name="delta")
    def delta(self, d: HandoffDelta) -> None:
        self._apply(d.events)
        self._deltas += 1

    def _apply(self, events: list[StateEvent]) -> None:
        for event in events:
            try:
                apply_event(self._state, event)
            except EventError as err:
                # The session only forwards events it applied, so this means the two
                # copies diverged; keep going and say so in the payload.
                self._skipped.append(f"{event.op}: {err}")
            self._events.append(event)

    @workflow.signal(name="seal")
    def seal(self, req: SealRequest) -> None:
        if self._seal is None:
            self._apply(req.events)
            self._seal = req

    @workflow.query(name="progress")
    def progress(self) -> dict[str, int | bool]:
        return {"deltas": self._deltas, "events": len(self._events), "sealed": bool(self._seal)}

    @workflow.run
    async def run(self, inp: HandoffInput | None = None) -> HandoffPayload:
        inp = self._inp
        await workflow.wait_condition(lambda: self._seal is not None)
        seal = self._seal
        assert seal is not None
        # Signals are delivered in order; wait until every delta sent before the seal
        # has been applied here.
        await workflow.wait_condition(lambda: self._deltas >= seal.events_sent)
        context = HandoffContext(
            session_id=inp.session_id,
            generation=inp.generation,
            run_id=inp.run_id,
            reason=seal.reason,
            model=inp.model,
            ledger=seal.ledger,
            lineage=inp.lineage,
            events_since_last_handoff=self._events,
            recent_human_input=seal.recent_human_input,
            tool_state=seal.tool_state,
            paused_seconds=seal.paused_seconds,
            template=seal.template,
        )
        workflow.set_current_details(
            f"sealed ({seal.reason.value}); {len(self._events)} events since last handoff"
        )
        payload = await build_payload(
            self._state, context, inp.level, inp.budgets, inp.max_payload_bytes,
            summary=f"handoff payload gen {inp.generation} ({inp.level.value})",
        )
        if self._skipped:
            payload.note = (payload.note + " " if payload.note else "") + (
                f"{len(self._skipped)} delta events did not apply: {self._skipped[:3]}"
            )
        return payload
