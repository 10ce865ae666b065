"""`handoff start`: a new session, or a closed one continued (--resume-from)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import typer
from temporalio.exceptions import WorkflowAlreadyStartedError

from temporal_handoff.cli.common import (
    ADDRESS,
    NAMESPACE,
    CliError,
    app,
    connect,
    console,
    err_console,
    fail,
    run,
)
from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import (
    ProjectState,
    from_orchestrator,
    from_state_json,
    synthetic_project,
)
from temporal_handoff.schemas.session import SessionInput


def _load_project(path: Path | None, tasks: int, phases: int) -> ProjectState:
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
            inp = SessionInput(config=cfg, project=_load_project(project, tasks, phases))
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
