"""A Temporal runtime owned by one short-lived process, shut down before the interpreter exits.

Why: every Temporal client runs its RPCs on the threads of a Rust (Tokio) runtime.
When an RPC completes, one of those threads takes the GIL to hand the result to the
asyncio loop (``call_soon_threadsafe``), and lets go of it while it writes to the
loop's wake-up socket. If the main thread meanwhile finishes the command and the
interpreter starts finalizing, the Tokio thread's attempt to take the GIL back makes
CPython end that thread (``PyThread_exit_thread``); the unwinding runs pyo3's GIL
guard, whose ``PyGILState_Release`` finds a thread state that is not current:
``Fatal Python error: PyGILState_Release … Aborted`` (exit 134), *after* the command
printed its output. The window is a few microseconds, so it shows up only when the
machine is loaded and that thread is descheduled at the wrong moment (measured on a
loaded 2-core machine: 12 of 98 and 13 of 50 runs of a connect-describe-print script;
temporalio/sdk-python#300).
The SDK's default runtime is a module global, so it is torn down only during
finalization, when it is too late.

The cure is to own the runtime and drop it while the interpreter is still whole:
dropping the last reference shuts Tokio down with the GIL released and joins its
threads, so a thread finishing an RPC gets the GIL normally and nothing of Temporal
runs any more when the interpreter finalizes. A short-lived program (the ``handoff``
CLI, a user's start script) does::

    from temporal_handoff.runtime_scope import command_runtime, run_short_lived

    async def main() -> None:
        client = await Client.connect(
            "localhost:7233", plugins=[HandoffPlugin()], runtime=command_runtime()
        )
        ...

    run_short_lived(main)   # asyncio.run(main()), then the runtime is shut down

Everything that holds the runtime (clients, workflow handles, workers) must be
unreferenced by then; `run_short_lived` drops the frames of an exception that
escapes `main`, so a failure does not keep the client alive.
"""

from __future__ import annotations

import asyncio
import gc
import os
import traceback
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.runtime import Runtime, TelemetryConfig

T = TypeVar("T")

_runtime: Runtime | None = None

TOKIO_THREAD_NAME = "tokio-rt-worker"
"""The name sdk-core gives the runtime's worker threads (as in /proc/<pid>/task/*/comm)."""


def command_runtime() -> Runtime:
    """This process's runtime for its clients and workers (created on first use)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(telemetry=TelemetryConfig())
    return _runtime


def close_command_runtime() -> bool:
    """Drop the runtime and collect what referenced it; True if it is gone.

    Call it after the event loop is closed. When nothing else holds the runtime, its
    Tokio threads have been joined when this returns. Idempotent; a later
    `command_runtime()` creates a new one.
    """
    global _runtime
    if _runtime is None:
        return True
    ref = weakref.ref(_runtime)
    _runtime = None
    gc.collect()  # clients and handles sit in reference cycles (asyncio tasks, frames)
    return ref() is None


def run_short_lived(main: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(main())``, then `close_command_runtime()`, failure or not."""
    try:
        return asyncio.run(main())  # type: ignore[arg-type]
    except BaseException as err:
        _drop_frames(err)
        raise
    finally:
        close_command_runtime()


def _drop_frames(err: BaseException) -> None:
    """Clear the locals of the finished frames of `err` and of the exceptions it chains.

    A traceback keeps its frames, and a frame keeps its locals: the client among them.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        todo += [exc.__cause__, exc.__context__]
        todo += list(getattr(exc, "exceptions", ()))


def tokio_threads() -> int:
    """How many Tokio worker threads this process has (Linux; -1 where unknown)."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return -1
    count = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().strip() == TOKIO_THREAD_NAME
        except OSError:
            continue  # the thread ended meanwhile
    return count
