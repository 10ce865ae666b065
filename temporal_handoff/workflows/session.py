"""`AgentSessionWorkflow`: one Claude agent session, one generation per run.

Each turn: call the model (the activity does the pre-flight token estimate), add
the exact usage to the ledger, apply tool calls. State tools change the project
state here, deterministically, as events; `recall` and user tools are activities.
At the warn threshold a `HandoffWorkflow` child starts and receives each turn's
events; at the handoff threshold (or FLUSH, or when Temporal suggests it) the child
is sealed, returns the payload, and this run continues-as-new as its successor.

This file keeps the run loop and the handler declarations. Beside it: `_commands`
(judge and apply human commands, total), `_handoff_link` (the child: start, event
cursor, deltas, seal), `_model_turn` (model call and tools, every failure a value)
and `_visibility` (details, memo, search attributes, notifications).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.human_text import is_quoted, quote
    from temporal_handoff.schemas.config import MAX_TOKENS_RETRIES, TURN_RESERVE_TOKENS
    from temporal_handoff.schemas.events import HandoffInput, RecallRequest, SealRequest
    from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload, RunRef
    from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
    from temporal_handoff.schemas.model_io import (
        ModelInfoRequest,
        ModelInfoResult,
        ModelResponse,
        ToolSpec,
        wire_content,
    )
    from temporal_handoff.schemas.project import BlockerType
    from temporal_handoff.schemas.session import (
        AbortArgs,
        Command,
        CommandKind,
        Health,
        SessionInput,
        SessionResult,
        SessionStatus,
    )
    from temporal_handoff.schemas.state_events import EventError, StateEvent
    from temporal_handoff.schemas.tokens import TokenLedger
    from temporal_handoff.schemas.tools import (
        FINISH_TOOL,
        FREE_FORM_STATE_TOOLS,
        STATE_TOOLS,
        state_tool_specs,
    )
    from temporal_handoff.schemas.transcript import (
        TranscriptEntry,
        TranscriptPage,
        TranscriptQuery,
        exchange_lines,
        last_reply,
        transcript_of,
    )
    from temporal_handoff.workflows import _command_input as command_input
    from temporal_handoff.workflows import _commands as commands
    from temporal_handoff.workflows import _first_call as first_call
    from temporal_handoff.workflows import _free_form as free_form
    from temporal_handoff.workflows import _model_turn as turn_io
    from temporal_handoff.workflows import _note_turn as note_io
    from temporal_handoff.workflows import _visibility as vis
    from temporal_handoff.workflows._book import Phase, SessionBook
    from temporal_handoff.workflows._cache_ttl import CacheTtlPolicy
    from temporal_handoff.workflows._handoff_link import ChildGone, HandoffLink, build_payload


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


class _Stop(Exception):
    """Raised inside the turn loop to close the session (without a final document
    unless `final`)."""

    def __init__(self, reason: TerminationReason, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.final = final


_BUGS = (EventError, LookupError, TypeError, AttributeError, AssertionError, ValueError)
"""Exceptions that can only come from a bug in the session's own logic."""


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
        self._generation = inp.generation
        self._model = self._cfg.model_for(inp.generation)
        self._ledger = (inp.ledger or TokenLedger()).new_generation()
        self._lifecycle = LifecycleState.INITIALIZING
        self._upserted: LifecycleState | None = None
        """The lifecycle the search attributes show."""
        self._book = SessionBook(
            state=inp.project.model_copy(deep=True),
            generation=inp.generation,
            health=Health(**{k: v for k, v in inp.health.items() if k in Health.model_fields}),
            paused=inp.paused,
            pending_say=list(inp.pending_human_text),
            update_replies=dict(inp.update_replies),
            awaiting_input=inp.awaiting_input,
        )
        self._free = False
        """A free-form session (a goal, no tasks): a conversation ended by `finish`."""
        self._waits_when_quiet = False
        self._link = HandoffLink()
        self._messages: list[dict[str, Any]] = []
        self._known_upto = 0  # messages covered by the ledger's exact occupancy
        self._turn = 0
        self._fixed_tokens = self._cfg.fixed_prompt_tokens()
        self._turn_max_tokens: int | None = None
        """`max_tokens` raised after a reply was cut at the limit (kept for the rest of
        this generation: the configured value is too small for this model's replies), or
        lowered to what fits beside the generation's first prompt (`_first_call`)."""
        self._max_tokens_retries = 0
        self._last_max_tokens = self._cfg.max_tokens
        self._started: datetime | None = None
        self._notifying: list[workflow.ActivityHandle[None]] = []
        """Notifications running alongside the session; awaited at the next safe point."""
        self._longest_pause = 0.0
        self._cache = CacheTtlPolicy()
        """The prompt-cache TTL of each call (1 h when the human waits make it pay)."""
        self._closing: tuple[TerminationReason, str, bool] | None = None
        """Set once the session is finishing (a cancel then finishes the same way)."""
        self._overflowed = False
        """The API said this generation's prompt overflowed the window (no note turn)."""
        # Human text reaches the model quoted and escaped, so it cannot forge control
        # lines; sessions recorded before replay it bare.
        self._book.quote_human = workflow.patched("quote-human-text-1")
        # Commands carried from the predecessor's handoff are applied first (totally:
        # one that no longer applies is dropped with a log line, never raised).
        for cmd in inp.inbox:
            self._log_unapplied(cmd, commands.apply(self._book, cmd))

    # ---------------------------------------------------------------- handlers
    def _command(self, kind: CommandKind, args: Any = None, by: str = "human") -> Command:
        data = args.model_dump() if args is not None else {}
        return Command(kind=kind, args=data, at=workflow.now(), by=getattr(args, "by", by))

    def _validate(self, kind: CommandKind, args: Any) -> None:
        if self._repeated_update() is not None:
            return  # answered with the first reply; applied once
        reason = commands.rejection(
            self._book,
            Command(kind=kind, args=args.model_dump(), by=args.by),
            max_say_bytes=self._cfg.max_human_text_bytes,
            human_room_tokens=self._human_room(),
        )
        if reason is not None:
            raise ValueError(reason)

    def _accept(self, cmd: Command) -> str:
        repeated = self._repeated_update()
        if repeated is not None:
            return repeated
        reply = commands.accept(self._book, cmd)
        self._log_unapplied(cmd, reply)
        update = workflow.current_update_info()
        if update is not None:
            self._book.remember_reply(update.id, reply)
        return reply

    def _repeated_update(self) -> str | None:
        """The first reply if this update id was applied already (a client retry)."""
        update = workflow.current_update_info()
        if update is None:
            return None
        return self._book.update_replies.get(update.id)

    @staticmethod
    def _log_unapplied(cmd: Command, reply: str) -> None:
        if reply.startswith(("ignored", "not applied")):
            workflow.logger.warning("%s: %s", cmd.kind.value, reply)

    # Every handler takes untyped input and reads it with `_command_input.parse`, so a
    # command sent the wrong way (plain `temporal` CLI, bad JSON, undecodable payload)
    # gets a reason naming the field instead of being dropped or failing a task.
    def _update(self, kind: CommandKind, raw: tuple[Any, ...]) -> str:
        # A repeated update id (a client retry, possibly after continue-as-new) is
        # answered with its first reply before its input is read: the validator
        # skipped that input, so it must not be able to raise here.
        repeated = self._repeated_update()
        if repeated is not None:
            return repeated
        return self._accept(self._command(kind, command_input.parse(kind, raw)))

    def _validate_input(self, kind: CommandKind, raw: tuple[Any, ...]) -> None:
        if self._repeated_update() is not None:
            return  # answered with the first reply; applied once
        self._validate(kind, command_input.parse(kind, raw))

    @workflow.update(name="decide")
    def decide(self, *raw: Any) -> str:
        """`DecideArgs`: answer a blocker."""
        return self._update(CommandKind.DECIDE, raw)

    @decide.validator
    def _validate_decide(self, *raw: Any) -> None:
        self._validate_input(CommandKind.DECIDE, raw)

    @workflow.update(name="skip_task")
    def skip_task(self, *raw: Any) -> str:
        """`TaskCommandArgs`: mark a task skipped."""
        return self._update(CommandKind.SKIP, raw)

    @skip_task.validator
    def _validate_skip(self, *raw: Any) -> None:
        self._validate_input(CommandKind.SKIP, raw)

    @workflow.update(name="retry_task")
    def retry_task(self, *raw: Any) -> str:
        """`TaskCommandArgs`: make a failed or skipped task eligible again."""
        return self._update(CommandKind.RETRY, raw)

    @retry_task.validator
    def _validate_retry(self, *raw: Any) -> None:
        self._validate_input(CommandKind.RETRY, raw)

    @workflow.update(name="say")
    def say(self, *raw: Any) -> str:
        """`SayArgs` (or a bare string): a message for the model's next turn."""
        return self._update(CommandKind.SAY, raw)

    @say.validator
    def _validate_say(self, *raw: Any) -> None:
        self._validate_input(CommandKind.SAY, raw)

    @workflow.update(dynamic=True)
    def _unknown_update(self, name: str, args: Sequence[RawValue]) -> str:
        raise ApplicationError(command_input.wrong_kind(name), non_retryable=True)

    @_unknown_update.validator
    def _validate_unknown_update(self, name: str, args: Sequence[RawValue]) -> None:
        raise ValueError(command_input.wrong_kind(name))

    def _signal(self, kind: CommandKind, raw: tuple[Any, ...]) -> None:
        try:
            args = command_input.parse(kind, raw)
        except command_input.BadInput as err:
            self._reject_signal(str(err))
            return
        self._accept(self._command(kind, args))

    def _reject_signal(self, reason: str) -> None:
        """A signal cannot be refused: log it, and show it (memo, `status`)."""
        workflow.logger.warning("signal rejected: %s", reason)
        if workflow.patched("visible-rejections-1"):
            self._book.remember_rejection(reason)
            workflow.upsert_memo({"last_rejected_command": reason[:1000]})

    @workflow.signal(name="pause")
    def pause(self, *raw: Any) -> None:
        """Pause after the current turn (no input)."""
        self._signal(CommandKind.PAUSE, raw)

    @workflow.signal(name="resume")
    def resume(self, *raw: Any) -> None:
        """Resume a paused session (no input)."""
        self._signal(CommandKind.RESUME, raw)

    @workflow.signal(name="flush")
    def flush(self, *raw: Any) -> None:
        """Hand off now (no input)."""
        self._signal(CommandKind.FLUSH, raw)

    @workflow.signal(name="abort")
    def abort(self, *raw: Any) -> None:
        """`AbortArgs` (or a bare string reason, or nothing): end with a final document."""
        self._signal(CommandKind.ABORT, raw)

    @workflow.signal(dynamic=True)
    def _unknown_signal(self, name: str, args: Sequence[RawValue]) -> None:
        self._reject_signal(command_input.wrong_kind(name))

    @workflow.query(name="status")
    def status(self) -> SessionStatus:
        hours = 0.0
        if self._started is not None:
            hours = max((workflow.now() - self._started).total_seconds() / 3600, 1e-9)
        book = self._book
        done_here = sum(1 for e in book.events if e.op == "complete_task")
        health = book.health.model_copy()
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
            billed_tokens=self._ledger.billed_tokens,
            billed_cost_usd=round(self._ledger.billed_cost_usd, 6),
            tasks_done=book.state.completed_count,
            tasks_total=len(book.state.tasks),
            next_eligible=book.state.next_eligible(limit=10),
            open_blockers=[
                {"id": b.id, "type": b.type.value, "description": b.description[:200]}
                for b in book.state.open_blockers()
            ],
            paused=book.paused,
            inbox=len(book.inbox),
            health=health,
            model=self._model,
            rejected_commands=list(book.rejected),
            awaiting_input=book.waiting_for_input(),
            transcript_entries=len(self._transcript()),
            closing_reason=self._closing[0].value if self._closing else "",
            closing_message=self._closing[1][:2000] if self._closing else "",
        )

    @workflow.query(name="transcript")
    def transcript(self, *raw: Any) -> TranscriptPage:
        """`TranscriptQuery` (or nothing): a page of what was said in this generation."""
        page = TranscriptQuery.parse(raw)
        entries = self._transcript(page.max_chars)
        return TranscriptPage(
            session_id=workflow.info().workflow_id,
            generation=self._generation,
            total=len(entries),
            offset=page.offset,
            entries=entries[page.offset : page.offset + page.limit],
            awaiting_input=self._book.waiting_for_input(),
            awaiting_decision=[
                b.id for b in self._book.state.open_blockers()
                if b.type == BlockerType.HUMAN_DECISION
            ],
            closed=self._book.phase == Phase.CLOSING,
        )

    def _transcript(self, max_chars: int = 4_000) -> list[TranscriptEntry]:
        return transcript_of(self._messages, self._generation, max_chars)

    def _exchange(self) -> list[str]:
        """The recent exchange, for the handoff document and the successor."""
        current = exchange_lines(
            self._transcript(), free_form.EXCHANGE_KEEP, free_form.EXCHANGE_LINE_CHARS
        )
        return free_form.recent_exchange(self._inp.recent_exchange, current)

    @workflow.query(name="project")
    def project(self) -> dict[str, Any]:
        return self._book.state.model_dump(mode="json")

    def _human_room(self) -> int | None:
        """Rough tokens a fresh generation has for human text (None before the window
        is known)."""
        if self._lifecycle == LifecycleState.INITIALIZING:
            return None
        usable = int(self._cfg.handoff_threshold * self._ledger.context_window)
        return usable - self._fixed_tokens - TURN_RESERVE_TOKENS

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
        reuse = same_model and workflow.patched("reuse-context-window-1")
        if (
            reuse
            and self._cfg.context_window not in (None, self._ledger.context_window)
            and workflow.patched("window-override-1")
        ):
            # Resumed with another window (`--resume-from --config`, e.g. after a
            # CONFIG_ERROR): the carried ledger's window is the old one.
            reuse = False
        if not reuse:
            info = await workflow.execute_activity(
                "model_info",
                ModelInfoRequest(model=self._model, override=self._cfg.context_window),
                result_type=ModelInfoResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
            self._ledger.context_window = info.context_window
            self._ledger.output_limit = info.max_output_tokens
        if inp.announce_handoff and inp.handoff is not None:
            # The predecessor left this to us so the handoff's critical path is
            # shorter; it runs alongside the first model call.
            self._notifying.append(
                self._start_notify("HANDOFF", inp.handoff_reason, inp.handoff.summary())
            )
        self._lifecycle = LifecycleState.ACTIVE
        if inp.project.free_form and workflow.patched("free-form-1"):
            # Without tasks the session used to end at once ("all tasks done").
            self._free = True
        self._waits_when_quiet = free_form.waits_when_quiet(self._cfg, self._free)
        self._messages = [{"role": "user", "content": self._opening_text(inp.handoff)}]
        shortfall = self._cfg.window_shortfall(self._ledger.context_window)
        if shortfall and workflow.patched("window-check-1"):
            # Every generation would hand off before its first call: stop now, with a
            # document to resume from once the config is fixed.
            return await self._finish(TerminationReason.CONFIG_ERROR, shortfall)
        too_big = self._cfg.max_tokens_shortfall(self._ledger.output_limit, self._model)
        if too_big and workflow.patched("max-tokens-limit-1"):
            # The API would reject every call: stop now, with a document to resume from.
            return await self._finish(TerminationReason.CONFIG_ERROR, too_big)
        self._upsert_visibility(inp.handoff)
        try:
            try:
                return await self._generation_run()
            except (asyncio.CancelledError, ActivityError, ChildWorkflowError) as err:
                # `temporal workflow cancel` (or the UI's Cancel) is an abort: the session
                # closes with its state and a final document, whenever it arrives. It
                # surfaces as CancelledError, or as the failure of the activity or child
                # that was awaited when it came.
                if not _is_cancellation(err) or not workflow.patched("cancel-is-abort-1"):
                    raise
                return await self._cancelled()
        except _BUGS as err:
            # A bug, not an input: fail the workflow (not the task, forever) and keep
            # the state in the failure so nothing is lost.
            raise ApplicationError(
                f"session workflow error: {type(err).__name__}: {err}",
                self._book.state.model_dump(mode="json"),
                type="SessionWorkflowError",
                non_retryable=True,
            ) from err

    async def _generation_run(self) -> SessionResult:
        """Turns until this generation hands off or the session closes."""
        try:
            return await self._turns()
        except _Handoff as h:
            return await self._handoff(h.reason)
        except _Stop as s:
            return await self._finish(s.reason, s.message, final=s.final)

    def _system(self, handoff: HandoffPayload | None) -> list[dict[str, Any]]:
        text = self._cfg.system_prompt
        if handoff is not None:
            text += "\n\n# Handoff from your previous generation\n\n" + handoff.prompt
        # The base prompt + continuation prompt is the stable prefix of every call in
        # this generation: mark it so Claude's prompt cache makes it cheap.
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]

    def _opening_text(self, handoff: HandoffPayload | None) -> str:
        s = self._book.state
        if handoff is None and self._free:
            return free_form.opening_text(s)
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
        users = self._cfg.user_tools
        return state_tool_specs(self._free, tuple(t.name for t in users)) + list(users)

    async def _turns(self) -> SessionResult:
        idle = 0
        book = self._book
        while True:
            await self._wait_runnable()
            if book.abort is not None:
                return await self._finish(TerminationReason.USER_ABORT, book.abort.reason)
            if book.flush:
                raise _Handoff(TerminationReason.MANUAL_FLUSH)
            if book.finish_summary is not None:
                return await self._finish(TerminationReason.FINISHED, book.finish_summary)
            if book.state.all_done and not self._free:
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
            if resp is None:  # interrupted, or the model is blocked on a human
                continue
            if resp.preflight_refused:
                turn_io.record_refusal(self._ledger, resp)
                if self._ledger.calls_this_generation == 0 and workflow.patched(
                    first_call.ZERO_CALL_PATCH
                ):
                    stop = self._first_call_refused(resp)
                    if stop is None:
                        continue  # sent again with a max_tokens that fits
                    if self._handoff_cannot_help():
                        return await self._finish(TerminationReason.CONFIG_ERROR, stop)
                    # One handoff may help: generation 0's successor opens with a
                    # continuation prompt instead of the project listing, and human
                    # text flushed into this first call goes into the payload, within
                    # its budget. A second zero-call generation in a row stops.
                raise _Handoff(TerminationReason.CONTEXT_HANDOFF)
            turn_io.record_call(self._ledger, self._model, resp)
            book.health.model_calls += 1
            if resp.stop_reason == "max_tokens" and workflow.patched("max-tokens-stop-1"):
                self._cut_at_max_tokens(resp)
                continue
            self._max_tokens_retries = 0
            if self._ledger.replies_kept_this_generation is not None:
                self._ledger.replies_kept_this_generation += 1
            if workflow.patched("no-empty-turns-1"):
                # Claude may end a turn with `content: []` (typically after tool results)
                # or a blank text block; the API rejects both when sent back, so they are
                # not kept (the next user message then follows the previous one, which
                # the API combines into one turn).
                content = wire_content(resp.content)
                if content:
                    self._messages.append({"role": "assistant", "content": content})
            else:
                self._messages.append({"role": "assistant", "content": resp.content})
            self._known_upto = len(self._messages)
            if resp.stop_reason == "model_context_window_exceeded":
                self._overflowed = True
                raise _Handoff(TerminationReason.CONTEXT_HANDOFF)

            tool_uses = [b for b in resp.content if b.get("type") == "tool_use"]
            if tool_uses:
                results = [await self._run_tool(tu) for tu in tool_uses]
                self._messages.append({"role": "user", "content": results})
                idle = 0
                if book.finish_summary is not None:
                    return await self._finish(TerminationReason.FINISHED, book.finish_summary)
            elif book.state.all_done and not self._free:
                continue
            elif book.state.human_decision_pending():
                self._messages.append({"role": "user", "content": self._awaiting_text()})
            elif self._waits_when_quiet:
                # A chat: the agent answered; the next turn starts with the human's reply.
                book.awaiting_input = True
            else:
                idle += 1
                quiet = self._cfg.max_quiet_turns
                if idle >= quiet:
                    return await self._finish(
                        TerminationReason.AGENT_FINISHED,
                        f"the model stopped {quiet} times in a row without progress "
                        "(max_quiet_turns)",
                    )
                nudge = free_form.nudge_text(self._free) or "Continue with the plan."
                if not self._free and self._progress_hints():
                    nudge += " " + eligible_line(book.state.next_eligible())
                self._messages.append({"role": "user", "content": nudge})
            last = self._messages[-1]
            self._ledger.pending_estimate = (
                0 if last["role"] == "assistant"
                else turn_io.appended_tokens(self._ledger, self._model, last)
            )
            await self._after_turn()

    def _handoff_cannot_help(self) -> bool:
        """This generation is seeded by a handoff from a generation that made no progress
        (no call fitted, or every reply was cut): another handoff would only repeat it."""
        return self._inp.handoff is not None and self._ledger.zero_call_generations > 0

    def _first_call_refused(self, resp: ModelResponse) -> str | None:
        """The pre-flight refused this generation's first call (patch zero-call-guard-1):
        lower `max_tokens` to what fits beside the prompt (None: send again), or say why
        no call fits (the CONFIG_ERROR message)."""
        verdict = first_call.first_call_verdict(
            prompt=first_call.refused_prompt_tokens(resp),
            max_tokens=self._last_max_tokens,
            window=self._ledger.context_window,
            threshold=self._cfg.handoff_threshold,
            min_max_tokens=self._cfg.min_max_tokens,
            generation=self._generation,
            configured_max_tokens=self._cfg.max_tokens,
        )
        if verdict.max_tokens is None:
            workflow.logger.warning("no first call fits: %s", verdict.message)
            return verdict.message
        workflow.logger.info(
            "first call refused with max_tokens %d; sending it with %d",
            self._last_max_tokens, verdict.max_tokens,
        )
        self._turn_max_tokens = verdict.max_tokens
        self._turn -= 1  # the refused call was not a turn
        return None

    def _cut_at_max_tokens(self, resp: ModelResponse) -> None:
        """A reply cut at `max_tokens`: never run its tool calls (the last may be cut
        mid-input, yet look well-formed) nor keep it in the conversation; ask the same
        turn again with `max_tokens` doubled (kept for later turns of this generation:
        every cut reply pays for its whole prompt), or raise a blocker (`on_max_tokens`)."""
        current = self._last_max_tokens
        cap = min(
            self._ledger.output_limit or 128_000,
            self._cfg.max_tokens_room(self._ledger.context_window),
        )
        no_room = ""
        if (
            self._cfg.on_max_tokens == "retry"
            and self._max_tokens_retries < MAX_TOKENS_RETRIES
            and current < cap
        ):
            if (
                # No reply kept in this generation, nor in the one before it (a handoff
                # already failed to make room): growing the reply would be refused and
                # hand off again, generation after generation, each call cut.
                self._ledger.replies_kept_this_generation == 0
                and self._handoff_cannot_help()
                and workflow.patched(first_call.FIRST_CALL_CUT_PATCH)
            ):
                no_room = (
                    f" This generation's first prompt is {resp.usage.prompt_tokens:,} tokens of "
                    f"a {self._ledger.context_window:,}-token window, and the previous "
                    "generation's first replies were cut too: the reply cannot grow and "
                    "another handoff would not help. Raise context_window (or use a model "
                    "with a larger window) or shorten the system prompt and tools."
                )
            else:
                self._turn_max_tokens = min(cap, current * 2)
                self._max_tokens_retries += 1
                return
        self._turn_max_tokens, self._max_tokens_retries = None, 0
        uses = sum(1 for b in resp.content if b.get("type") == "tool_use")
        self._model_blocker(
            f"max_tokens: the model's reply was cut at max_tokens={current}"
            + (" and cannot grow" if no_room else "")
            + f" (stop_reason max_tokens); its {uses} tool call(s) were not run. Raise "
            "max_tokens (within the model's output limit) or ask for shorter replies."
            + no_room
        )

    def _awaiting_text(self) -> str:
        ids = ", ".join(
            f"`{b.id}`"
            for b in self._book.state.open_blockers()
            if b.type == BlockerType.HUMAN_DECISION
        )
        return f"AWAITING DECISION on {ids}. Do not continue until a human decides."

    async def _wait_runnable(self) -> None:
        book = self._book

        def runnable() -> bool:
            if book.abort is not None or book.flush:
                return True
            return (
                not book.paused
                and not book.state.human_decision_pending()
                and not book.waiting_for_input()
            )

        def handoff_due() -> bool:
            return workflow.info().is_continue_as_new_suggested()

        if runnable():
            return
        start = workflow.now()
        # A waiting session hands off when Temporal suggests it, so commands sent while
        # it waits cannot grow its history without bound. Sessions recorded before
        # that replay the old wait (patch "wait-handoff-1").
        wake_on_history = True
        while not runnable():
            if book.paused:
                self._lifecycle = LifecycleState.PAUSED
            elif book.state.human_decision_pending():
                self._lifecycle = LifecycleState.AWAITING_DECISION
            else:
                self._lifecycle = LifecycleState.AWAITING_INPUT
            self._set_details()
            self._show_wait()
            condition = (lambda: runnable() or handoff_due()) if wake_on_history else runnable
            timeout = self._cfg.human_decision_timeout_s
            if book.paused or timeout is None:
                await workflow.wait_condition(condition)
            else:
                try:
                    await workflow.wait_condition(condition, timeout=timedelta(seconds=timeout))
                except TimeoutError:
                    self._defer_decisions()
            if not runnable() and handoff_due():
                if workflow.patched("wait-handoff-1"):
                    self._longest_pause = max(
                        self._longest_pause, (workflow.now() - start).total_seconds()
                    )
                    raise _Handoff(TerminationReason.HISTORY_LIMIT)
                wake_on_history = False
        waited = (workflow.now() - start).total_seconds()
        self._longest_pause = max(self._longest_pause, waited)
        self._cache.waited(self._cfg, self._ledger, waited)
        self._lifecycle = self._ledger.state_for(
            self._cfg.warn_threshold, self._cfg.handoff_threshold
        )
        self._show_wait()

    def _defer_decisions(self) -> None:
        for b in self._book.state.open_blockers():
            if b.type == BlockerType.HUMAN_DECISION:
                self._book.try_record(
                    StateEvent(
                        op="resolve_blocker",
                        args={"blocker_id": b.id, "resolution": "deferred: decision timed out"},
                        at=workflow.now(), by="policy:timeout",
                    )
                )
                self._book.pending_say.append(
                    f"No human decided blocker `{b.id}` in time; it is deferred. Continue."
                )

    def _flush_human_text(self) -> None:
        book = self._book
        if not book.pending_say:
            return
        if book.quote_human:
            # Text that is not a block yet (an operator's note, or human text carried
            # from a predecessor that did not quote) is quoted here.
            text = "\n".join(t if is_quoted(t) else quote(t) for t in book.pending_say)
        else:
            text = "\n".join(f"[human] {t}" for t in book.pending_say)
        book.pending_say = []
        book.awaiting_input = False
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
        cfg, ledger = self._cfg, self._ledger
        # Billed totals (equal to used ones unless answers were lost, patch billed-usage-1).
        if cfg.token_budget is not None and ledger.billed_tokens >= cfg.token_budget:
            return True
        return cfg.usd_budget is not None and ledger.billed_cost_usd >= cfg.usd_budget

    def _interrupted(self) -> bool:
        return self._book.abort is not None or self._book.paused

    async def _call_model(self) -> ModelResponse | None:
        """One model call; None if it was interrupted or opened a human blocker."""
        self._turn += 1
        max_tokens = self._cfg.max_tokens
        window = self._ledger.context_window
        limit = int(self._cfg.handoff_threshold * window)
        if workflow.patched("preflight-max-tokens-1"):
            # The reply must fit too: prompt + max_tokens ≤ window (older models reject
            # the call, newer ones cut the reply when the window is full).
            room = self._cfg.max_tokens_room(window)
            max_tokens = min(self._turn_max_tokens or max_tokens, room)
            limit = min(limit, window - max_tokens)
        self._last_max_tokens = max_tokens
        ttl = self._cache.choose(self._cfg, self._ledger, self._fixed_tokens)
        req = turn_io.model_request(
            self._cfg,
            self._ledger,
            self._model,
            system=self._system(self._inp.handoff),
            messages=self._messages,
            tools=self._tools(),
            max_tokens=max_tokens,
            turn=self._turn,
            generation=self._generation,
            known_upto=self._known_upto,
            preflight_limit=limit,
            cache_ttl=ttl.ttl if ttl is not None else None,
        )
        out = await turn_io.call_model(
            req,
            self._cfg,
            self._interrupted,
            summary=f"turn {self._turn} · gen {self._generation} · "
            f"{100 * self._ledger.usage_fraction:.0f}% context"
            + (f" · {ttl.summary()}" if ttl is not None else ""),
        )
        if out.response is not None and not out.response.preflight_refused:
            self._cache.called(self._ledger)
        lost = out.lost()
        # Answers the API gave (and bills) whose result was lost: a separate ledger line.
        if lost.answers and workflow.patched("billed-usage-1"):
            self._ledger.record_lost(lost.usage, self._model, lost.answers)
        if out.overflow:
            self._overflowed = True
            if (
                self._ledger.calls_this_generation == 0
                and self._handoff_cannot_help()
                and workflow.patched(first_call.ZERO_CALL_PATCH)
            ):
                # The API refused a first call the pre-flight let through (the window
                # taken is larger than the model's?): the successor's would be too.
                raise _Stop(
                    TerminationReason.CONFIG_ERROR,
                    first_call.overflow_message(
                        out.overflow_message, max_tokens, window, self._cfg.handoff_threshold,
                        self._generation,
                    ),
                    final=True,
                )
            raise _Handoff(TerminationReason.CONTEXT_HANDOFF)
        if out.failure is not None:
            self._model_blocker(out.failure)
        if out.response is None:
            self._turn -= 1
        return out.response

    def _model_blocker(self, failure: str) -> None:
        """The model cannot be reached or refuses the request: ask a human (after fixing
        the configuration, `decide` retries the call) instead of failing or retrying
        silently. Each occurrence gets its own blocker id."""
        book = self._book
        book.health.failures += 1
        bid = f"MODEL-{self._generation}-{self._turn}-{workflow.uuid4().hex[:8]}"
        book.try_record(
            StateEvent(
                op="add_blocker",
                args={
                    "blocker_id": bid,
                    "blocker_type": BlockerType.HUMAN_DECISION.value,
                    "description": failure[:16_000],
                },
                at=workflow.now(), by="system",
            )
        )
        book.try_record(
            StateEvent(
                op="record_error",
                args={"source": "model", "message": failure[:16_000]},
                at=workflow.now(), by="system",
            )
        )
        book.health.blockers_opened += 1
        if workflow.patched("model-blocker-notify-1"):
            self._notifying.append(self._start_notify("BLOCKED", summary=failure[:500]))

    async def _run_tool(self, tool_use: dict[str, Any]) -> dict[str, Any]:
        name = str(tool_use.get("name", ""))
        raw_input = tool_use.get("input")
        tool_input: dict[str, Any] = raw_input if isinstance(raw_input, dict) else {}
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use.get("id", "")}
        mine = self._free and name not in {t.name for t in self._cfg.user_tools}
        if name in STATE_TOOLS or (mine and name in FREE_FORM_STATE_TOOLS):
            text, error = self._run_state_tool(name, tool_input)
        elif name == FINISH_TOOL and mine:
            summary, text = free_form.finish_summary(tool_input)
            error = summary is None
            if summary is not None:
                self._book.finish_summary = summary
        elif self._interrupted() and workflow.patched("interruptible-calls-1"):
            text, error = "error: not run, the session was paused or aborted", True
        elif name == "recall":
            text = await self._recall(tool_input)
            error = text.startswith("error:")
        else:
            spec = next((t for t in self._cfg.user_tools if t.name == name), None)
            if spec is None:
                text, error = f"error: unknown tool {name!r}", True
            else:
                text, error = await turn_io.run_user_tool(
                    spec, tool_input, self._turn, self._interrupted
                )
        result["content"] = text
        if error:
            result["is_error"] = True
        return result

    def _run_state_tool(self, name: str, tool_input: dict[str, Any]) -> tuple[str, bool]:
        op = STATE_TOOLS.get(name) or FREE_FORM_STATE_TOOLS[name]
        health = self._book.health
        try:
            text = self._book.record(
                StateEvent(op=op, args=dict(tool_input), at=workflow.now(), by="agent")
            )
        except (EventError, ValueError, TypeError) as err:
            return f"error: {err}" + self._progress_line(), True
        if text.startswith("recorded decision"):
            health.decisions_recorded += 1
        if text.startswith("completed "):
            health.tasks_completed += 1
        if op == "fail_task":
            health.failures += 1
        if op == "add_blocker":
            health.blockers_opened += 1
        return text + self._progress_line(), False

    def _progress_hints(self) -> bool:
        """Whether tool results and nudges carry the workflow's view of progress.
        Sessions recorded before the option replay with hints (patch progress-hints-1)."""
        return self._cfg.progress_hints or not workflow.patched("progress-hints-1")

    def _progress_line(self) -> str:
        """The progress hint appended to a state tool's result (empty with hints off)."""
        if self._free or not self._progress_hints():
            return ""  # a free-form session has no task list to report on
        s = self._book.state
        if s.all_done:
            return "\nALL TASKS COMPLETE."
        return f"\nProgress: {s.completed_count}/{len(s.tasks)} done. " + eligible_line(
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
        if self._lifecycle != LifecycleState.ACTIVE and not self._link.started:
            # Entering WARNING (or jumping past both thresholds at once): start the
            # child now; a jump straight to CRITICAL seals it right below.
            if workflow.patched("fast-handoff-1"):
                self._notifying.append(self._start_notify("WARNING"))
            else:
                await self._start_notify("WARNING")
            await self._start_child()
        elif self._link.started:
            try:
                await self._link.send_delta(self._book.events)
            except ChildGone:
                pass  # dropped; the handoff starts a new child or builds the payload itself
        if self._lifecycle == LifecycleState.CRITICAL:
            raise _Handoff(TerminationReason.CONTEXT_HANDOFF)
        self._upsert_visibility(None)

    def _measure(self, value: Any) -> int:
        """Serialized size of a workflow input, as the payload converter writes it."""
        return workflow.payload_converter().to_payload(value).ByteSize()

    async def _start_child(self) -> None:
        """Start the handoff child with a snapshot of the state.

        Raises:
            _Stop: the snapshot is larger than `max_carry_bytes`.
        """
        info = workflow.info()
        book = self._book
        inp = HandoffInput(
            session_id=info.workflow_id,
            generation=self._generation,
            run_id=info.run_id,
            model=self._model,
            state=book.state,
            # Events applied before the child starts are part of its snapshot already;
            # the list is passed so the payload can say what changed since the last handoff.
            events_since_last_handoff=list(book.events),
            lineage=self._lineage(),
            level=self._cfg.compression_level,
            budgets=self._cfg.level_budgets,
            max_payload_bytes=self._cfg.max_payload_bytes,
        )
        size = self._measure(inp)
        if size > self._cfg.max_carry_bytes:
            raise _Stop(
                TerminationReason.HANDOFF_FAILED,
                f"handoff input is {size:,} bytes, over max_carry_bytes="
                f"{self._cfg.max_carry_bytes:,}",
            )
        await self._link.start(
            inp,
            f"{info.workflow_id}-handoff-{self._generation}",
            book.events,
            timedelta(seconds=self._cfg.handoff_child_timeout_s),
        )

    async def _handoff(self, reason: TerminationReason) -> SessionResult:
        if self._generation + 1 >= self._cfg.max_generations:
            return await self._finish(
                TerminationReason.MAX_GENERATIONS,
                f"max generations ({self._cfg.max_generations}) reached",
            )
        book = self._book
        self._lifecycle = LifecycleState.CRITICAL
        # Fast path: the CRITICAL notification runs alongside the sealing, the last
        # events ride on the seal signal, and the successor announces the handoff.
        # Sessions recorded before it replay the old, sequential path.
        fast = workflow.patched("fast-handoff-1")
        critical = self._start_notify("CRITICAL", reason) if fast else None
        if critical is None:
            await self._start_notify("CRITICAL", reason)
        try:
            if not self._link.started:
                await self._start_child()
            elif not fast:
                await self._link.send_delta(book.events)
        except _Stop as stop:
            return await self._finish(stop.reason, stop.message, final=False)
        except ChildGone:
            pass  # built below without a child
        self._lifecycle = LifecycleState.HANDOFF_PENDING
        book.phase = Phase.SEALING
        self._set_details()
        self._show_wait()
        note = await self._agent_note()
        try:
            payload = await self._sealed_payload(reason, fast, note)
        except (ChildWorkflowError, ActivityError) as err:
            if _is_cancellation(err):
                raise  # a Temporal cancel (abort), handled by run()
            if critical is not None:
                await critical
            return await self._handoff_failed(_root_message(err))
        self._lifecycle = LifecycleState.HANDOFF_COMPLETE
        if critical is not None:
            await critical
        else:
            await self._start_notify("HANDOFF", reason, payload.summary())
        self._upsert_visibility(payload)
        await self._notified()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if workflow.cancellation_reason() is not None and workflow.patched("cancel-is-abort-1"):
            # The cancel was absorbed by the child we awaited (it finished anyway): still
            # an abort, never a continue-as-new.
            return await self._cancelled()
        nxt = SessionInput(
            config=self._cfg,
            project=book.state,
            # The successor needs the prompt and the summary; the document stays in
            # the child's result (and `recall` reads any generation's state).
            handoff=payload.seed(),
            generation=self._generation + 1,
            # Commands that arrived while sealing are applied by the successor;
            # text already in the state but not yet sent to the model is carried.
            inbox=list(book.inbox),
            pending_human_text=list(book.pending_say),
            ledger=self._ledger,
            lineage=self._lineage(),
            health=book.health.model_dump(exclude={"tasks_per_hour"}),
            paused=book.paused,
            started_at=self._started,
            handoff_reason=reason,
            announce_handoff=fast,
            update_replies=dict(book.update_replies),
            awaiting_input=book.awaiting_input,
            recent_exchange=self._exchange(),
        )
        size = self._measure(nxt)
        if size > self._cfg.max_carry_bytes:
            return await self._handoff_failed(
                f"successor input is {size:,} bytes, over max_carry_bytes="
                f"{self._cfg.max_carry_bytes:,}"
            )
        workflow.continue_as_new(nxt)

    async def _agent_note(self) -> str:
        """The model's note to its successor (one bounded turn, `_note_turn`), or ""."""
        if not self._cfg.handoff_note or not workflow.patched(note_io.NOTE_PATCH):
            return ""
        if self._overflowed:
            outcome = note_io.NoteOutcome(skipped="the context overflowed")
        elif self._ledger.calls_this_generation == 0:
            # Nothing happened since the seed (a first call that did not fit, or a flush
            # before any turn); and a note call would hide a zero-call generation from
            # the first-call guard (`ledger.zero_call_generations`).
            outcome = note_io.NoteOutcome(skipped="no model turn in this generation")
        elif self._book.paused:
            outcome = note_io.NoteOutcome(skipped="the session is paused")
        else:
            outcome = await note_io.note_turn(
                self._cfg,
                self._ledger,
                self._model,
                system=self._system(self._inp.handoff),
                messages=self._messages,
                tools=self._tools(),
                known_upto=self._known_upto,
                generation=self._generation,
                turn=self._turn,
            )
        if outcome.skipped:
            workflow.logger.info("handoff note skipped: %s", outcome.skipped)
        workflow.upsert_memo({"handoff_note": outcome.memo()})
        return outcome.text

    async def _sealed_payload(
        self, reason: TerminationReason, fast: bool, note: str = ""
    ) -> HandoffPayload:
        """The payload from the child, or built here if the child is gone (reset,
        terminated).

        Raises:
            ChildWorkflowError, ActivityError: the payload cannot be built.
        """
        if self._link.started:
            seal = self._seal_request(reason, note)
            if fast:
                seal.events = self._link.take_rest(self._book.events)
            try:
                return await self._link.seal(seal)
            except ChildGone as gone:
                workflow.logger.warning("handoff child gone (%s); building the payload here", gone)
        return await self._build_payload(reason, note)

    async def _handoff_failed(self, message: str) -> SessionResult:
        """No successor can start: end with the full state, nothing dropped."""
        self._link.handle = None
        self._drain_inbox()
        self._book.try_record(
            StateEvent(
                op="record_error",
                args={"source": "handoff", "message": message[:16_000] or "handoff failed"},
                at=workflow.now(), by="system",
            )
        )
        return await self._finish(TerminationReason.HANDOFF_FAILED, message, final=False)

    async def _cancelled(self) -> SessionResult:
        if self._closing is not None:
            reason, message, final = self._closing
        else:
            reason, message, final = (
                TerminationReason.USER_ABORT, "cancelled (Temporal cancel request)", True
            )
            self._book.abort = AbortArgs(reason=message)
        # The document is built here: a child awaited when the cancel came was cancelled
        # with it, and one that was not is cancelled now (and waited for).
        await self._link.cancel()
        self._closing = None
        return await self._finish(reason, message, final=final)

    def _drain_inbox(self) -> None:
        """Apply the commands that waited for a successor that will not come."""
        book = self._book
        book.phase = Phase.RUNNING
        queued, book.inbox = book.inbox, []
        for cmd in queued:
            self._log_unapplied(cmd, commands.apply(book, cmd))

    def _seal_request(self, reason: TerminationReason, note: str = "") -> SealRequest:
        return SealRequest(
            agent_note=note,
            reason=reason,
            ledger=self._ledger,
            recent_human_input=self._book.recent_human[-10:],
            recent_exchange=self._exchange(),
            paused_seconds=self._longest_pause,
            events_sent=self._link.deltas,
        )

    async def _finish(
        self, reason: TerminationReason, message: str, final: bool = True
    ) -> SessionResult:
        book = self._book
        self._closing = (reason, message, final)
        if book.inbox:
            self._drain_inbox()
        # From here on updates are refused and signals ignored, so what the result
        # says (state and final document) is everything that was accepted.
        book.phase = Phase.CLOSING
        book.closing_reason = reason.value
        document: HandoffPayload | None = None
        if final and reason != TerminationReason.TASK_COMPLETED:
            document = await self._final_document(reason)
        else:
            # Finished before sealing: the half-built handoff is not needed.
            await self._link.cancel()
        self._lifecycle = LifecycleState.TERMINATED
        await self._notified()
        await self._start_notify("TERMINATED", reason)
        self._upsert_visibility(document, end_reason=reason)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return SessionResult(
            session_id=workflow.info().workflow_id,
            reason=reason,
            generation=self._generation,
            project=book.state,
            ledger=self._ledger,
            lineage=self._lineage(),
            health=book.health,
            final_handoff=document,
            message=message,
            final_reply=self._final_reply(),
            summary=book.finish_summary or "",
        )

    def _final_reply(self) -> str:
        """The agent's last text reply (this generation's, else the predecessor's)."""
        reply = last_reply(self._transcript(100_000))
        if reply:
            return reply
        carried = [x for x in self._inp.recent_exchange if x.startswith("[agent] ")]
        return carried[-1].removeprefix("[agent] ") if carried else ""

    async def _final_document(self, reason: TerminationReason) -> HandoffPayload | None:
        """The document to resume from, built by the child if one runs, else directly.

        None if it cannot be built (the state is still in the result)."""
        book = self._book
        if self._link.started:
            try:
                await self._link.send_delta(book.events)
                return await self._link.seal(self._seal_request(reason))
            except (ChildGone, ChildWorkflowError):
                self._link.drop()
        try:
            return await self._build_payload(reason)
        except ActivityError as err:
            cause = err.cause
            text = cause.message if isinstance(cause, ApplicationError) else str(err)
            book.try_record(
                StateEvent(
                    op="record_error", args={"source": "handoff", "message": text or "failed"},
                    at=workflow.now(), by="system",
                )
            )
            return None

    async def _build_payload(self, reason: TerminationReason, note: str = "") -> HandoffPayload:
        """Build the payload in this run (`build_handoff` activity), without a child.

        Raises:
            ActivityError: it cannot be built (e.g. over `max_payload_bytes`).
        """
        book = self._book
        info = workflow.info()
        ctx = HandoffContext(
            session_id=info.workflow_id,
            generation=self._generation,
            run_id=info.run_id,
            reason=reason,
            model=self._model,
            ledger=self._ledger,
            lineage=self._lineage(),
            events_since_last_handoff=book.events,
            recent_human_input=book.recent_human[-10:],
            recent_exchange=self._exchange(),
            paused_seconds=self._longest_pause,
            agent_note=note,
        )
        return await build_payload(
            book.state, ctx, self._cfg.compression_level, self._cfg.level_budgets,
            self._cfg.max_payload_bytes, summary=f"handoff document ({reason.value})",
        )

    # ---------------------------------------------------------------- visibility
    async def _notified(self) -> None:
        """Wait for the notifications started in the background."""
        while self._notifying:
            await self._notifying.pop(0)

    def _start_notify(
        self, event: str, reason: TerminationReason | None = None, summary: str = ""
    ) -> workflow.ActivityHandle[None]:
        return vis.start_notify(
            self._generation, event, self._lifecycle, self._ledger, self._book.state,
            reason, summary,
        )

    def _set_details(self) -> None:
        vis.set_details(
            self._generation, self._turn, self._lifecycle, self._ledger, self._book.state
        )

    def _upsert_visibility(
        self, payload: HandoffPayload | None, end_reason: TerminationReason | None = None
    ) -> None:
        self._set_details()
        # From patch "wait-visibility-1" on: NeedsHuman, the end reason in the memo, and
        # an upsert at every wait (pause, decision, handoff), not only after turns.
        current = workflow.patched("wait-visibility-1")
        vis.upsert(
            self._cfg, self._generation, self._lifecycle, self._ledger, self._book.state, payload,
            needs_human=(
                end_reason is None
                and (self._book.state.human_decision_pending() or self._book.waiting_for_input())
                if current
                else None
            ),
            end_reason=end_reason if current else None,
        )
        self._upserted = self._lifecycle

    def _show_wait(self) -> None:
        """Upsert the lifecycle when a wait changes it (visible to list queries)."""
        if self._upserted != self._lifecycle and workflow.patched("wait-visibility-1"):
            self._upsert_visibility(None)


def _is_cancellation(err: BaseException) -> bool:
    if isinstance(err, asyncio.CancelledError):
        return True
    return isinstance(err, (ActivityError, ChildWorkflowError)) and isinstance(
        err.cause, CancelledError
    )


def _root_message(err: BaseException) -> str:
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return getattr(cause, "message", None) or str(cause)
