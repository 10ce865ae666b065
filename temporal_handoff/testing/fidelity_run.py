"""Run one handoff-fidelity session and grade it (shared by the test and the benchmark).

The session runs on a real worker (the caller's, on `task_queue`) against a
`FakeAnthropicServer` whose brain is a `PayloadAgent`, with ``progress_hints=False`` and
the plan of `fidelity_plan` as its system prompt. A simulated human answers every
human-decision blocker with `human_choice`. Afterwards the chain is read back from
Temporal: each successor's input holds the project state at the handoff and the
continuation prompt it was given, so the critical items of every handoff can be
checked, with the handoff's own probes (`documents.probe`), against the prompt the
successor read (for the blanked control: "(nothing)").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.probe import Probe, derive_probes, find_misses
from temporal_handoff.runs import read_runs
from temporal_handoff.schemas.config import CompressionLevel, SessionConfig
from temporal_handoff.schemas.handoff import HandoffContext
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import BlockerType, ProjectState
from temporal_handoff.schemas.session import DecideArgs, SessionInput, SessionResult, SessionStatus
from temporal_handoff.testing.fidelity_plan import FidelityPlan, human_choice, score_fidelity
from temporal_handoff.testing.payload_agent import PayloadAgent

__all__ = ["FidelityRun", "critical_probes", "run_fidelity"]


@dataclass
class FidelityRun:
    """What one fidelity session did, graded."""

    result: SessionResult
    score: dict[str, Any]
    generations: int
    payload_tokens: list[int] = field(default_factory=list)
    payload_levels: list[str] = field(default_factory=list)
    """The level each continuation prompt was rendered at (above the requested one
    when the probe check escalated it)."""
    critical_survival_by_generation: list[float | None] = field(default_factory=list)
    probe_misses: int = 0
    human_decisions_sent: int = 0
    progress_hints_seen: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The figures as one flat dict (JSON-ready)."""
        return {
            "generations": self.generations,
            "reason": self.result.reason.value,
            **self.score,
            "critical_survival_by_generation": self.critical_survival_by_generation,
            "probe_misses": self.probe_misses,
            "payload_tokens": self.payload_tokens,
            "payload_levels": self.payload_levels,
            "human_decisions_sent": self.human_decisions_sent,
            "progress_hints_seen": self.progress_hints_seen,
            "wall_s": round(self.wall_s, 2),
        }


def critical_probes(state: ProjectState) -> dict[str, Probe]:
    """The probes of the handoff's own check (`documents.probe`) for `state`: current
    phase, open blockers, human decisions with their text, failed tasks with their
    error, next eligible tasks; keyed ``kind:id`` to follow an item across handoffs."""
    ctx = HandoffContext(
        session_id="fidelity", generation=0, reason=TerminationReason.CONTEXT_HANDOFF
    )
    return {f"{p.kind}:{p.item}": p for p in derive_probes(build_document(state, ctx))}


def _read(prompt: str, agent: PayloadAgent) -> str:
    """The continuation prompt as the agent reads it (blanked for the control)."""
    return "(nothing)" if agent.blank_handoff else prompt


async def _decide_blockers(
    handle: WorkflowHandle[Any, Any], seed: int, done: asyncio.Future[Any]
) -> int:
    """A human answering every human-decision blocker with `human_choice`."""
    sent = 0
    answered: set[str] = set()
    while not done.done():
        with contextlib.suppress(RPCError):
            st: SessionStatus = await handle.query("status", result_type=SessionStatus)
            for b in st.open_blockers:
                bid = b.get("id", "")
                if b.get("type") != BlockerType.HUMAN_DECISION.value or bid in answered:
                    continue
                with contextlib.suppress(WorkflowUpdateFailedError):
                    await handle.execute_update(
                        "decide",
                        DecideArgs(blocker_id=bid, decision=human_choice(seed, bid), by="lead"),
                        result_type=str,
                    )
                    answered.add(bid)
                    sent += 1
        await asyncio.sleep(0.05)
    return sent


async def run_fidelity(
    client: Client,
    task_queue: str,
    project: ProjectState,
    plan: FidelityPlan,
    agent: PayloadAgent,
    *,
    level: CompressionLevel = CompressionLevel.STANDARD,
    context_window: int = 8_000,
    max_generations: int = 40,
    max_tokens: int = 1_024,
    max_turns_per_generation: int = 500,
    prefix: str = "fidelity",
) -> FidelityRun:
    """Run a session of `project` to its end and grade it.

    Args:
        client: A client with the `HandoffPlugin`.
        task_queue: Queue of a running worker whose model calls reach the fake
            server that `agent` answers.
        project: The seeded project (its tasks are the plan's).
        plan: `fidelity_plan(project, seed)`; its system prompt is the session's.
        agent: The `PayloadAgent` plugged into the fake server (its seed = the plan's).
        level: Compression level of every handoff.
        context_window: A small window forces a handoff every few turns.
        max_generations: Loop guard (the blanked control may never finish).
        max_tokens: Per call.
        max_turns_per_generation: Hand off after this many turns even with room left.
        prefix: Workflow id prefix.
    """
    config = SessionConfig(
        system_prompt=plan.system_prompt(),
        progress_hints=False,
        compression_level=level,
        context_window=context_window,
        max_generations=max_generations,
        max_tokens=max_tokens,
        max_turns_per_generation=max_turns_per_generation,
    )
    started = time.monotonic()
    handle: WorkflowHandle[Any, SessionResult] = await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=config, project=project),
        id=f"{prefix}-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=SessionResult,
    )
    result_task = asyncio.ensure_future(handle.result())
    human = asyncio.ensure_future(_decide_blockers(handle, plan.seed, result_task))
    try:
        result = await result_task
    finally:
        result_task.cancel()
        sent = await human
    wall = time.monotonic() - started

    # Every successor's input: the state at its handoff and the prompt it was given.
    handoffs: list[tuple[ProjectState, str]] = []
    tokens: list[int] = []
    levels: list[str] = []
    for run in (await read_runs(client, handle.id, calls=False))[1:]:
        if run.input.handoff is not None:
            handoffs.append((run.input.project, _read(run.input.handoff.prompt, agent)))
            tokens.append(run.input.handoff.prompt_tokens)
            levels.append(run.input.handoff.level.value)
    survival: list[float | None] = []
    misses = 0
    first = critical_probes(handoffs[0][0]) if handoffs else {}
    for state, prompt in handoffs:
        now = critical_probes(state)
        missed = {f"{p.kind}:{p.item}" for p, _ in find_misses(list(now.values()), prompt)}
        misses += len(missed)
        alive = [k for k in first if k in now]
        present = [k for k in alive if k not in missed]
        survival.append(round(len(present) / len(alive), 4) if alive else None)
    return FidelityRun(
        result=result,
        score=score_fidelity(plan, result.project, list(agent.actions)),
        generations=result.generation + 1,
        payload_tokens=tokens,
        payload_levels=levels,
        critical_survival_by_generation=survival,
        probe_misses=misses,
        human_decisions_sent=sent,
        progress_hints_seen=agent.progress_hints_seen,
        wall_s=wall,
    )
