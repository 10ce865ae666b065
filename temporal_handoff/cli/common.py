"""What every `handoff` command shares: the typer `app`, consoles, options, the
connection, and `run` (one-line errors and exit codes).

The command modules beside this one (servers, sessions, steer, read, codec,
visibility, chain, cluster) import from here and register on `app`; nothing here
imports them, so there is no import circle. `temporal_handoff.cli` imports them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import (
    Client,
    RPCError,
    WorkflowExecutionDescription,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCStatusCode

from temporal_handoff.cli.dev_env import discovered
from temporal_handoff.runtime_scope import command_runtime, run_short_lived

HELP = """`handoff`: run the demo or a worker, start sessions, steer them, read their chain.

Exit codes: 0 success; 1 the command was rejected (a validator's reason, a failed
session); 2 usage or connection errors (unknown workflow, server unreachable, bad
arguments). Errors are one line, never a traceback.
"""

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
# Library warnings (an undecodable payload) would repeat the one-line error on stderr.
logging.getLogger("temporal_handoff").addHandler(logging.NullHandler())
console = Console(width=None if sys.stdout.isatty() else 110)
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
DISCOVERED: dict[str, str] = {}
"""What the running command took from `.handoff/dev.env` (see `cli.dev_env`)."""


@app.callback()
def _find_dev_loop(ctx: typer.Context) -> None:
    # Runs before the command's own options are read: values from the dev loop's
    # `dev.env` fill the environment variables that are unset (flags still win), for
    # this command only.
    path, found = discovered()
    if not found:
        return
    os.environ.update(found)
    DISCOVERED.clear()
    DISCOVERED.update(found, **{"file": str(path)})

    def forget() -> None:
        for key in found:
            os.environ.pop(key, None)
        DISCOVERED.clear()

    ctx.call_on_close(forget)

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
        where = config["target_host"]
        if DISCOVERED.get("TEMPORAL_ADDRESS") == where:
            where += f" (from {DISCOVERED['file']}: is `handoff dev` running?)"
        raise CliError(f"cannot reach Temporal at {where}: {first}") from None


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


async def describe(client: Client, workflow_id: str) -> WorkflowExecutionDescription:
    """The latest run's description; an unknown id is a one-line error."""
    with unknown_workflow(workflow_id):
        return await client.get_workflow_handle(workflow_id).describe()


def out_console() -> Console:
    """The CLI console on a terminal; a wide one when piped (no truncated columns)."""
    return console if console.is_terminal else Console(width=200, highlight=False)
