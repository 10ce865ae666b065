"""`AgentSessionWorkflow`: one Claude agent session, one generation per run.

Each turn: call the model (the activity does the pre-flight token estimate), add
the exact usage to the ledger, apply tool calls. State tools change the project
state here, deterministically, as events; `recall` and user tools are activities.
At the warn threshold a `HandoffWorkflow` child starts and receives each turn's
events; at the handoff threshold (or FLUSH, or when Temporal suggests it) the child
is sealed, returns the payload, and this run continues-as-new as its successor.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.events import (
        HandoffDelta,
        HandoffInput,
        LifecycleEvent,
        RecallRequest,
        SealRequest,
    )
    from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload, RunRef
    from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
    from temporal_handoff.schemas.model_io import (
        ModelInfoRequest,
        ModelInfoResult,
        ModelRequest,
        ModelResponse,
        ToolSpec,
        message_text,
    )
    from temporal_handoff.schemas.project import (
        BlockerType,
        EventError,
        EventOp,
        StateEvent,
        apply_event,
        check_event,
    )
    from temporal_handoff.schemas.session import (
        AbortArgs,
        Command,
        CommandKind,
        DecideArgs,
        Health,
        SayArgs,
        SessionInput,
        SessionResult,
        SessionStatus,
        TaskCommandArgs,
    )
    from temporal_handoff.schemas.tokens import TokenLedger
    from temporal_handoff.schemas.tools import STATE_TOOLS, state_tool_specs
    from temporal_handoff.schemas.visibility import search_attribute_updates

def model_retry(initial_s: float) -> RetryPolicy:
    """Unlimited attempts for retryable errors; non-retryable ones fail at once."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=initial_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=max(60.0, initial_s)),
        maximum_attempts=0,
    )


def eligible_line(ids: list[str]) -> str:
    """The one line that tells the agent what it may do next (parsed by the fake brain)."""
    if not ids:
        return "Next eligible tasks: (none)"
    return "Next eligible tasks: " + ", ".join(f"`{i}`" for i in ids)


class _Handoff(Exception):
    """Raised inside the turn loop to leave it for a handoff."""

    def __init__(self, reason: TerminationReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


@workflow.defn(name="AgentSessionWorkflow")
class AgentSessionWorkflow:
    @workflow.init
    def __init__(self, inp: SessionInput | None = None) -> None:
        if inp is None:
            raise ApplicationError(
                "AgentSessionWorkflow needs a SessionInput argument", non_retryable=True
            )
        self._inp = inp
        self._cfg = inp.config
        self._state = inp.project.model_copy(deep=True)
        self._generation = inp.generation
        self._model = self._cfg.model_for(inp.generation)
        self._ledger = (inp.ledger or TokenLedger()).new_generation()
        self._lifecycle = LifecycleState.INITIALIZING
        self._messages: list[dict[str, Any]] = []
        self._known_upto = 0  # messages covered by the ledger's exact occupancy
        self._turn = 0
        self._paused = inp.paused
        self._abort: AbortArgs | None = None
        self._flush = False
        self._sealing = False
        self._inbox: list[Command] = []
        self._pending_say: list[str] = []
        self._recent_human: list[str] = []
        self._events: list[StateEvent] = []  # applied this generation
        self._events_sent = 0  # of self._events, forwarded to the child
        self._deltas_sent = 0
        self._child: workflow.ChildWorkflowHandle[Any, HandoffPayload] | None = None
        self._health = Health(**{k: v for k, v in inp.health.items() if k in Health.model_fields})
        self._started: datetime | None = None
        self._notifying: list[workflow.ActivityHandle[None]] = []
        """Notifications running alongside the session; awaited at the next safe point."""
        self._longest_pause = 0.0
        self._warned = False
        self._pending_say.extend(inp.pending_human_text)
        # Commands carried from the predecessor's handoff are applied first.
        for cmd in inp.inbox:
            self._apply_command(cmd)

    # ---------------------------------------------------------------- handlers
    @workflow.update(name="decide")
    def decide(self, args: DecideArgs) -> str:
        cmd = Command(kind=CommandKind.DECIDE, args=args.model_dump(), at=workflow.now(), by=args.by)
        return self._accept(cmd)

    @decide.validator
    def _validate_decide(self, args: DecideArgs) -> None:
        blocker = self._state.blocker(args.blocker_id)
        if blocker is None:
            raise ValueError(f"unknown blocker {args.blocker_id!r}")
        pending = any(
            c.kind == CommandKind.DECIDE and c.args.get("blocker_id") == args.blocker_id
            for c in self._inbox
        )
        if blocker.status == "resolved" or pending:
            raise ValueError(f"blocker {args.blocker_id!r} is already resolved")

    @workflow.update(name="skip_task")
    def skip_task(self, args: TaskCommandArgs) -> str:
        cmd = Command(kind=CommandKind.SKIP, args=args.model_dump(), at=workflow.now(), by=args.by)
        return self._accept(cmd)

    @skip_task.validator
    def _validate_skip(self, args: TaskCommandArgs) -> None:
        self._check_task_event("skip_task", args)

    @workflow.update(name="retry_task")
    def retry_task(self, args: TaskCommandArgs) -> str:
        cmd = Command(kind=CommandKind.RETRY, args=args.model_dump(), at=workflow.now(), by=args.by)
        return self._accept(cmd)

    @retry_task.validator
    def _validate_retry(self, args: TaskCommandArgs) -> None:
        self._check_task_event("retry_task", args)

    @workflow.update(name="say")
    def say(self, args: SayArgs) -> str:
        cmd = Command(kind=CommandKind.SAY, args=args.model_dump(), at=workflow.now(), by=args.by)
        return self._accept(cmd)

    @say.validator
    def _validate_say(self, args: SayArgs) -> None:
        size = len(args.text.encode("utf-8"))
        if size > self._cfg.max_human_text_bytes:
            raise ValueError(
                f"text is {size} bytes; the limit is {self._cfg.max_human_text_bytes} bytes"
            )

    @workflow.signal(name="pause")
    def pause(self) -> None:
        self._accept(Command(kind=CommandKind.PAUSE, at=workflow.now()))

    @workflow.signal(name="resume")
    def resume(self) -> None:
        self._accept(Command(kind=CommandKind.RESUME, at=workflow.now()))

    @workflow.signal(name="flush")
    def flush(self) -> None:
        self._accept(Command(kind=CommandKind.FLUSH, at=workflow.now()))

    @workflow.signal(name="abort")
    def abort(self, *raw: Any) -> None:
        # Validated by hand: a signal cannot be rejected, so a malformed one (wrong
        # type, extra arguments) is logged and dropped instead of failing the task.
        if len(raw) > 1:
            workflow.logger.warning("abort: dropped, expected at most one argument")
            return
        try:
            args = AbortArgs.model_validate(raw[0]) if raw and raw[0] is not None else AbortArgs()
        except ValidationError as err:
            workflow.logger.warning("abort: dropped malformed arguments: %s", err.errors()[0]["msg"])
            return
        self._accept(Command(kind=CommandKind.ABORT, args=args.model_dump(), at=workflow.now()))

    @workflow.query(name="status")
    def status(self) -> SessionStatus:
        hours = 0.0
        if self._started is not None:
            hours = max((workflow.now() - self._started).total_seconds() / 3600, 1e-9)
        done_here = sum(1 for e in self._events if e.op == "complete_task")
        health = self._health.model_copy()
        health.tasks_per_hour = done_here / hours if hours else 0.0
        return SessionStatus(
            session_id=workflow.info().workflow_id,
            lifecycle=self._lifecycle,
            generation=self._generation,
            turn=self._turn,
            context_window=self._ledger.context_window,
            context_tokens=self._ledger.next_prompt_tokens,
            context_pct=round(100 * self._ledger.usage_fraction, 2),
            total_tokens=self._ledger.total_tokens,
            cost_usd=round(self._ledger.cost_usd, 6),
            tasks_done=self._state.completed_count,
            tasks_total=len(self._state.tasks),
            next_eligible=self._state.next_eligible(limit=10),
            open_blockers=[
                {"id": b.id, "type": b.type.value, "description": b.description[:200]}
                for b in self._state.open_blockers()
            ],
            paused=self._paused,
            inbox=len(self._inbox),
            health=health,
            model=self._model,
        )

    @workflow.query(name="project")
    def project(self) -> dict[str, Any]:
        return self._state.model_dump(mode="json")

    # ---------------------------------------------------------------- commands
    def _check_task_event(self, op: EventOp, args: TaskCommandArgs) -> None:
        try:
            check_event(self._state, StateEvent(op=op, args={"task_id": args.task_id}))
        except EventError as err:
            raise ValueError(str(err)) from None

    def _accept(self, cmd: Command) -> str:
        """Apply a command now, or keep it for the successor while a handoff is sealing."""
        if self._sealing and cmd.kind not in (CommandKind.PAUSE, CommandKind.RESUME):
            self._inbox.append(cmd)
            return "queued for the successor (handoff in progress)"
        return self._apply_command(cmd)

    def _apply_command(self, cmd: Command) -> str:
        kind = cmd.kind
        if kind == CommandKind.PAUSE:
            self._paused = True
            return "paused"
        if kind == CommandKind.RESUME:
            self._paused = False
            return "resumed"
        if kind == CommandKind.FLUSH:
            self._flush = True
            return "flush requested"
        if kind == CommandKind.ABORT:
            self._abort = AbortArgs.model_validate(cmd.args)
            return "abort requested"
        if kind == CommandKind.SAY:
            text = str(cmd.args.get("text", ""))
            self._pending_say.append(text)
            self._recent_human.append(text)
            self._record(StateEvent(op="human_message", args={"text": text}, at=cmd.at, by=cmd.by))
            return "message queued for the next turn"
        if kind == CommandKind.DECIDE:
            args = DecideArgs.model_validate(cmd.args)
            by = f"human:{args.by}" if not args.by.startswith("human") else args.by
            self._record(
                StateEvent(
                    op="resolve_blocker",
                    args={"blocker_id": args.blocker_id, "resolution": args.decision},
                    at=cmd.at, by=by,
                )
            )
            self._record(
                StateEvent(
                    op="record_decision",
                    args={
                        "decision_id": f"HD-{args.blocker_id}",
                        "title": args.decision,
                        "rationale": args.rationale,
                        "blocker_id": args.blocker_id,
                    },
                    at=cmd.at, by=by,
                )
            )
            note = f"Human decision on blocker `{args.blocker_id}`: {args.decision}"
            if args.rationale:
                note += f" (rationale: {args.rationale})"
            self._pending_say.append(note)
            self._recent_human.append(note)
            return f"decision recorded for {args.blocker_id}"
        # skip / retry
        args_t = TaskCommandArgs.model_validate(cmd.args)
        op: EventOp = "skip_task" if kind == CommandKind.SKIP else "retry_task"
        result = self._record(
            StateEvent(op=op, args={"task_id": args_t.task_id}, at=cmd.at, by=f"human:{args_t.by}")
        )
        if kind == CommandKind.RETRY:
            self._health.retries += 1
        self._pending_say.append(f"Operator: {result}.")
        return result

    def _record(self, event: StateEvent) -> str:
        """Apply an event to the state and remember it for the handoff child."""
        event.generation = self._generation
        result = apply_event(self._state, event)
        self._events.append(event)
        return result

    # ---------------------------------------------------------------- main loop
    @workflow.run
    async def run(self, inp: SessionInput | None = None) -> SessionResult:
        inp = self._inp
        self._started = inp.started_at or workflow.now()
        same_model = (
            inp.generation > 0
            and inp.ledger is not None
            and self._cfg.model_for(inp.generation - 1) == self._model
        )
        if not (same_model and workflow.patched("reuse-context-window-1")):
            info = await workflow.execute_activity(
                "model_info",
                ModelInfoRequest(model=self._model, override=self._cfg.context_window),
                result_type=ModelInfoResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
            self._ledger.context_window = info.context_window
        if inp.announce_handoff and inp.handoff is not None:
            # The predecessor left this to us so the handoff's critical path is
            # shorter; it runs alongside the first model call.
            self._notifying.append(
                self._start_notify("HANDOFF", inp.handoff_reason, inp.handoff.summary())
            )
        self._lifecycle = LifecycleState.ACTIVE
        self._messages = [{"role": "user", "content": self._opening_text(inp.handoff)}]
        self._upsert_visibility(inp.handoff)
        try:
            return await self._turns(inp)
        except _Handoff as h:
            return await self._handoff(h.reason)

    def _system(self, handoff: HandoffPayload | None) -> list[dict[str, Any]]:
        text = self._cfg.system_prompt
        if handoff is not None:
            text += "\n\n# Handoff from your previous generation\n\n" + handoff.prompt
        # The base prompt + continuation prompt is the stable prefix of every call in
        # this generation: mark it so Claude's prompt cache makes it cheap.
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]

    def _opening_text(self, handoff: HandoffPayload | None) -> str:
        s = self._state
        if handoff is not None:
            return (
                f"You are generation {self._generation} of session "
                f"{workflow.info().workflow_id}. Continue the work described in the handoff "
                "above. Use the `recall` tool for details it left out."
            )
        phases = ", ".join(f"{p.id} ({p.name})" for p in s.phases) or "none"
        lines = [
            f"Project: {s.name}",
            f"Request: {s.original_request}" if s.original_request else "",
            f"Goal: {s.goal}" if s.goal else "",
            f"Phases: {phases}",
            f"Tasks: {len(s.tasks)} ({s.completed_count} done)",
            f"Current phase: {s.current_phase or 'n/a'}",
            eligible_line(s.next_eligible()),
        ]
        return "\n".join(line for line in lines if line)

    def _tools(self) -> list[ToolSpec]:
        return state_tool_specs() + list(self._cfg.user_tools)

    async def _turns(self, inp: SessionInput) -> SessionResult:
        idle = 0
        while True:
            await self._wait_runnable()
            if self._abort is not None:
                return await self._finish(TerminationReason.USER_ABORT, self._abort.reason)
            if self._flush:
                raise _Handoff(TerminationReason.MANUAL_FLUSH)
            if self._state.all_done:
                return await self._finish(TerminationReason.TASK_COMPLETED, "all tasks done")
            if self._budget_exhausted():
                return await self._finish(TerminationReason.BUDGET_EXHAUSTED, "budget reached")
            if workflow.info().is_continue_as_new_suggested():
                raise _Handoff(TerminationReason.HISTORY_LIMIT)
            if self._turn >= self._cfg.max_turns_per_generation:
                raise _Handoff(TerminationReason.HISTORY_LIMIT)

            self._flush_human_text()
            resp = await self._call_model()
            await self._notified()
            if resp is None:  # non-retryable model error: now awaiting a decision
                continue
            if resp.preflight_refused:
                raise _Handoff(TerminationReason.CONTEXT_HANDOFF)
            self._ledger.record(resp.usage, self._model, resp.estimated_new_tokens)
            self._health.model_calls += 1
            self._messages.append({"role": "assistant", "content": resp.content})
            self._known_upto = len(self._messages)
            if resp.stop_reason == "model_context_window_exceeded":
                raise _Handoff(TerminationReason.CONTEXT_HANDOFF)

            tool_uses = [b for b in resp.content if b.get("type") == "tool_use"]
            if tool_uses:
                results = [await self._run_tool(tu) for tu in tool_uses]
                self._messages.append({"role": "user", "content": results})
                idle = 0
            elif self._state.all_done:
                continue
            elif self._state.human_decision_pending():
                self._messages.append({"role": "user", "content": self._awaiting_text()})
            else:
                idle += 1
                if idle >= 3:
                    return await self._finish(
                        TerminationReason.AGENT_FINISHED,
                        "the model stopped three times without progress",
                    )
                self._messages.append(
                    {
                        "role": "user",
                        "content": "Continue with the plan. "
                        + eligible_line(self._state.next_eligible()),
                    }
                )
            self._ledger.pending_estimate = self._rough_tokens(self._messages[-1])
            await self._after_turn()

    def _rough_tokens(self, message: dict[str, Any]) -> int:
        # tiktoken is not allowed in workflow code; ~4 characters per token, calibrated,
        # is only used for the lifecycle gauge. The activity's pre-flight is exact-ish.
        return int(len(message_text(message)) / 4 * self._ledger.calibration) + 1

    def _awaiting_text(self) -> str:
        ids = ", ".join(
            f"`{b.id}`" for b in self._state.open_blockers() if b.type == BlockerType.HUMAN_DECISION
        )
        return f"AWAITING DECISION on {ids}. Do not continue until a human decides."

    async def _wait_runnable(self) -> None:
        def runnable() -> bool:
            if self._abort is not None or self._flush:
                return True
            return not self._paused and not self._state.human_decision_pending()

        if runnable():
            return
        self._lifecycle = (
            LifecycleState.PAUSED if self._paused else LifecycleState.AWAITING_DECISION
        )
        self._set_details()
        start = workflow.now()
        timeout = self._cfg.human_decision_timeout_s
        if self._paused or timeout is None:
            await workflow.wait_condition(runnable)
        else:
            try:
                await workflow.wait_condition(runnable, timeout=timedelta(seconds=timeout))
            except TimeoutError:
                self._defer_decisions()
        self._longest_pause = max(self._longest_pause, (workflow.now() - start).total_seconds())
        if not self._paused and self._lifecycle in (
            LifecycleState.PAUSED,
            LifecycleState.AWAITING_DECISION,
        ):
            self._lifecycle = self._ledger.state_for(
                self._cfg.warn_threshold, self._cfg.handoff_threshold
            )
        if not runnable():  # e.g. resumed, but a decision is still pending
            await self._wait_runnable()

    def _defer_decisions(self) -> None:
        for b in self._state.open_blockers():
            if b.type == BlockerType.HUMAN_DECISION:
                self._record(
                    StateEvent(
                        op="resolve_blocker",
                        args={"blocker_id": b.id, "resolution": "deferred: decision timed out"},
                        at=workflow.now(), by="policy:timeout",
                    )
                )
                self._pending_say.append(
                    f"No human decided blocker `{b.id}` in time; it is deferred. Continue."
                )

    def _flush_human_text(self) -> None:
        if not self._pending_say:
            return
        text = "\n".join(f"[human] {t}" for t in self._pending_say)
        self._pending_say = []
        last = self._messages[-1]
        if last["role"] == "user":
            content = last["content"]
            if isinstance(content, str):
                last["content"] = content + "\n\n" + text
            else:
                last["content"] = list(content) + [{"type": "text", "text": text}]
        else:
            self._messages.append({"role": "user", "content": text})

    def _budget_exhausted(self) -> bool:
        if self._cfg.token_budget is not None and self._ledger.total_tokens >= self._cfg.token_budget:
            return True
        return self._cfg.usd_budget is not None and self._ledger.cost_usd >= self._cfg.usd_budget

    async def _call_model(self) -> ModelResponse | None:
        self._turn += 1
        req = ModelRequest(
            model=self._model,
            system=self._system(self._inp.handoff),
            messages=self._messages,
            tools=self._tools(),
            max_tokens=self._cfg.max_tokens,
            turn=self._turn,
            generation=self._generation,
            known_occupancy=self._ledger.occupancy,
            new_from_index=self._known_upto if self._ledger.occupancy else 0,
            calibration=self._ledger.calibration,
            preflight_limit=int(self._cfg.handoff_threshold * self._ledger.context_window),
            stream_threshold=self._cfg.stream_threshold,
        )
        try:
            return await workflow.execute_activity(
                "call_model",
                req,
                result_type=ModelResponse,
                start_to_close_timeout=timedelta(seconds=self._cfg.model_call_timeout_s),
                heartbeat_timeout=timedelta(seconds=max(30.0, self._cfg.model_call_timeout_s / 4))
                if req.max_tokens > req.stream_threshold
                else None,
                retry_policy=model_retry(self._cfg.model_retry_initial_s),
                summary=f"turn {self._turn} · gen {self._generation} · "
                f"{100 * self._ledger.usage_fraction:.0f}% context",
            )
        except ActivityError as err:
            cause = err.cause
            if not isinstance(cause, ApplicationError):
                raise
            details = cause.details[0] if cause.details else {}
            status = details.get("status") if isinstance(details, dict) else None
            message = details.get("message", cause.message) if isinstance(details, dict) else cause.message
            if status == 413 or "prompt is too long" in str(message):
                raise _Handoff(TerminationReason.CONTEXT_HANDOFF) from None
            # Bad request, auth, permission, not found: raise a blocker an operator can
            # answer with `decide` (after fixing configuration) instead of failing.
            self._health.failures += 1
            bid = f"MODEL-{self._generation}-{self._turn}"
            self._record(
                StateEvent(
                    op="add_blocker",
                    args={
                        "blocker_id": bid,
                        "blocker_type": BlockerType.HUMAN_DECISION.value,
                        "description": f"model call failed ({status}): {message}",
                    },
                    at=workflow.now(), by="system",
                )
            )
            self._record(
                StateEvent(
                    op="record_error",
                    args={"source": "model", "message": f"{status}: {message}"},
                    at=workflow.now(), by="system",
                )
            )
            self._health.blockers_opened += 1
            self._turn -= 1
            return None

    async def _run_tool(self, tool_use: dict[str, Any]) -> dict[str, Any]:
        name = str(tool_use.get("name", ""))
        tool_input = tool_use.get("input") or {}
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use.get("id", "")}
        if name in STATE_TOOLS:
            op = STATE_TOOLS[name]
            try:
                event = StateEvent(op=op, args=dict(tool_input), at=workflow.now(), by="agent")
                text = self._record(event)
                if text.startswith("recorded decision"):
                    self._health.decisions_recorded += 1
                if text.startswith("completed "):
                    self._health.tasks_completed += 1
                if op == "fail_task":
                    self._health.failures += 1
                if op == "add_blocker":
                    self._health.blockers_opened += 1
            except EventError as err:
                text = f"error: {err}"
                result["is_error"] = True
            result["content"] = text + "\n" + self._progress_line()
            return result
        if name == "recall":
            result["content"] = await self._recall(tool_input)
            if result["content"].startswith("error:"):
                result["is_error"] = True
            return result
        user_tool = next((t for t in self._cfg.user_tools if t.name == name), None)
        if user_tool is None:
            result["content"] = f"error: unknown tool {name!r}"
            result["is_error"] = True
            return result
        try:
            out = await workflow.execute_activity(
                f"tool:{name}",
                tool_input,
                result_type=str,
                start_to_close_timeout=timedelta(seconds=300),
                summary=f"tool {name} (turn {self._turn})",
            )
            result["content"] = str(out)
        except ActivityError as err:
            result["content"] = f"error: {err.cause or err}"
            result["is_error"] = True
        return result

    def _progress_line(self) -> str:
        s = self._state
        if s.all_done:
            return "ALL TASKS COMPLETE."
        return f"Progress: {s.completed_count}/{len(s.tasks)} done. " + eligible_line(
            s.next_eligible()
        )

    def _lineage(self) -> list[RunRef]:
        info = workflow.info()
        return list(self._inp.lineage) + [
            RunRef(generation=self._generation, workflow_id=info.workflow_id, run_id=info.run_id)
        ]

    async def _recall(self, tool_input: dict[str, Any]) -> str:
        try:
            req = RecallRequest(
                session_id=workflow.info().workflow_id,
                lineage=self._lineage(),
                generation=int(tool_input.get("generation", max(0, self._generation - 1))),
                section=str(tool_input.get("section", "tasks")),
                ids=[str(i) for i in tool_input.get("ids") or []],
            )
        except (ValueError, TypeError) as err:
            return f"error: bad recall input: {err}"
        try:
            return await workflow.execute_activity(
                "recall",
                req,
                result_type=str,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
                summary=f"recall gen {req.generation} {req.section}",
            )
        except ActivityError as err:
            cause = err.cause
            return f"error: {cause.message if isinstance(cause, ApplicationError) else err}"

    # ---------------------------------------------------------------- thresholds
    async def _after_turn(self) -> None:
        cfg = self._cfg
        self._lifecycle = self._ledger.state_for(cfg.warn_threshold, cfg.handoff_threshold)
        if self._lifecycle != LifecycleState.ACTIVE and self._child is None:
            # Entering WARNING (or jumping past both thresholds at once): start the
            # child now; a jump straight to CRITICAL seals it right below.
            if workflow.patched("fast-handoff-1"):
                self._notifying.append(self._start_notify("WARNING"))
            else:
                await self._notify("WARNING")
            await self._start_child()
        elif self._child is not None:
            await self._send_delta()
        if self._lifecycle == LifecycleState.CRITICAL:
            raise _Handoff(TerminationReason.CONTEXT_HANDOFF)
        self._upsert_visibility(None)

    async def _start_child(self) -> None:
        info = workflow.info()
        # Events applied before the child starts are part of its snapshot already; the
        # list is passed so the payload can say what changed since the last handoff.
        snapshot_events = list(self._events)
        self._child = await workflow.start_child_workflow(
            "HandoffWorkflow",
            HandoffInput(
                session_id=info.workflow_id,
                generation=self._generation,
                run_id=info.run_id,
                model=self._model,
                state=self._state,
                events_since_last_handoff=snapshot_events,
                lineage=self._lineage(),
                level=self._cfg.compression_level,
                budgets=self._cfg.level_budgets,
                max_payload_bytes=self._cfg.max_payload_bytes,
            ),
            id=f"{info.workflow_id}-handoff-{self._generation}",
            result_type=HandoffPayload,
            static_summary=f"handoff of generation {self._generation}",
            static_details=(
                f"Builds the handoff payload for session {info.workflow_id}, generation "
                f"{self._generation} → {self._generation + 1}."
            ),
        )
        self._events_sent = len(self._events)

    async def _send_delta(self) -> None:
        assert self._child is not None
        new = self._events[self._events_sent :]
        if not new:
            return
        self._deltas_sent += 1
        await self._child.signal("delta", HandoffDelta(events=new, seq=self._deltas_sent))
        self._events_sent = len(self._events)

    async def _handoff(self, reason: TerminationReason) -> SessionResult:
        if self._generation + 1 >= self._cfg.max_generations:
            return await self._finish(
                TerminationReason.MAX_GENERATIONS,
                f"max generations ({self._cfg.max_generations}) reached",
            )
        self._lifecycle = LifecycleState.CRITICAL
        # Fast path: the CRITICAL notification runs alongside the sealing, the last
        # events ride on the seal signal, and the successor announces the handoff.
        # Sessions recorded before it replay the old, sequential path.
        fast = workflow.patched("fast-handoff-1")
        critical = self._start_notify("CRITICAL", reason) if fast else None
        if critical is None:
            await self._notify("CRITICAL", reason)
        if self._child is None:
            await self._start_child()
        elif not fast:
            await self._send_delta()
        self._lifecycle = LifecycleState.HANDOFF_PENDING
        self._sealing = True
        self._set_details()
        assert self._child is not None
        seal = self._seal_request(reason)
        if fast:
            seal.events = self._events[self._events_sent :]
            self._events_sent = len(self._events)
        await self._child.signal("seal", seal)
        try:
            payload = await self._child
        except ChildWorkflowError as err:
            if critical is not None:
                await critical
            return await self._handoff_failed(err)
        self._lifecycle = LifecycleState.HANDOFF_COMPLETE
        if critical is not None:
            await critical
        else:
            await self._notify("HANDOFF", reason, payload.summary())
        self._upsert_visibility(payload)
        await self._notified()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            SessionInput(
                config=self._cfg,
                project=self._state,
                handoff=payload,
                generation=self._generation + 1,
                # Commands that arrived while sealing are applied by the successor;
                # text already in the state but not yet sent to the model is carried.
                inbox=list(self._inbox),
                pending_human_text=list(self._pending_say),
                ledger=self._ledger,
                lineage=self._lineage(),
                health=self._health.model_dump(exclude={"tasks_per_hour"}),
                paused=self._paused,
                started_at=self._started,
                handoff_reason=reason,
                announce_handoff=fast,
            )
        )

    async def _handoff_failed(self, err: ChildWorkflowError) -> SessionResult:
        """The payload could not be built: end with the full state, nothing dropped."""
        cause: BaseException = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        message = getattr(cause, "message", None) or str(cause)
        self._child = None
        self._sealing = False
        for cmd in self._inbox:  # commands that waited for the successor
            self._apply_command(cmd)
        self._inbox = []
        self._record(
            StateEvent(
                op="record_error",
                args={"source": "handoff", "message": message},
                at=workflow.now(), by="system",
            )
        )
        return await self._finish(TerminationReason.HANDOFF_FAILED, message, final=False)

    def _seal_request(self, reason: TerminationReason) -> SealRequest:
        return SealRequest(
            reason=reason,
            ledger=self._ledger,
            recent_human_input=self._recent_human[-10:],
            paused_seconds=self._longest_pause,
            events_sent=self._deltas_sent,
        )

    async def _finish(
        self, reason: TerminationReason, message: str, final: bool = True
    ) -> SessionResult:
        document: HandoffPayload | None = None
        if final and reason != TerminationReason.TASK_COMPLETED:
            document = await self._final_document(reason)
        elif self._child is not None:
            # Finished before sealing: the half-built handoff is not needed.
            self._child.cancel()
            try:
                await self._child
            except (ChildWorkflowError, asyncio.CancelledError):
                pass
        self._lifecycle = LifecycleState.TERMINATED
        await self._notified()
        await self._notify("TERMINATED", reason)
        self._upsert_visibility(document)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return SessionResult(
            session_id=workflow.info().workflow_id,
            reason=reason,
            generation=self._generation,
            project=self._state,
            ledger=self._ledger,
            lineage=self._lineage(),
            health=self._health,
            final_handoff=document,
            message=message,
        )

    async def _final_document(self, reason: TerminationReason) -> HandoffPayload | None:
        """The document to resume from, built by the child if one runs, else directly.

        None if it cannot be built (the state is still in the result)."""
        if self._child is not None:
            await self._send_delta()
            await self._child.signal("seal", self._seal_request(reason))
            try:
                return await self._child
            except ChildWorkflowError:
                pass
        info = workflow.info()
        ctx = HandoffContext(
            session_id=info.workflow_id,
            generation=self._generation,
            run_id=info.run_id,
            reason=reason,
            model=self._model,
            ledger=self._ledger,
            lineage=self._lineage(),
            events_since_last_handoff=self._events,
            recent_human_input=self._recent_human[-10:],
            paused_seconds=self._longest_pause,
        )
        try:
            return await workflow.execute_activity(
                "build_handoff",
                {
                    "state": self._state.model_dump(mode="json"),
                    "context": ctx.model_dump(mode="json"),
                    "level": self._cfg.compression_level.value,
                    "budgets": {k.value: v for k, v in self._cfg.level_budgets.items()},
                    "calibration": self._ledger.calibration,
                    "max_payload_bytes": self._cfg.max_payload_bytes,
                },
                result_type=HandoffPayload,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=5),
                summary=f"final handoff document ({reason.value})",
            )
        except ActivityError as err:
            cause = err.cause
            text = cause.message if isinstance(cause, ApplicationError) else str(err)
            self._record(
                StateEvent(
                    op="record_error", args={"source": "handoff", "message": text},
                    at=workflow.now(), by="system",
                )
            )
            return None

    # ---------------------------------------------------------------- visibility
    async def _notify(
        self, event: str, reason: TerminationReason | None = None, summary: str = ""
    ) -> None:
        await self._start_notify(event, reason, summary)

    async def _notified(self) -> None:
        """Wait for the notifications started in the background."""
        while self._notifying:
            await self._notifying.pop(0)

    def _start_notify(
        self, event: str, reason: TerminationReason | None = None, summary: str = ""
    ) -> workflow.ActivityHandle[None]:
        """Schedule a lifecycle notification; await the handle to wait for it."""
        return workflow.start_activity(
            "notify",
            LifecycleEvent(
                session_id=workflow.info().workflow_id,
                generation=self._generation,
                event=event,
                lifecycle=self._lifecycle,
                reason=reason,
                context_pct=round(100 * self._ledger.usage_fraction, 2),
                tasks_done=self._state.completed_count,
                tasks_total=len(self._state.tasks),
                summary=summary,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary=f"notify {event}",
        )

    def _set_details(self) -> None:
        s = self._state
        workflow.set_current_details(
            f"gen {self._generation} · turn {self._turn} · {self._lifecycle.value} · "
            f"context {100 * self._ledger.usage_fraction:.0f}% · "
            f"tasks {s.completed_count}/{len(s.tasks)} · "
            f"blockers {len(s.open_blockers())}"
        )

    def _upsert_visibility(self, payload: HandoffPayload | None) -> None:
        self._set_details()
        if payload is not None:
            workflow.upsert_memo({"handoff_summary": payload.summary()})
        if not self._cfg.search_attributes:
            return
        workflow.upsert_search_attributes(
            search_attribute_updates(
                generation=self._generation,
                context_pct=100 * self._ledger.usage_fraction,
                lifecycle=self._lifecycle.value,
                project=self._state.name,
                user=self._cfg.user,
                agent_type=self._cfg.agent_type,
                total_tokens=self._ledger.total_tokens,
                cost_usd=self._ledger.cost_usd,
            )
        )
