"""Context usage per turn across a session's generations, read back from Temporal history.

For each run (generation) of a session (read by :mod:`temporal_handoff.runs`), every
completed `call_model` activity's result is a `ModelResponse` with the exact usage of
that call; the context it occupied is `usage.prompt_tokens + usage.output_tokens`,
divided by the run's context window (`SessionInput.config.context_window`, else the
`model_info` activity's answer). `handoff plot` draws the series with matplotlib (Agg backend,
the optional `plot` extra).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from temporalio.client import Client

from temporal_handoff.runs import Run, read_runs


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


def run_usage(run: Run) -> RunUsage:
    """The per-turn context usage of one run read by :mod:`temporal_handoff.runs`."""
    cfg = run.input.config
    window = cfg.context_window
    if window is None and run.model_info is not None:
        window = run.model_info.context_window
    return RunUsage(
        generation=run.generation,
        run_id=run.run_id,
        context_window=window,
        warn_threshold=cfg.warn_threshold,
        handoff_threshold=cfg.handoff_threshold,
        turns=[
            TurnUsage(turn=i, tokens=c.usage.prompt_tokens + c.usage.output_tokens)
            for i, c in enumerate(run.turns, start=1)
        ],
        ended_by=run.ended_by,
        previous_run_id=run.previous_run_id,
    )


async def usage_series(client: Client, workflow_id: str) -> list[RunUsage]:
    """Every run of the session, oldest first."""
    return [run_usage(run) for run in await read_runs(client, workflow_id)]


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
