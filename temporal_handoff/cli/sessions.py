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
from temporal_handoff.cli.seeds import load_seed_file
from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SessionInput
from temporal_handoff.testing.synthetic import synthetic_project


def _load_project(
    path: Path | None, tasks: int, phases: int, goal: str | None = None
) -> ProjectState:
    """The synthetic project, a seed file (one-line CliError naming file and field), or
    with `goal` a free-form session's state (a conversation toward it, no tasks)."""
    if path is None and goal is not None:
        return ProjectState(name="conversation", goal=goal)
    if path is None:
        return synthetic_project(tasks, phases)
    return load_seed_file(path).state


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
    # A bad project file is reported before anything connects.
    seeded: ProjectState | None = None
    if not resume_from:
        try:
            seeded = _load_project(project, tasks, phases, goal)
        except CliError as err:
            fail(str(err), err.code)

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
            assert seeded is not None
            inp = SessionInput(config=cfg, project=seeded)
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
