"""Steer a running session: decide, say, skip, retry (updates); pause, resume,
flush, abort (signals)."""

from __future__ import annotations

import os
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from temporal_handoff.cli.common import (
    ADDRESS,
    NAMESPACE,
    CliError,
    app,
    connect,
    console,
    fail,
    run,
    unknown_workflow,
)
from temporal_handoff.commands import send_update
from temporal_handoff.schemas.session import AbortArgs, DecideArgs, SayArgs, TaskCommandArgs


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
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Send a message to the agent (appended at its next turn)."""
    _update(workflow_id, "say", _validated(SayArgs, text=text, by=by), address, namespace)


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
