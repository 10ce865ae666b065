"""Resume a closed session as a new one (`handoff start --resume-from ID`).

Where the resumed state comes from, best first:

1. The last run's `SessionResult` (the session completed: abort, `temporal workflow
   cancel`, a guard, all tasks done): its final document, or, if it has none (e.g.
   HANDOFF_FAILED), one built from the result's state the way `build_handoff` builds it.
2. No result (terminated, failed, timed out): the last run's history replayed with the
   workflow code itself. That gives exactly the state the run had applied: tool calls
   from the model results in the history, accepted updates and signals, the ledger
   (each recorded model call once), health, human text not yet shown to the model and
   commands waiting for a successor.
3. If that history does not replay with this code: the state in the
   `SessionWorkflowError` failure (a workflow bug), else the state the run started with.

The config is the last run's (every run of a session starts with the same one); the
keys given with `--config` override it. The new session's lineage continues the old
one's, so `recall` and `handoff history` reach back across workflow ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHistory,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    Replayer,
    UnsandboxedWorkflowRunner,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from temporal_handoff.activities.handoff_activity import BuildHandoffInput, render_payload
from temporal_handoff.runs import RunUnreadable, read_run
from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload, RunRef
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import EventError, ProjectState, StateEvent, apply_event
from temporal_handoff.schemas.session import Command, Health, SessionInput
from temporal_handoff.schemas.tokens import TokenLedger

SESSION_WORKFLOW = "AgentSessionWorkflow"


class ResumeError(Exception):
    """One-line reason the session cannot be resumed (`code`: CLI exit code)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Resumed:
    input: SessionInput
    """The new session's input."""
    note: str
    """One line: which session and run it continues, and what the state was taken from."""


@dataclass
class RunState:
    """What a run had applied when it stopped (see `replayed_state`)."""

    state: ProjectState
    ledger: TokenLedger
    health: Health
    events: list[StateEvent] = field(default_factory=list)
    pending_say: list[str] = field(default_factory=list)
    recent_human: list[str] = field(default_factory=list)
    inbox: list[Command] = field(default_factory=list)
    paused_seconds: float = 0.0


# ---------------------------------------------------------------- config
def merge_config(base: SessionConfig, overrides: dict[str, Any] | None) -> SessionConfig:
    """`base` with the keys of `overrides` replaced, validated as a whole.

    Raises:
        pydantic.ValidationError: an override is unknown or invalid (the field is named).
    """
    if not overrides:
        return base
    validate_human(SessionConfig, overrides)  # unknown keys are named on their own
    merged = {**base.model_dump(mode="json"), **overrides}
    return SessionConfig.model_validate_json(json.dumps(merged))


# ---------------------------------------------------------------- the closed run
async def closed_session(client: Client, workflow_id: str, *, wait: bool = False) -> str:
    """The run id of the session's latest run once it is closed.

    Raises:
        ResumeError: unknown id, not a session, or still running (and not `wait`).
    """
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ResumeError(f"resume_from: unknown workflow {workflow_id!r}") from None
        raise
    if desc.workflow_type != SESSION_WORKFLOW:
        raise ResumeError(
            f"resume_from: {workflow_id!r} is a {desc.workflow_type}, not an {SESSION_WORKFLOW}"
        )
    if desc.status == WorkflowExecutionStatus.RUNNING:
        if not wait:
            raise ResumeError(
                f"resume_from: session {workflow_id!r} is still running; stop it with "
                f"`handoff abort {workflow_id}` or pass --wait to resume once it closes"
            )
        try:
            await handle.result(follow_runs=True)
        except WorkflowFailureError:
            pass  # terminated, failed, timed out: resumed from its history below
        desc = await handle.describe()
    return desc.run_id


# ---------------------------------------------------------------- replay
class _CaptureInstance(Interceptor):
    """Keeps the workflow object a replay creates, to read its state afterwards."""

    def __init__(self) -> None:
        self.instances: list[Any] = []

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        instances = self.instances

        class Capture(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                instances.append(workflow.instance())
                return await super().execute_workflow(input)

        return Capture


async def replayed_state(client: Client, history: WorkflowHistory) -> RunState | str:
    """The state the run had applied, by replaying its history with this code; or
    why that is not possible (recorded by incompatible code, never ran a task)."""
    from temporal_handoff.workers.plugin import HandoffPlugin
    from temporal_handoff.workflows.session import AgentSessionWorkflow

    capture = _CaptureInstance()
    replayer = Replayer(
        workflows=[],
        plugins=[HandoffPlugin()],
        data_converter=client.data_converter,
        interceptors=[capture],
        # Trusted code, read back in this process; the coroutines left waiting at the
        # end of the history are dropped, not cancelled into (that would run code).
        workflow_runner=UnsandboxedWorkflowRunner(),
        disable_safe_workflow_eviction=True,
    )
    try:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    except Exception as err:  # the fallback says why, in one line
        return _first_line(err)
    if result.replay_failure is not None:
        return _first_line(result.replay_failure)
    wf = capture.instances[-1] if capture.instances else None
    if not isinstance(wf, AgentSessionWorkflow):
        return "the run never ran a workflow task"
    try:
        # The workflow's working state (see workflows/_book.py): read, never changed.
        book = wf._book
        return RunState(
            state=book.state,
            ledger=wf._ledger,
            health=book.health,
            events=list(book.events),
            pending_say=list(book.pending_say),
            recent_human=list(book.recent_human[-10:]),
            inbox=list(book.inbox),
            paused_seconds=wf._longest_pause,
        )
    except AttributeError as err:  # the workflow's fields were renamed
        return f"cannot read the replayed state ({err})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# ---------------------------------------------------------------- building
def build_seed(
    state: ProjectState, ctx: HandoffContext, cfg: SessionConfig
) -> HandoffPayload:
    """The continuation prompt, as the `build_handoff` activity renders it (no document:
    the successor needs the prompt and the summary line)."""
    payload = render_payload(
        BuildHandoffInput(
            state=state,
            context=ctx,
            level=cfg.compression_level,
            budgets=cfg.level_budgets,
            calibration=ctx.ledger.calibration,
            max_payload_bytes=cfg.max_payload_bytes,
        )
    )
    return payload.seed()


def _record_stop(state: ProjectState, generation: int, text: str) -> None:
    """Note in the state why the run stopped, so the resumed agent sees it."""
    event = StateEvent(
        op="record_error",
        args={"source": "session", "message": text[:16_000]},
        by="system",
        generation=generation,
    )
    try:
        apply_event(state, event)
    except EventError:
        pass


async def resume_session(
    client: Client,
    workflow_id: str,
    overrides: dict[str, Any] | None = None,
    *,
    wait: bool = False,
) -> Resumed:
    """The input of a new session that continues `workflow_id` (closed in any way).

    Args:
        overrides: `SessionConfig` keys that replace the session's own config.
        wait: wait for a running session to close instead of refusing it.

    Raises:
        ResumeError: the session is unknown, running, or its history cannot be read.
        pydantic.ValidationError: an override is invalid.
    """
    run_id = await closed_session(client, workflow_id, wait=wait)
    try:
        last = await read_run(client, workflow_id, run_id, calls=False)
    except RunUnreadable as err:
        raise ResumeError(f"resume_from: {err}") from None
    except RPCError:
        raise
    except Exception as err:  # any decoding problem is one line
        raise ResumeError(
            f"resume_from: cannot read run {run_id} of {workflow_id!r}: {_first_line(err)}"
        ) from None
    last_input = last.input
    cfg = merge_config(last_input.config, overrides)
    where = f"{workflow_id} run {run_id}"

    if last.result is not None:
        result = last.result
        if result.final_handoff is None:
            ctx = HandoffContext(
                session_id=workflow_id, generation=result.generation, run_id=run_id,
                reason=result.reason, model=last_input.config.model_for(result.generation),
                ledger=result.ledger, lineage=result.lineage,
            )
            result = result.model_copy(
                update={"final_handoff": build_seed(result.project, ctx, cfg)}
            )
            source = "its result's state (document built from it)"
        else:
            source = "its final handoff document"
        inp = result.resume_input(cfg)
        return Resumed(inp, _note(where, result.reason.value, source, inp))

    # No result: what the run had applied, from its history.
    gen = last_input.generation
    lineage = list(last_input.lineage) + [
        RunRef(generation=gen, workflow_id=workflow_id, run_id=run_id)
    ]
    replayed = await replayed_state(client, last.history)
    if isinstance(replayed, RunState):
        run = replayed
        source = "its history, replayed"
    else:
        state = last.failure_state
        if state is not None:
            source = f"the state in its failure (history did not replay: {replayed})"
        else:
            state = last_input.project.model_copy(deep=True)
            source = f"the state it started with (history did not replay: {replayed})"
        run = RunState(
            state=state,
            ledger=(last_input.ledger or TokenLedger()).model_copy(deep=True),
            health=Health(**{k: v for k, v in last_input.health.items() if k in Health.model_fields}),
            pending_say=list(last_input.pending_human_text),
            inbox=list(last_input.inbox),
        )
    if last.status == "FAILED":
        failed = last.failure_text or "failed"
        _record_stop(run.state, gen, f"session run failed: {failed}"[:2000])
    elif last.status == "TIMED_OUT":
        _record_stop(run.state, gen, "session run timed out (workflow execution timeout)")
    reason = TerminationReason.USER_ABORT
    ctx = HandoffContext(
        session_id=workflow_id, generation=gen, run_id=run_id, reason=reason,
        model=last_input.config.model_for(gen), ledger=run.ledger, lineage=lineage,
        events_since_last_handoff=run.events, recent_human_input=run.recent_human,
        paused_seconds=run.paused_seconds,
    )
    inp = SessionInput(
        config=cfg,
        project=run.state,
        handoff=build_seed(run.state, ctx, cfg),
        generation=gen + 1,
        inbox=run.inbox,
        pending_human_text=run.pending_say,
        ledger=run.ledger,
        lineage=lineage,
        health=run.health.model_dump(exclude={"tasks_per_hour"}),
        handoff_reason=reason,
    )
    return Resumed(inp, _note(where, last.status, source, inp))


def _note(where: str, ended: str, source: str, inp: SessionInput) -> str:
    p = inp.project
    calls = inp.ledger.calls if inp.ledger is not None else 0
    return (
        f"resuming {where} ({ended}) from {source}: generation {inp.generation}, "
        f"{p.completed_count}/{len(p.tasks)} tasks done, {calls} model calls so far"
    )
