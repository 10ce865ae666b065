"""Context usage per turn across a session's generations, read back from Temporal history.

For each run (generation) of a session, every completed `call_model` activity's
result is a `ModelResponse` with the exact usage of that call; the context it
occupied is `usage.prompt_tokens + usage.output_tokens`, divided by the run's
context window (`SessionInput.config.context_window`, else the `model_info`
activity's answer). `handoff plot` draws the series with matplotlib (Agg backend,
the optional `plot` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from temporal_handoff.schemas.model_io import ModelInfoResult, ModelResponse
from temporal_handoff.schemas.session import SessionInput, SessionResult


class TurnUsage(BaseModel):
    turn: int
    """1-based model call number within the run."""
    tokens: int
    """Prompt (input + cache creation + cache read) plus output tokens of the call."""


class RunUsage(BaseModel):
    generation: int
    run_id: str
    context_window: int | None = None
    warn_threshold: float = 0.75
    handoff_threshold: float = 0.90
    turns: list[TurnUsage] = Field(default_factory=list)
    ended_by: str = ""
    """Why the run ended: the handoff reason, the termination reason, or RUNNING."""
    previous_run_id: str = ""

    def fractions(self) -> list[float]:
        if not self.context_window:
            return []
        return [t.tokens / self.context_window for t in self.turns]


async def _decode(client: Client, payloads: Any, kind: type) -> Any:
    (value,) = await client.data_converter.decode(payloads, [kind])
    return value


async def run_usage(client: Client, workflow_id: str, run_id: str) -> RunUsage:
    """The per-turn context usage of one run, from its history."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    out = RunUsage(generation=-1, run_id=run_id, ended_by="RUNNING")
    scheduled: dict[int, str] = {}
    window_from_info: int | None = None
    async for event in handle.fetch_history_events():
        et = event.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            inp: SessionInput = await _decode(client, attrs.input.payloads, SessionInput)
            out.generation = inp.generation
            out.context_window = inp.config.context_window
            out.warn_threshold = inp.config.warn_threshold
            out.handoff_threshold = inp.config.handoff_threshold
            out.previous_run_id = attrs.continued_execution_run_id
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs_s = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs_s.activity_type.name
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs_c = event.activity_task_completed_event_attributes
            kind = scheduled.get(attrs_c.scheduled_event_id)
            if kind == "call_model":
                resp: ModelResponse = await _decode(client, attrs_c.result.payloads, ModelResponse)
                if resp.preflight_refused:  # no call was made: nothing was occupied
                    continue
                tokens = resp.usage.prompt_tokens + resp.usage.output_tokens
                out.turns.append(TurnUsage(turn=len(out.turns) + 1, tokens=tokens))
            elif kind == "model_info":
                info: ModelInfoResult = await _decode(
                    client, attrs_c.result.payloads, ModelInfoResult
                )
                window_from_info = info.context_window
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            attrs_n = event.workflow_execution_continued_as_new_event_attributes
            nxt: SessionInput = await _decode(client, attrs_n.input.payloads, SessionInput)
            out.ended_by = nxt.handoff_reason.value if nxt.handoff_reason else "HANDOFF"
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            attrs_d = event.workflow_execution_completed_event_attributes
            res: SessionResult = await _decode(client, attrs_d.result.payloads, SessionResult)
            out.ended_by = res.reason.value
        elif et in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        ):
            out.ended_by = EventType.Name(et).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_")
    if out.context_window is None:
        out.context_window = window_from_info
    return out


async def usage_series(client: Client, workflow_id: str) -> list[RunUsage]:
    """Every run of the session, oldest first (walks back through continue-as-new)."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    runs: list[RunUsage] = []
    run_id = desc.run_id
    while run_id:
        run = await run_usage(client, workflow_id, run_id)
        runs.append(run)
        run_id = run.previous_run_id
    return runs[::-1]


def draw_usage(runs: list[RunUsage], path: Path, title: str = "") -> Path:
    """Draw context usage (% of the window) per turn, generations side by side.

    Handoffs are vertical lines between generations; the warn and handoff thresholds
    are horizontal lines. Needs matplotlib (`pip install temporal-handoff[plot]`).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    x0 = 0
    ymax = 100.0
    handoffs: list[tuple[float, int]] = []
    for i, run in enumerate(runs):
        fr = run.fractions()
        xs = list(range(x0 + 1, x0 + len(fr) + 1))
        ys = [100 * f for f in fr]
        if ys:
            ymax = max(ymax, max(ys) + 5)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, color=colors[i],
                    label=f"gen {run.generation} ({run.ended_by.lower()})")
            # Thresholds of this run, drawn over its own turns (configs may differ).
            ax.hlines(100 * run.warn_threshold, x0 + 0.5, x0 + len(fr) + 0.5,
                      colors="orange", linestyles=":", linewidth=1)
            ax.hlines(100 * run.handoff_threshold, x0 + 0.5, x0 + len(fr) + 0.5,
                      colors="red", linestyles=":", linewidth=1)
        x0 += len(fr)
        if i < len(runs) - 1:
            ax.axvline(x0 + 0.5, color="grey", linestyle="--", linewidth=1)
            handoffs.append((x0 + 0.5, runs[i + 1].generation))
    if runs:
        ax.plot([], [], color="orange", linestyle=":", label=f"warn {runs[0].warn_threshold:.0%}")
        ax.plot([], [], color="red", linestyle=":",
                label=f"handoff {runs[0].handoff_threshold:.0%}")
    ax.set_xlim(0.5, max(x0, 1) + 0.5)
    ax.set_ylim(0, ymax)
    for x, gen in handoffs:
        # Top right of each handoff line: the successor starts low, so this is free.
        ax.annotate(f" handoff → gen {gen}", xy=(x, ymax - 1), rotation=90, fontsize=8,
                    color="grey", ha="left", va="top")
    ax.set_xlabel("model call (turn), across generations")
    ax.set_ylabel("context used (% of window)")
    ax.set_title(title or "Context usage per turn")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, ncols=2, framealpha=0.9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No timestamp/version metadata: the same session gives the same bytes.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path
