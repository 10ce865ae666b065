"""Commands that read a session's chain of runs: `handoff export`, `handoff replay`,
`handoff plot`.

Exit code 1 for a failed check (nondeterminism), 2 for usage/connection errors and
unknown workflows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from temporalio.client import Client, WorkflowHistory

from temporal_handoff.cli.common import (
    ADDRESS,
    NAMESPACE,
    CliError,
    app,
    connect,
    describe,
    fail,
    out_console,
    run,
)
from temporal_handoff.plotting import draw_usage, usage_series


# ---------------------------------------------------------------- export
@app.command()
def export(
    workflow_id: str,
    out_dir: Path = typer.Option(..., "--dir", help="output directory (created)"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Write state.json and session-summaries/<generation>.md (stable, diff-friendly)."""
    from temporal_handoff.export import export_session

    async def go() -> None:
        client = await connect(address, namespace)
        await describe(client, workflow_id)
        try:
            paths = await export_session(client, workflow_id, out_dir)
        except OSError as err:
            raise CliError(f"cannot write to {out_dir}: {err}") from None
        for p in paths:
            print(p)

    run(go)


# ---------------------------------------------------------------- replay
async def session_histories(client: Client, workflow_id: str) -> list[tuple[str, WorkflowHistory]]:
    """Every run of a session and each run's handoff child, labelled, oldest first."""
    from temporal_handoff.runs import read_handoff, read_runs

    out: list[tuple[str, WorkflowHistory]] = []
    for one in await read_runs(client, workflow_id):
        out.append((f"{workflow_id} gen {one.generation}", one.history))
        if one.handoff_child:
            child = await read_handoff(client, one.handoff_child)
            if child is not None:  # else past retention
                out.append((f"{one.handoff_child} (handoff child)", child.history))
    return out


async def replay_histories(histories: list[tuple[str, WorkflowHistory]]) -> dict[str, str]:
    """Replay with the current workflow code; label → first line of each failure."""
    from temporalio.worker import Replayer

    from temporal_handoff.runtime_scope import command_runtime
    from temporal_handoff.workers.plugin import HandoffPlugin
    from temporal_handoff.workers.worker import codec_from_env, storage_from_env

    # The plugin contributes AgentSessionWorkflow and HandoffWorkflow, the pydantic
    # converter and the sandbox passthrough, exactly as on a worker, and the same
    # content store and codec as every other command (a store-backed history does
    # not replay without them). (Listing the workflows here as well would register
    # each twice.)
    replayer = Replayer(
        workflows=[], plugins=[HandoffPlugin(storage=storage_from_env(), codec=codec_from_env())],
        runtime=command_runtime(),
    )

    async def each() -> Any:
        for _, history in histories:
            yield history

    failures: dict[str, str] = {}
    labels = iter(label for label, _ in histories)
    async with replayer.workflow_replay_iterator(each()) as results:
        # One result per history, in order.
        async for result in results:
            label = next(labels)
            err = result.replay_failure
            if err is not None:
                failures[label] = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return failures


@app.command()
def replay(
    workflow_id: str | None = typer.Argument(None),
    history_file: list[Path] = typer.Option(
        [], "--history-file", help="also replay a JSON history (temporal workflow show -o json)"
    ),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Replay every run of a session (and its handoff children) with the current code.

    Exit code 1 if any history does not replay (nondeterminism).
    """
    if workflow_id is None and not history_file:
        fail("give a WORKFLOW_ID or --history-file")

    async def go() -> int:
        histories: list[tuple[str, WorkflowHistory]] = []
        for path in history_file:
            try:
                histories.append((str(path), WorkflowHistory.from_json(path.stem, path.read_text())))
            except (OSError, ValueError, KeyError) as err:
                raise CliError(f"cannot read history {path}: {err}") from None
        if workflow_id is not None:
            client = await connect(address, namespace)
            await describe(client, workflow_id)
            histories += await session_histories(client, workflow_id)
        from temporal_handoff.read_errors import history_needs_store, no_store_message
        from temporal_handoff.workers.worker import storage_from_env

        if storage_from_env() is None and history_needs_store(h for _, h in histories):
            raise CliError(no_store_message())
        failures = await replay_histories(histories)
        out = out_console()
        for label, history in histories:
            n = len(history.events)
            if label in failures:
                out.print(f"[red]FAIL[/] {label} ({n} events): {failures[label]}", highlight=False)
            else:
                out.print(f"[green]ok[/]   {label} ({n} events)", highlight=False)
        out.print(
            f"{len(histories) - len(failures)}/{len(histories)} histories replayed"
            + (" — nondeterminism detected" if failures else ""),
            highlight=False,
        )
        return 1 if failures else 0

    code = run(go)
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------- plot
@app.command()
def plot(
    workflow_id: str,
    output: Path = typer.Option(Path("usage.png"), "-o", "--output", help="PNG to write"),
    title: str = typer.Option("", help="chart title (default: the workflow id)"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Context usage per turn across generations (handoffs and thresholds drawn)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("plot needs matplotlib: pip install 'temporal-handoff[plot]'")

    async def go() -> None:
        client = await connect(address, namespace)
        await describe(client, workflow_id)
        runs = await usage_series(client, workflow_id)
        try:
            draw_usage(runs, output, title=title or f"Context usage of {workflow_id}")
        except OSError as err:
            raise CliError(f"cannot write {output}: {err}") from None
        turns = sum(len(r.turns) for r in runs)
        peak = max((f for r in runs for f in r.fractions()), default=0.0)
        print(
            f"wrote {output}: {len(runs)} generation(s), {turns} turns, "
            f"{len(runs) - 1} handoff(s), peak {100 * peak:.1f}% of the window"
        )

    run(go)
