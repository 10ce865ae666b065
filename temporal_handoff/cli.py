"""`handoff`: run the demo or a worker, start sessions, steer them, read their chain.

Exit codes: 0 success; 1 the command was rejected (a validator's reason, a failed
session); 2 usage or connection errors (unknown workflow, server unreachable, bad
arguments). Errors are one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from temporalio.client import (
    Client,
    RPCError,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCStatusCode

from temporal_handoff.commands import send_update
from temporal_handoff.runtime_scope import command_runtime, run_short_lived
from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import (
    ProjectState,
    from_orchestrator,
    from_state_json,
    synthetic_project,
)
from temporal_handoff.schemas.session import (
    AbortArgs,
    DecideArgs,
    SayArgs,
    SessionInput,
    SessionResult,
    SessionStatus,
    TaskCommandArgs,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Library warnings (an undecodable payload) would repeat the one-line error on stderr.
logging.getLogger("temporal_handoff").addHandler(logging.NullHandler())
console = Console(width=None if sys.stdout.isatty() else 110)
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

ADDRESS = typer.Option(None, "--address", envvar="TEMPORAL_ADDRESS", help="host:port")
NAMESPACE = typer.Option(None, "--namespace", envvar="TEMPORAL_NAMESPACE")


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def unknown_workflow(workflow_id: str) -> Iterator[None]:
    """Turn the server's NOT_FOUND for `workflow_id` into a one-line CLI error."""
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"unknown workflow {workflow_id!r}") from None
        raise


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


async def connect(address: str | None, namespace: str | None) -> Client:
    """Connect using envconfig profiles/environment, with CLI overrides.

    The client decodes what the workers wrote: it uses the same shared conversation
    store (`HANDOFF_STORAGE_DIR`) and payload codec (`HANDOFF_CODEC_KEYS`).
    """
    from temporal_handoff.workers.plugin import HandoffPlugin
    from temporal_handoff.workers.worker import (
        WorkerConnectError,
        codec_from_env,
        connect_config,
        storage_from_env,
    )

    try:
        config = connect_config(address=address, namespace=namespace)
    except WorkerConnectError as err:
        raise CliError(str(err)) from None
    plugin = HandoffPlugin(storage=storage_from_env(), codec=codec_from_env())
    try:
        return await asyncio.wait_for(
            Client.connect(**config, plugins=[plugin], runtime=command_runtime()), timeout=10
        )
    except (RuntimeError, RPCError, TimeoutError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CliError(f"cannot reach Temporal at {config['target_host']}: {first}") from None


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning known failures into one-line errors and exit codes.

    The command's Temporal runtime is shut down before this returns (see
    :mod:`temporal_handoff.runtime_scope`): no Temporal thread is left to abort the
    interpreter's exit.
    """
    try:
        return run_short_lived(coro_fn)
    except CliError as err:
        fail(str(err), err.code)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        fail(f"rejected: {getattr(cause, 'message', None) or cause}", 1)
    except WorkflowQueryFailedError as err:
        fail(f"query failed: {err}", 1)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            fail(f"not found: {err.message}", 2)
        fail(f"server error: {err.message}", 2)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or err.title
        fail(f"invalid {loc}: {first['msg']}", 2)
    except WorkflowFailureError as err:
        fail(f"workflow failed: {_first_line(err.cause or err)}", 1)
    except typer.Exit:
        raise
    except Exception as err:  # the CLI's contract: one line, no traceback
        from temporal_handoff.read_errors import explain

        unreadable = explain(err)
        if unreadable is not None:
            fail(unreadable, 2)
        fail(f"{type(err).__name__}: {_first_line(err)}", 1)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------- run things
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


def _load_project(
    path: Path | None, tasks: int, phases: int, goal: str | None = None
) -> ProjectState:
    if path is None and goal is not None:
        # A free-form session: a conversation toward the goal, ended by the agent.
        return ProjectState(name="conversation", goal=goal)
    if path is None:
        return synthetic_project(tasks, phases)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CliError(f"cannot read project file {path}: {err}") from None
    if "tasks" in data and ("dag" in data or "metadata" in data):
        return from_orchestrator(data)
    if "progress" in data or "completed_milestones" in data:
        return from_state_json(data)
    return validate_human(ProjectState, data)


@app.command()
def start(
    project: Path | None = typer.Option(None, help="orchestrator state, state.json or ProjectState JSON"),
    tasks: int = typer.Option(20, min=1, help="synthetic project size when no file is given"),
    phases: int = typer.Option(3, min=1),
    goal: str | None = typer.Option(
        None,
        help="without --project: a free-form session (a conversation toward GOAL, no tasks)",
    ),
    config_json: str = typer.Option(
        "{}", "--config",
        help="SessionConfig as JSON (with --resume-from: only the keys to change)",
    ),
    workflow_id: str | None = typer.Option(None, "--id"),
    resume_from: str | None = typer.Option(
        None, help="continue a closed session (completed, aborted, cancelled, terminated, "
        "failed or timed out) as a new one",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="with --resume-from: wait for a running session to close"
    ),
    task_queue: str = typer.Option("agent-sessions", envvar="HANDOFF_TASK_QUEUE"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Start a session (or continue a closed one as a new session, with --resume-from)."""
    try:
        overrides = json.loads(config_json)
    except json.JSONDecodeError as err:
        fail(f"invalid config: not JSON ({err.msg} at char {err.pos})")
    if not isinstance(overrides, dict):
        fail("invalid config: expected a JSON object")
    if wait and not resume_from:
        fail("--wait needs --resume-from")
    if goal is not None and (project is not None or resume_from):
        fail("goal: --goal starts a free-form session; it goes without --project and --resume-from")
    if goal is not None and not goal.strip():
        fail("goal: must not be blank")
    if goal is not None and len(goal) > 16_000:
        fail(f"goal: at most 16,000 characters (got {len(goal):,})")

    async def go() -> None:
        from temporal_handoff.resume import ResumeError, resume_session

        cfg = validate_human(SessionConfig, overrides)
        client = await connect(address, namespace)
        if resume_from:
            try:
                resumed = await resume_session(client, resume_from, overrides, wait=wait)
            except ResumeError as err:
                raise CliError(str(err), err.code) from None
            inp = resumed.input
            err_console.print(resumed.note, highlight=False, markup=False)
        else:
            inp = SessionInput(config=cfg, project=_load_project(project, tasks, phases, goal))
        wid = workflow_id or f"session-{uuid.uuid4().hex[:12]}"
        with _already_started(wid):
            await client.start_workflow(
                "AgentSessionWorkflow", inp, id=wid, task_queue=task_queue,
                static_summary=f"agent session: {inp.project.name}"
                + (f" (resumed from {resume_from})" if resume_from else ""),
            )
        console.print(wid)

    run(go)


@contextlib.contextmanager
def _already_started(workflow_id: str) -> Iterator[None]:
    try:
        yield
    except WorkflowAlreadyStartedError:
        raise CliError(f"id: workflow {workflow_id!r} already exists (choose another --id)") from None


# ---------------------------------------------------------------- steer
def _update(wid: str, name: str, arg: BaseModel, address: str | None, ns: str | None) -> None:
    async def go() -> None:
        client = await connect(address, ns)
        handle = client.get_workflow_handle(wid)
        await _exists(handle)
        out = await send_update(handle, name, arg)
        console.print(out)

    run(go)


def _signal(wid: str, name: str, arg: BaseModel | None, address: str | None, ns: str | None) -> None:
    async def go() -> None:
        client = await connect(address, ns)
        handle = client.get_workflow_handle(wid)
        await _exists(handle)
        if arg is None:
            await handle.signal(name)
        else:
            await handle.signal(name, arg)
        console.print(f"{name} sent to {wid}")

    run(go)


async def _exists(handle: Any) -> None:
    with unknown_workflow(handle.id):
        desc = await handle.describe()
    if desc.status is not None and desc.status.name != "RUNNING":
        raise CliError(f"workflow {handle.id!r} is {desc.status.name.lower()}", 1)


def _validated(model: type[BaseModel], **kw: Any) -> BaseModel:
    try:
        return model(**kw)
    except ValidationError as err:
        first = err.errors()[0]
        fail(f"invalid {'.'.join(str(p) for p in first['loc'])}: {first['msg']}", 2)


@app.command()
def decide(
    workflow_id: str,
    blocker_id: str,
    decision: str,
    rationale: str = typer.Option(""),
    by: str = typer.Option(os.environ.get("USER", "human")),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Answer a blocker (rejected if it does not exist or is resolved)."""
    arg = _validated(DecideArgs, blocker_id=blocker_id, decision=decision, rationale=rationale, by=by)
    _update(workflow_id, "decide", arg, address, namespace)


@app.command()
def say(
    workflow_id: str,
    text: str,
    by: str = typer.Option(os.environ.get("USER", "human")),
    wait: bool = typer.Option(
        False, "--wait", help="Print the agent's answer (its replies until it waits again)."
    ),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds --wait waits."),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Send a message to the agent (appended at its next turn)."""
    arg = _validated(SayArgs, text=text, by=by)
    if not wait:
        _update(workflow_id, "say", arg, address, namespace)
        return
    from temporal_handoff import transcripts

    async def go() -> None:
        client = await connect(address, namespace)
        handle = client.get_workflow_handle(workflow_id)
        await _exists(handle)
        before = await transcripts.mark(client, workflow_id)
        # The answer is the confirmation (a rejection raises here, as without --wait).
        await send_update(handle, "say", arg)
        try:
            reply = await asyncio.wait_for(
                transcripts.wait_for_reply(client, workflow_id, text, before), timeout
            )
        except TimeoutError:
            raise CliError(f"timeout: no reply from {workflow_id!r} within {timeout:g} s", 1) from None
        typer.echo(reply.text or "(the agent gave no text reply)")
        if reply.decisions:
            ids = ", ".join(reply.decisions)
            err_console.print(
                f"waiting for a human decision on {ids}: handoff decide {workflow_id} ID \"…\"",
                markup=False,
            )
        if reply.result is not None:
            ended = reply.result.summary or reply.result.message
            err_console.print(f"session ended {reply.result.reason.value}: {ended}", markup=False)

    run(go)


@app.command()
def skip(
    workflow_id: str, task_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE
) -> None:
    """Skip a task (validated against the task DAG)."""
    _update(workflow_id, "skip_task", _validated(TaskCommandArgs, task_id=task_id), address, namespace)


@app.command()
def retry(
    workflow_id: str, task_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE
) -> None:
    """Retry a failed or skipped task."""
    _update(workflow_id, "retry_task", _validated(TaskCommandArgs, task_id=task_id), address, namespace)


@app.command()
def pause(workflow_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE) -> None:
    """Pause after the current turn (no model calls until resume)."""
    _signal(workflow_id, "pause", None, address, namespace)


@app.command()
def resume(workflow_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE) -> None:
    """Resume a paused session."""
    _signal(workflow_id, "resume", None, address, namespace)


@app.command()
def flush(workflow_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE) -> None:
    """Hand off now (manual FLUSH)."""
    _signal(workflow_id, "flush", None, address, namespace)


@app.command()
def abort(
    workflow_id: str,
    reason: str = typer.Option("aborted by user"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Stop after the current turn; the final handoff document is kept in the result."""
    _signal(workflow_id, "abort", _validated(AbortArgs, reason=reason), address, namespace)


@app.command()
def status(
    workflow_id: str,
    json_out: bool = typer.Option(False, "--json"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Lifecycle, generation, context usage, tokens, tasks, blockers, health."""

    async def go() -> None:
        client = await connect(address, namespace)
        handle = client.get_workflow_handle(workflow_id)
        with unknown_workflow(workflow_id):
            st = await handle.query("status", result_type=SessionStatus)
        if json_out:
            print(st.model_dump_json())
            return
        console.print(
            f"[bold]{st.session_id}[/] gen {st.generation} · {st.lifecycle.value} · "
            f"context {st.context_pct:.1f}% of {st.context_window:,} · "
            f"tasks {st.tasks_done}/{st.tasks_total} · tokens {st.total_tokens:,} "
            f"(${st.cost_usd:.4f})" + (" · paused" if st.paused else "")
        )
        if st.awaiting_input:
            console.print(
                f'  waiting for your message: handoff say {st.session_id} "…" --wait', markup=False
            )
        for b in st.open_blockers:
            console.print(f"  blocker {b['id']} ({b['type']}): {b['description']}")
        for reason in st.rejected_commands[-3:]:
            console.print(f"  rejected: {reason}", markup=False)

    run(go)


@app.command()
def history(
    workflow_id: str,
    json_out: bool = typer.Option(False, "--json"),
    markdown: bool = typer.Option(False, "--markdown"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """The handoff chain across continue-as-new runs (and back through --resume-from)."""
    from temporal_handoff.chain import session_chain
    from temporal_handoff.demo import chain_table

    async def go() -> None:
        client = await connect(address, namespace)
        with unknown_workflow(workflow_id):
            rows = await session_chain(client, workflow_id, follow_resumes=True)
        sessions = list(dict.fromkeys(r.workflow_id for r in rows))
        if json_out:
            print(json.dumps([r.model_dump(mode="json") for r in rows], sort_keys=True))
        elif markdown:
            several = len(sessions) > 1
            print(("| session " if several else "") + "| gen | run id | turns "
                  "| tokens at handoff | payload tokens | ended by |")
            print(("|---" if several else "") + "|---|---|---|---|---|---|")
            for r in rows:
                print(
                    (f"| {r.workflow_id} " if several else "")
                    + f"| {r.generation} | `{r.run_id}` | {r.turns} | {r.tokens_at_handoff or ''} "
                    f"| {r.payload_tokens or ''} | {r.termination} |"
                )
        else:
            title = f"Handoff chain of {workflow_id}"
            if len(sessions) > 1:
                title += " (resumed from " + " ← ".join(reversed(sessions[:-1])) + ")"
            console.print(chain_table(rows, title=title))

    run(go)


@app.command()
def result(
    workflow_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE
) -> None:
    """Wait for a session to end and print its result summary as JSON."""

    async def go() -> None:
        client = await connect(address, namespace)
        try:
            res = await client.get_workflow_handle(workflow_id, result_type=SessionResult).result()
        except WorkflowFailureError as err:
            raise CliError(f"session failed: {err.cause}", 1) from None
        print(
            json.dumps(
                {
                    "reason": res.reason.value,
                    "generation": res.generation,
                    "tasks_completed": res.project.completed_count,
                    "tasks_total": len(res.project.tasks),
                    "total_tokens": res.ledger.total_tokens,
                    "final_reply": res.final_reply,
                    "summary": res.summary,
                },
                sort_keys=True,
            )
        )

    run(go)


# The read-side commands (list, watch, stats, export, replay, plot, setup) register
# themselves on `app`.
import temporal_handoff.codec_cli  # noqa: E402
import temporal_handoff.transcript_cli  # noqa: E402
import temporal_handoff.visibility_cli  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
