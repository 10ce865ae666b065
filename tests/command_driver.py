"""Random *valid* human commands against a live session, and the checkers behind them.

Shared by `tests/test_command_property.py` (hypothesis draws the actions) and
`bench/soak.py` (a seeded `random.Random` draws them).

* `Action` is abstract: a kind and a `pick` that selects the target among the
  candidates that are valid *at send time*, read from the live `status` (and
  `project`) queries: `decide` only open human-decision blockers, `skip` only tasks
  in `next_eligible`, `retry` only failed or skipped tasks. Nothing to pick from:
  the action is a no-op. `together=True` sends an action concurrently with the one
  before it, with targets chosen from the same snapshot (two `retry` of one failed
  task in one burst, say). `await_handoff` polls until the session is sealing
  (CRITICAL / HANDOFF_PENDING) so the next actions land during the handoff.
* `CommandDriver` sends them and keeps a ledger of every command with a unique
  marker (`<tag>-<seq:05d>`, carried in the `say` text, the `decide` text and the
  `by` field of every update) and its outcome: *accepted* (the update returned),
  *rejected* (`WorkflowUpdateFailedError`, a validator refused), *unknown* (no
  answer: timeout or RPC error; the session is then suspect and the driver stops)
  or *sent* (signals). Updates go through `temporal_handoff.commands.send_update`
  (as the CLI sends them); refusals it does not retry but that leave an update
  unapplied (its run closed under it at continue-as-new, `CLOSED_RUN`; workflow
  tasks timing out) are sent again, and counted. `finish()` ends the session: abort
  (at most once, last), or resume and decide every open blocker until it completes.
* `assert_never_stuck()` walks every run of the workflow id (following
  continue-as-new through the histories) and every handoff child, and fails on a
  failed workflow task or a session that neither completed nor waits for a human.
* `check_exactly_once()` verifies the ledger against the final project
  (`SessionResult.project` of the last run) and the inboxes carried across
  continue-as-new: each accepted command applied once, no rejected one applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from temporal_handoff.commands import send_update
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import BlockerType, TaskStatus
from temporal_handoff.schemas.session import (
    AbortArgs,
    DecideArgs,
    SayArgs,
    SessionInput,
    SessionResult,
    SessionStatus,
    TaskCommandArgs,
)

COMMANDS = ("decide", "say", "skip", "retry", "pause", "resume", "flush")
CONTROLS = ("sleep", "await_handoff")
KINDS = COMMANDS + CONTROLS
UPDATE_NAMES = {"decide": "decide", "say": "say", "skip": "skip_task", "retry": "retry_task"}
SEALING = (LifecycleState.CRITICAL, LifecycleState.HANDOFF_PENDING)
WAITING = (LifecycleState.PAUSED, LifecycleState.AWAITING_DECISION)
QUEUED_PREFIX = "queued for the successor"
CLOSED_RUN = (
    "workflow execution already completed",
    "workflow update was aborted by closing workflow",
    "workflow operation can not be applied because workflow is closing",
)
"""How the server refuses (unapplied) an update whose run is closing or closed under
it (continue-as-new); `commands.send_update` does not retry these."""
FAILING_TASK = "Workflow Task in failed state"
"""How the server refuses a query while the workflow task keeps failing."""
# A failed workflow task with this cause is the server refusing a completion that
# raced a new event (a signal arriving as the run continues-as-new); the SDK redoes
# the task with the event. Temporal's protocol, not a bug of the workflow.
BENIGN_TASK_FAILURES = (WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,)


# ---------------------------------------------------------------- actions
@dataclass(frozen=True)
class Action:
    kind: str
    """One of `KINDS`."""
    pick: int = 0
    """Chooses the target among the live candidates (modulo their count); for
    `sleep`, the duration (`0.02 * (1 + 3 * pick)` s)."""
    together: bool = False
    """Send concurrently with the previous action (same snapshot of the session)."""


COMMAND_WEIGHTS = {"say": 4, "retry": 4, "decide": 3, "skip": 3, "pause": 1, "resume": 1, "flush": 1}
WAITS = ("none", "sleep", "await_handoff", "await_handoff")
"""What precedes a burst: nothing, a sleep, or waiting for the next handoff."""


def random_actions(rng: random.Random, segments: int) -> list[Action]:
    """`segments` bursts of 1-4 commands, each preceded by a wait (`WAITS`); within
    a burst a command repeats the previous one half of the time (two `retry` of
    one task, two `decide` of one blocker...). The same shape as the hypothesis
    strategy of `tests/test_command_property.py`."""
    kinds = list(COMMAND_WEIGHTS)
    weights = [COMMAND_WEIGHTS[k] for k in kinds]
    out: list[Action] = []
    for _ in range(segments):
        wait = rng.choice(WAITS)
        if wait != "none":
            out.append(Action(wait, rng.randrange(4)))
        for j in range(rng.randint(1, 4)):
            together = j > 0 or wait != "none"
            if j > 0 and rng.random() < 0.5:
                out.append(Action(out[-1].kind, out[-1].pick, together=True))
            else:
                out.append(Action(rng.choices(kinds, weights)[0], rng.randrange(4), together))
    return out


# ---------------------------------------------------------------- the ledger
Outcome = Literal["accepted", "rejected", "unknown", "sent"]


@dataclass
class Sent:
    seq: int
    kind: str
    """decide / say / skip / retry / pause / resume / flush / abort."""
    marker: str
    target: str = ""
    """Blocker id (decide) or task id (skip, retry)."""
    text: str = ""
    """The `say` text, the `decide` decision or the abort reason."""
    outcome: Outcome = "sent"
    result: str = ""
    """The update's return value, or why it was rejected / unknown."""
    lifecycle: str = ""
    """The session's lifecycle in the snapshot the target was chosen from."""
    generation: int = -1
    batch: int = 0
    phase: str = "run"
    """`run` (the action list) or `finish`."""
    attempts: int = 0
    """`execute_update` calls for this command (`send_update` retries some refusals)."""
    errors: list[str] = field(default_factory=list)
    """The RPC errors of the attempts that failed."""
    closed_run_refusals: int = 0
    """Times the update was refused because its run was closing or had closed
    (continue-as-new) while it was in flight (`CLOSED_RUN`), and sent again."""

    @property
    def queued(self) -> bool:
        return self.outcome == "accepted" and self.result.startswith(QUEUED_PREFIX)


@dataclass
class Snapshot:
    status: SessionStatus
    tasks: dict[str, str] = field(default_factory=dict)
    """Task id → status value (only when the `project` query was needed)."""

    def human_blockers(self) -> list[str]:
        return [
            b["id"] for b in self.status.open_blockers
            if b.get("type") == BlockerType.HUMAN_DECISION.value
        ]

    def retryable(self) -> list[str]:
        bad = (TaskStatus.FAILED.value, TaskStatus.SKIPPED.value)
        return [t for t, s in self.tasks.items() if s in bad]


class _Counting:
    """A handle for `send_update` that logs each attempt (and its error) in the entry."""

    def __init__(self, handle: WorkflowHandle[Any, Any], entry: Sent) -> None:
        self._handle = handle
        self._entry = entry

    async def execute_update(self, *args: Any, **kwargs: Any) -> Any:
        self._entry.attempts += 1
        try:
            return await self._handle.execute_update(*args, **kwargs)
        except RPCError as err:
            self._entry.errors.append(f"{err.status.name}: {err.message[:160]}")
            raise


class CommandDriver:
    """Sends valid commands to one session (always its latest run) and logs them."""

    def __init__(
        self,
        client: Client,
        handle: WorkflowHandle[Any, Any],
        *,
        tag: str | None = None,
        command_timeout_s: float = 20.0,
        query_timeout_s: float = 10.0,
        poll_s: float = 0.01,
        stall_s: float = 30.0,
    ) -> None:
        self.client = client
        self.workflow_id = handle.id
        # No run id: commands and queries go to the latest run, across continue-as-new.
        self.handle: WorkflowHandle[Any, SessionResult] = client.get_workflow_handle(
            handle.id, result_type=SessionResult
        )
        self.first_run_id: str | None = (
            getattr(handle, "result_run_id", None) or handle.first_execution_run_id
            or handle.run_id
        )
        self.tag = tag or uuid.uuid4().hex[:8]
        self.command_timeout_s = command_timeout_s
        self.query_timeout_s = query_timeout_s
        self.poll_s = poll_s
        """Status polling interval of `await_handoff` (each poll is a query the worker
        answers: keep it coarse when many sessions share one worker)."""
        self.stall_s = stall_s
        """How long queries may keep failing (workflow tasks timing out on an overloaded
        worker) before the session counts as stuck. A failed workflow task ends the
        wait at once."""
        self.stalls = 0
        """Queries and updates refused while workflow tasks were timing out."""
        self.ledger: list[Sent] = []
        self.trouble: str | None = None
        """Why the driver stopped early (an unanswered command or query)."""
        self.aborted = False
        self.noops: Counter[str] = Counter()
        """Actions with nothing valid to act on, by kind."""
        self.handoffs_caught = 0
        """`await_handoff` actions that saw the session sealing."""
        self.closed_run_refusals = 0
        """Updates refused because their run had just continued-as-new (then resent)."""
        self._seq = 0
        self._batch = 0
        self._result: asyncio.Future[SessionResult] = asyncio.ensure_future(self.handle.result())
        self._result.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    # ---- state -----------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._result.done()

    def result(self) -> SessionResult | None:
        if self._result.done() and not self._result.cancelled() and not self._result.exception():
            return self._result.result()
        return None

    async def snapshot(self, with_project: bool = False) -> Snapshot | None:
        """Status (and task states) of the latest run; None once it closed or if the
        queries keep failing (then `trouble` says why)."""
        last: BaseException | None = None
        deadline = time.monotonic() + self.stall_s
        attempt = 0
        while time.monotonic() < deadline:
            if self.done:
                return None
            try:
                st = await asyncio.wait_for(
                    self.handle.query("status", result_type=SessionStatus), self.query_timeout_s
                )
                snap = Snapshot(st)
                if with_project:
                    proj = await asyncio.wait_for(
                        self.handle.query("project", result_type=dict), self.query_timeout_s
                    )
                    snap.tasks = {tid: t["status"] for tid, t in proj["tasks"].items()}
                return snap
            except Exception as err:  # query failed, RPC error, timeout
                last = err
                if FAILING_TASK in str(err):
                    if await self.task_failed():
                        break  # stuck for good: no point in asking again
                    self.stalls += 1
                attempt += 1
                await asyncio.sleep(min(1.0, 0.1 * attempt))
        if not self.done:
            self.trouble = f"queries failing: {type(last).__name__}: {last}"
        return None

    # ---- sending ---------------------------------------------------------------
    def _entry(self, kind: str, snap: Snapshot | None, phase: str, target: str = "") -> Sent:
        self._seq += 1
        entry = Sent(
            seq=self._seq, kind=kind, marker=f"{self.tag}-{self._seq:05d}", target=target,
            lifecycle=snap.status.lifecycle.value if snap else "",
            generation=snap.status.generation if snap else -1, batch=self._batch, phase=phase,
        )
        self.ledger.append(entry)
        return entry

    async def _update(self, entry: Sent, arg: Any) -> None:
        deadline = time.monotonic() + self.command_timeout_s
        while True:
            try:
                entry.result = await asyncio.wait_for(
                    send_update(
                        _Counting(self.handle, entry),  # type: ignore[arg-type]
                        UPDATE_NAMES[entry.kind], arg, attempts=8,
                    ),
                    max(0.1, deadline - time.monotonic()),
                )
                entry.outcome = "accepted"
            except WorkflowUpdateFailedError as err:
                entry.outcome = "rejected"
                entry.result = str(err.cause or err)
            except RPCError as err:
                if time.monotonic() < deadline and not self.done:
                    if any(m in err.message for m in CLOSED_RUN) and entry.closed_run_refusals < 20:
                        # The run this update reached continued-as-new under it: the
                        # server aborted the update unapplied. Sent again, as a client
                        # must; were the first one applied after all, the checker sees
                        # it twice.
                        entry.closed_run_refusals += 1
                        self.closed_run_refusals += 1
                        await asyncio.sleep(0.1)
                        continue
                    if FAILING_TASK in err.message and not await self.task_failed():
                        # Workflow tasks timing out (an overloaded worker): not applied
                        # (WorkflowNotReady); wait for the worker to catch up.
                        self.stalls += 1
                        await asyncio.sleep(1.0)
                        continue
                self._unknown(entry, err)
            except Exception as err:  # timeout: applied or not, nobody knows
                self._unknown(entry, err)
            return

    async def task_failed(self) -> bool:
        """Whether the latest run has a failed workflow task (a bug, never a stall)."""
        try:
            history = await self.handle.fetch_history()
        except Exception:
            return False
        return any(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            and e.workflow_task_failed_event_attributes.cause not in BENIGN_TASK_FAILURES
            for e in history.events
        )

    def _unknown(self, entry: Sent, err: BaseException) -> None:
        entry.outcome = "unknown"
        entry.result = f"{type(err).__name__}: {err}"
        if not self.done:
            self.trouble = f"{entry.kind} {entry.marker} got no answer: {entry.result}"

    async def _signal(self, entry: Sent, name: str, *args: Any) -> None:
        try:
            await asyncio.wait_for(self.handle.signal(name, *args), self.command_timeout_s)
            entry.outcome = "sent"
        except Exception as err:
            entry.outcome = "unknown"
            entry.result = f"{type(err).__name__}: {err}"

    async def send(self, kind: str, snap: Snapshot | None, pick: int = 0, phase: str = "run",
                   target: str | None = None) -> Sent | None:
        """Send one command of `kind`, its target chosen from `snap` (or given)."""
        if kind in ("decide", "skip", "retry") and target is None:
            assert snap is not None
            candidates = {
                "decide": snap.human_blockers, "skip": lambda: snap.status.next_eligible,
                "retry": snap.retryable,
            }[kind]()
            if not candidates:
                self.noops[kind] += 1
                return None
            target = candidates[pick % len(candidates)]
        entry = self._entry(kind, snap, phase, target or "")
        m = entry.marker
        if kind == "decide":
            entry.text = f"decision {m}"
            await self._update(
                entry,
                DecideArgs(blocker_id=entry.target, decision=entry.text, rationale=f"why {m}", by=m),
            )
        elif kind == "say":
            entry.text = f"note {m}"
            await self._update(entry, SayArgs(text=entry.text, by=m))
        elif kind in ("skip", "retry"):
            await self._update(entry, TaskCommandArgs(task_id=entry.target, by=m))
        elif kind == "abort":
            entry.text = f"abort {m}"
            self.aborted = True
            await self._signal(entry, "abort", AbortArgs(reason=entry.text))
        else:
            await self._signal(entry, kind)
        return entry

    # ---- the action list ---------------------------------------------------------
    async def run(self, actions: list[Action]) -> None:
        """Perform `actions` in order (bursts of `together` ones concurrently); stops
        early when the session closes or stops answering."""
        i = 0
        while i < len(actions) and not self.done and self.trouble is None:
            batch = [actions[i]]
            i += 1
            while i < len(actions) and actions[i].together:
                batch.append(actions[i])
                i += 1
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[Action]) -> None:
        self._batch += 1
        snap: Snapshot | None = None
        for a in batch:
            if a.kind == "sleep":
                await asyncio.sleep(0.02 * (1 + 3 * a.pick))
            elif a.kind == "await_handoff":
                snap = await self.await_handoff()
        commands = [a for a in batch if a.kind in COMMANDS]
        if not commands or self.done or self.trouble:
            return
        need_project = any(a.kind == "retry" for a in commands)
        if snap is None or need_project:
            snap = await self.snapshot(with_project=need_project)
        if snap is None:
            return
        await asyncio.gather(*(self.send(a.kind, snap, a.pick) for a in commands))

    async def await_handoff(self, timeout_s: float = 10.0) -> Snapshot | None:
        """Poll until the session is sealing a handoff (or its generation changed),
        keeping it moving meanwhile: a paused session is resumed and open blockers
        are decided (logged commands like any other)."""
        deadline = time.monotonic() + timeout_s
        start_gen: int | None = None
        decided: set[str] = set()
        while time.monotonic() < deadline and not self.done and self.trouble is None:
            snap = await self.snapshot()
            if snap is None:
                return None
            if start_gen is None:
                start_gen = snap.status.generation
            if snap.status.lifecycle in SEALING:
                self.handoffs_caught += 1
                return snap
            if snap.status.generation != start_gen:
                return snap  # missed it
            if snap.status.paused:
                await self.send("resume", snap)
            for b in snap.human_blockers():
                if b not in decided:
                    decided.add(b)
                    await self.send("decide", snap, target=b)
            await asyncio.sleep(self.poll_s)
        return None

    # ---- ending the session ------------------------------------------------------
    async def finish(
        self, *, abort: bool = False, timeout_s: float = 90.0, min_generation: int = 0
    ) -> SessionResult | None:
        """End the session: resume it and decide every open blocker until it completes,
        or (``abort``) abort it, once, as the last command. Either way it first reaches
        generation ``min_generation`` (flushed, at most once a second, while short of
        it). None if it did not end within ``timeout_s`` or stopped answering
        (`trouble`)."""
        deadline = time.monotonic() + timeout_s
        decided: set[str] = {
            e.target for e in self.ledger if e.kind == "decide" and e.outcome == "accepted"
        }
        last_resume = last_flush = 0.0
        while not self.done and self.trouble is None and time.monotonic() < deadline:
            snap = await self.snapshot()
            if snap is None:
                break
            if (
                snap.status.generation < min_generation and not self.aborted
                and snap.status.lifecycle in (LifecycleState.ACTIVE, LifecycleState.WARNING)
                and time.monotonic() - last_flush > 1.0
            ):
                last_flush = time.monotonic()
                self._batch += 1
                await self.send("flush", snap, phase="finish")
            if abort and not self.aborted and snap.status.generation >= min_generation:
                self._batch += 1
                await self.send("abort", snap, phase="finish")
            if self.aborted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._result), 0.5)
                continue
            self._batch += 1
            if snap.status.paused and time.monotonic() - last_resume > 0.5:
                last_resume = time.monotonic()
                await self.send("resume", snap, phase="finish")
            for b in snap.human_blockers():
                if b not in decided:
                    e = await self.send("decide", snap, phase="finish", target=b)
                    if e is not None and e.outcome == "accepted":
                        decided.add(b)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._result), 0.05)
        if not self.done and self.trouble is None:
            self.trouble = f"session did not end within {timeout_s:.0f} s"
        return self.result()

    async def terminate_if_running(self, reason: str = "driver cleanup") -> None:
        """Terminate the session if it is still running (stuck, or not ended in time)."""
        if not self.done:
            with contextlib.suppress(Exception):
                await self.handle.terminate(reason)
        self._result.cancel()

    # ---- figures ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        c = Counter(e.outcome for e in self.ledger)
        return {
            "sent": len(self.ledger), "accepted": c["accepted"], "rejected": c["rejected"],
            "unknown": c["unknown"], "signals": c["sent"],
            "queued": sum(1 for e in self.ledger if e.queued),
            "closed_run_refusals": self.closed_run_refusals,
            "stalls": self.stalls,
            "during_handoff": sum(
                1 for e in self.ledger if e.lifecycle in {s.value for s in SEALING}
            ),
        }


# ---------------------------------------------------------------- histories
@dataclass
class RunRecord:
    workflow_id: str
    run_id: str
    kind: Literal["session", "handoff"]
    generation: int | None = None
    input_bytes: int = 0
    """Size of the WorkflowExecutionStarted input payloads."""
    inbox: list[dict[str, Any]] = field(default_factory=list)
    """Commands carried into this run (session runs, from its input)."""
    task_failures: list[str] = field(default_factory=list)
    benign_task_failures: int = 0
    task_timeouts: int = 0
    close: str = "running"
    """completed / continued_as_new / failed / terminated / timed_out / canceled / running."""
    result: SessionResult | None = None


_CLOSE = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued_as_new",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "canceled",
}


async def walk_runs(client: Client, workflow_id: str, first_run_id: str | None) -> list[RunRecord]:
    """Every run of the session (first to last, following continue-as-new in the
    histories) and every child it started (the handoff children)."""
    runs: list[RunRecord] = []
    pending: list[tuple[str, str | None, Literal["session", "handoff"]]] = [
        (workflow_id, first_run_id, "session")
    ]
    while pending:
        wid, rid, kind = pending.pop(0)
        history = await client.get_workflow_handle(wid, run_id=rid).fetch_history()
        rec = RunRecord(workflow_id=wid, run_id=rid or "", kind=kind)
        for e in history.events:
            t = e.event_type
            if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                attrs = e.workflow_execution_started_event_attributes
                rec.run_id = rec.run_id or attrs.original_execution_run_id
                rec.input_bytes = attrs.input.ByteSize()
                if kind == "session":
                    with contextlib.suppress(Exception):
                        [inp] = await client.data_converter.decode(
                            attrs.input.payloads, [SessionInput]
                        )
                        rec.generation = inp.generation
                        rec.inbox = [c.model_dump(mode="json") for c in inp.inbox]
            elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                a = e.workflow_task_failed_event_attributes
                if a.cause in BENIGN_TASK_FAILURES:
                    rec.benign_task_failures += 1
                else:
                    name = WorkflowTaskFailedCause.Name(a.cause)
                    rec.task_failures.append(f"{name}: {a.failure.message[:300]}")
            elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                rec.task_timeouts += 1
            elif t == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                ex = e.child_workflow_execution_started_event_attributes.workflow_execution
                pending.append((ex.workflow_id, ex.run_id, "handoff"))
            elif t in _CLOSE:
                rec.close = _CLOSE[t]
                if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                    attrs_c = e.workflow_execution_continued_as_new_event_attributes
                    pending.append((wid, attrs_c.new_execution_run_id, "session"))
                elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED and kind == "session":
                    with contextlib.suppress(Exception):
                        [rec.result] = await client.data_converter.decode(
                            e.workflow_execution_completed_event_attributes.result.payloads,
                            [SessionResult],
                        )
        runs.append(rec)
    return runs


@dataclass
class SessionCheck:
    """What `check_session` found: the runs, how the session ended, what is wrong."""

    workflow_id: str
    runs: list[RunRecord]
    result: SessionResult | None = None
    waiting: SessionStatus | None = None
    """Set when the session is still running and waits for a human."""
    problems: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> list[RunRecord]:
        return [r for r in self.runs if r.kind == "session"]

    @property
    def handoffs(self) -> int:
        return sum(1 for r in self.sessions if r.close == "continued_as_new")

    @property
    def max_successor_input_bytes(self) -> int:
        """Largest continue-as-new input (runs of generation ≥ 1)."""
        return max((r.input_bytes for r in self.sessions[1:]), default=0)

    @property
    def task_failures(self) -> list[str]:
        return [f"{r.workflow_id} ({r.kind}, gen {r.generation}): {f}"
                for r in self.runs for f in r.task_failures]

    @property
    def stuck(self) -> bool:
        return bool(self.problems)


async def check_session(
    client: Client, handle: WorkflowHandle[Any, Any], first_run_id: str | None = None
) -> SessionCheck:
    """Walk the session's runs; `problems` lists failed workflow tasks and an ending
    that is neither COMPLETED with a `SessionResult` nor waiting for a human."""
    first = first_run_id or getattr(handle, "result_run_id", None) or handle.first_execution_run_id
    runs = await walk_runs(client, handle.id, first)
    check = SessionCheck(workflow_id=handle.id, runs=runs)
    check.problems += [f"workflow task failed: {f}" for f in check.task_failures]
    last = check.sessions[-1]
    if last.close == "completed":
        check.result = last.result
        if check.result is None:
            check.problems.append("completed without a SessionResult")
    elif last.close == "running":
        latest = client.get_workflow_handle(handle.id, run_id=last.run_id)
        try:
            desc = await latest.describe()
            attempt = desc.raw_description.pending_workflow_task.attempt
            if desc.status != WorkflowExecutionStatus.RUNNING:
                check.problems.append(f"last run is {desc.status}")
            elif attempt > 1:
                what = "failing" if last.task_failures else "timing out"
                check.problems.append(f"workflow task {what} (attempt {attempt})")
            st = await asyncio.wait_for(latest.query("status", result_type=SessionStatus), 10)
            human = [b for b in st.open_blockers if b.get("type") == BlockerType.HUMAN_DECISION.value]
            if (st.lifecycle == LifecycleState.PAUSED and st.paused) or (
                st.lifecycle == LifecycleState.AWAITING_DECISION and human
            ):
                check.waiting = st
            else:
                check.problems.append(
                    f"running, not waiting for a human: lifecycle {st.lifecycle.value}, "
                    f"blockers {st.open_blockers}"
                )
        except Exception as err:
            check.problems.append(f"running and not answering: {type(err).__name__}: {err}")
    else:
        check.problems.append(f"last run (gen {last.generation}) {last.close}")
    return check


async def assert_never_stuck(
    client: Client, handle: WorkflowHandle[Any, Any], first_run_id: str | None = None
) -> SessionCheck:
    """No failed workflow task in any run or handoff child, and the session ended
    COMPLETED with a SessionResult or waits for a human (PAUSED, or AWAITING_DECISION
    with an open human-decision blocker)."""
    check = await check_session(client, handle, first_run_id)
    assert not check.problems, f"{handle.id} is stuck: " + "; ".join(check.problems[:5])
    return check


# ---------------------------------------------------------------- exactly once
@dataclass
class LedgerCheck:
    lost: list[str] = field(default_factory=list)
    """Accepted, but not applied."""
    doubled: list[str] = field(default_factory=list)
    """Applied more than once (or accepted twice where a validator must refuse)."""
    wrong: list[str] = field(default_factory=list)
    """Rejected, but applied anyway; or applied differently than sent."""
    checked: int = 0

    @property
    def problems(self) -> list[str]:
        return (
            [f"lost: {x}" for x in self.lost] + [f"doubled: {x}" for x in self.doubled]
            + [f"wrong: {x}" for x in self.wrong]
        )


def _how(e: Sent) -> str:
    """How a command was sent, for problem reports (attempts and their errors)."""
    if e.attempts <= 1 and not e.errors:
        return ""
    return f" [sent {e.attempts}×; errors: {e.errors[:3]}]"


def check_exactly_once(ledger: list[Sent], check: SessionCheck) -> LedgerCheck:
    """Each accepted command applied exactly once, no rejected one applied.

    * `say`: the text is in the final `human_messages` exactly once.
    * `decide`: its blocker is resolved with this decision, decision `HD-<blocker>`
      carries it, by `human:<marker>`; at most one decide per blocker is accepted.
    * `retry`: `health.retries` equals the accepted retries.
    * `skip`: the task ends skipped or completed (tasks never retried).
    * every update answered "queued for the successor" is in exactly one successor's
      input inbox; no other marker is in any inbox.

    Needs the final `SessionResult` (`check.result`); without one (stuck), only the
    inbox carry is checked.
    """
    out = LedgerCheck()
    tags = sorted({e.marker.rsplit("-", 1)[0] for e in ledger})
    marker_re = re.compile("|".join(rf"{re.escape(t)}-\d{{5}}" for t in tags) or r"(?!)")
    carried: Counter[str] = Counter()
    for run in check.sessions:
        for cmd in run.inbox:
            for m in set(marker_re.findall(json.dumps(cmd))):
                carried[m] += 1
    updates = [e for e in ledger if e.kind in UPDATE_NAMES]
    # A queued command must reach a successor. Not verifiable (so not "lost") when the
    # session never got past that handoff (stuck: reported as such) or ended with
    # HANDOFF_FAILED (then the run applies its inbox itself).
    verifiable = check.result is not None and check.result.reason != TerminationReason.HANDOFF_FAILED
    for e in updates:
        n = carried[e.marker]
        if e.queued and n > 1:
            out.doubled.append(f"{e.kind} {e.marker} queued during handoff, in {n} successor inboxes" + _how(e))
        elif e.queued and n == 0 and verifiable:
            out.lost.append(f"{e.kind} {e.marker} queued during handoff, in no successor inbox" + _how(e))
        elif not e.queued and e.outcome != "unknown" and n:
            out.wrong.append(f"{e.kind} {e.marker} ({e.outcome}: {e.result}) carried {n}×" + _how(e))
    result = check.result
    if result is None:
        return out
    project = result.project
    messages = Counter(project.human_messages)
    accepted_decides = Counter(e.target for e in updates if e.kind == "decide" and e.outcome == "accepted")
    for blocker_id, n in accepted_decides.items():
        if n > 1:
            out.doubled.append(f"decide: {n} decides accepted for blocker {blocker_id}")
    for e in updates:
        out.checked += 1
        ok = e.outcome == "accepted"
        if e.kind == "say":
            n = messages[e.text]
            if ok and n != 1:
                (out.lost if n == 0 else out.doubled).append(
                    f"say {e.marker}: {n}× in human_messages" + _how(e)
                )
            elif e.outcome == "rejected" and n:
                out.wrong.append(f"say {e.marker} rejected ({e.result}) but in human_messages" + _how(e))
            elif e.outcome == "unknown" and n > 1:
                out.doubled.append(f"say {e.marker}: {n}× in human_messages" + _how(e))
        elif e.kind == "decide":
            decision = next((d for d in project.decisions if d.id == f"HD-{e.target}"), None)
            blocker = project.blocker(e.target)
            mine = decision is not None and decision.title == e.text
            if ok and accepted_decides[e.target] == 1:
                if not mine or blocker is None or blocker.status != "resolved":
                    out.lost.append(f"decide {e.marker} on {e.target}: decision {decision}, blocker {blocker}" + _how(e))
                elif blocker.resolution != e.text or decision.by != f"human:{e.marker}":
                    out.wrong.append(f"decide {e.marker}: resolution {blocker.resolution!r}, by {decision.by!r}" + _how(e))
            elif e.outcome == "rejected" and mine:
                out.wrong.append(f"decide {e.marker} rejected ({e.result}) but recorded" + _how(e))
    n_retry = sum(1 for e in updates if e.kind == "retry" and e.outcome == "accepted")
    n_unknown = sum(1 for e in updates if e.kind == "retry" and e.outcome == "unknown")
    if result.health.retries < n_retry:
        out.lost.append(f"retry: {n_retry} accepted, health.retries {result.health.retries}")
    elif result.health.retries > n_retry + n_unknown:
        out.doubled.append(f"retry: {n_retry} accepted, health.retries {result.health.retries}")
    retried = {e.target for e in updates if e.kind == "retry" and e.outcome != "rejected"}
    for e in updates:
        if e.kind == "skip" and e.outcome == "accepted" and e.target not in retried:
            status = project.tasks[e.target].status
            if status not in (TaskStatus.SKIPPED, TaskStatus.COMPLETED):
                out.lost.append(f"skip {e.marker} of {e.target}: task is {status.value}" + _how(e))
    return out
