"""`HandoffWorkflow`: the child that turns a session's state into a handoff payload.

Started when the session enters WARNING with a snapshot of the project state; fed
the events the session applies after each turn (signal `delta`); sealed by signal
`seal` at the handoff threshold, on FLUSH, or when Temporal suggests
continue-as-new. It then builds the payload in an activity and returns it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.events import HandoffInput, SealRequest
    from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload
    from temporal_handoff.schemas.state_events import EventError, StateEvent, apply_event
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
        self._bad_seal = ""
        self._skipped: list[str] = []

    # `delta` and `seal` come from the session, but possibly from a newer worker (an
    # event op or enum value this worker does not know) or from anyone who can signal:
    # they are read by hand, so nothing is dropped silently. A delta always counts (the
    # seal waits for `events_sent` of them); its unreadable events are named in the
    # payload's note. An unreadable seal fails this child, and the session then builds
    # the payload itself.
    @workflow.signal(name="delta")
    def delta(self, *raw: Any) -> None:
        self._deltas += 1
        data = raw[0] if len(raw) == 1 else None
        items = data.get("events") if isinstance(data, dict) else None
        if not isinstance(items, list):
            self._skipped.append(f"delta {self._deltas}: unreadable ({_shape(raw)})")
            return
        events: list[StateEvent] = []
        for item in items:
            try:
                events.append(StateEvent.model_validate(item))
            except ValidationError as err:
                first = err.errors()[0]
                op = item.get("op", "?") if isinstance(item, dict) else "?"
                self._skipped.append(f"{op}: unreadable ({first['msg']})")
        self._apply(events)

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
    def seal(self, *raw: Any) -> None:
        if self._seal is not None or self._bad_seal:
            return
        try:
            req = SealRequest.model_validate(raw[0] if len(raw) == 1 else None)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "seal"
            self._bad_seal = f"{loc}: {first['msg']}"
            return
        self._apply(req.events)
        self._seal = req

    @workflow.query(name="progress")
    def progress(self) -> dict[str, int | bool]:
        return {"deltas": self._deltas, "events": len(self._events), "sealed": bool(self._seal)}

    @workflow.run
    async def run(self, inp: HandoffInput | None = None) -> HandoffPayload:
        inp = self._inp
        await workflow.wait_condition(lambda: self._seal is not None or bool(self._bad_seal))
        seal = self._seal
        if seal is None:
            raise ApplicationError(
                f"seal could not be read ({self._bad_seal}); the session builds the payload",
                type="UnreadableSeal",
                non_retryable=True,
            )
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
            recent_exchange=seal.recent_exchange,
            tool_state=seal.tool_state,
            paused_seconds=seal.paused_seconds,
            template=seal.template,
            agent_note=seal.agent_note,
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


def _shape(raw: tuple[Any, ...]) -> str:
    return ", ".join(type(v).__name__ for v in raw) or "no input"
