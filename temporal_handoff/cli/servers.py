"""`handoff demo`, `handoff dev`, `handoff worker`: the commands that run things."""

from __future__ import annotations

import typer

from temporal_handoff.cli.common import ADDRESS, NAMESPACE, CliError, app, run
from temporal_handoff.runtime_scope import command_runtime


@app.command()
def demo(
    tasks: int = typer.Option(169, min=1, max=100_000),
    phases: int = typer.Option(6, min=1, max=1000),
    context_window: int = typer.Option(8_000, min=2_000),
    model: str = typer.Option("claude-sonnet-4-6"),
    state_dir: str = typer.Option(".handoff", "--dir", help="dev server database and content store"),
    port: int = typer.Option(7233, min=1, max=65535),
    ui_port: int = typer.Option(8233, min=1, max=65535),
    json_out: bool = typer.Option(False, "--json", help="end with one JSON line"),
    stay: bool = typer.Option(True, "--stay/--exit", help="keep the UI up after the session"),
) -> None:
    """The `handoff dev` loop + one session of fake (or real) Claude, several handoffs."""
    from temporal_handoff.demo import run_demo
    from temporal_handoff.devloop import DevLoopError

    async def go() -> None:
        try:
            await run_demo(
                tasks=tasks, phases=phases, context_window=context_window, model=model,
                state_dir=state_dir, port=port, ui_port=ui_port, as_json=json_out, stay=stay,
            )
        except DevLoopError as err:
            raise CliError(str(err)) from None

    run(go)


@app.command()
def dev(
    state_dir: str = typer.Option(".handoff", "--dir", help="dev server database and content store"),
    port: int = typer.Option(7233, min=1, max=65535),
    ui_port: int = typer.Option(8233, min=1, max=65535),
    codec_port: int = typer.Option(0, min=0, max=65535, help="0: a free port"),
    task_queue: str = typer.Option("agent-sessions", envvar="HANDOFF_TASK_QUEUE"),
) -> None:
    """Temporal dev server + UI (wired to the codec server) + worker with the content store; stays up."""
    from temporal_handoff.devloop import DevLoopError, serve_dev

    async def go() -> None:
        try:
            await serve_dev(
                state_dir=state_dir, port=port, ui_port=ui_port, codec_port=codec_port,
                task_queue=task_queue,
            )
        except DevLoopError as err:
            raise CliError(str(err)) from None

    run(go)


@app.command()
def worker(
    task_queue: str = typer.Option("agent-sessions", envvar="HANDOFF_TASK_QUEUE"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
    profile: str | None = typer.Option(
        None, "--profile", envvar="TEMPORAL_PROFILE",
        help="envconfig profile (TOML config file; TLS and API key come from it or TEMPORAL_*)",
    ),
    identity: str | None = typer.Option(
        None, "--identity", envvar="HANDOFF_WORKER_IDENTITY",
        help="worker identity in history (default pid@host)",
    ),
    max_concurrent_activities: int = typer.Option(
        100, min=1, envvar="HANDOFF_MAX_CONCURRENT_ACTIVITIES"
    ),
    max_concurrent_workflow_tasks: int = typer.Option(
        100, min=1, envvar="HANDOFF_MAX_CONCURRENT_WORKFLOW_TASKS"
    ),
    task_queue_activities_per_second: float | None = typer.Option(
        None, min=0.001, envvar="HANDOFF_TASK_QUEUE_ACTIVITIES_PER_SECOND",
        help="server-enforced activity rate for the whole task queue (all workers)",
    ),
    graceful_shutdown_s: float = typer.Option(
        30.0, min=0, envvar="HANDOFF_GRACEFUL_SHUTDOWN_S",
        help="on SIGTERM, time in-flight activities get to finish before they are handed back",
    ),
    storage_dir: str | None = typer.Option(
        None, "--storage-dir", envvar="HANDOFF_STORAGE_DIR",
        help="conversation store shared by every worker (keeps content out of history)",
    ),
    health_file: str | None = typer.Option(
        None, "--health-file", envvar="HANDOFF_HEALTH_FILE",
        help="touched every 5 s while polling (container healthcheck)",
    ),
) -> None:
    """Run a worker (model calls use ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL from the env).

    SIGTERM drains: polling stops, in-flight activities finish (or are handed back to
    another worker after --graceful-shutdown-s), exit code 0.
    """
    from temporal_handoff.workers.worker import (
        WorkerConnectError,
        connect_worker_client,
        run_worker,
    )

    async def go() -> None:
        try:
            client = await connect_worker_client(
                address=address, namespace=namespace, profile=profile, identity=identity,
                storage_dir=storage_dir, runtime=command_runtime(),
            )
        except WorkerConnectError as err:
            raise CliError(str(err)) from None
        except ValueError as err:  # a malformed profile, codec key or storage option
            raise CliError(f"invalid worker configuration: {err}") from None
        await run_worker(
            client,
            task_queue=task_queue,
            max_concurrent_activities=max_concurrent_activities,
            max_concurrent_workflow_tasks=max_concurrent_workflow_tasks,
            task_queue_activities_per_second=task_queue_activities_per_second,
            graceful_shutdown_s=graceful_shutdown_s,
            identity=identity,
            health_file=health_file,
        )

    run(go)
