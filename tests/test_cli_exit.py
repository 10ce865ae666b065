"""Short-lived clients exit cleanly: no `Fatal Python error: PyGILState_Release` (exit 134).

A Temporal client's RPCs complete on Tokio threads that take the GIL to wake the
asyncio loop; one still doing so when the interpreter finalizes aborts the process
after it printed its output (see `temporal_handoff.runtime_scope`). The `handoff`
commands and `run_short_lived` now shut their runtime down before the interpreter
exits. These tests run real subprocesses against the dev server, with the session's
worker (in this process) answering `status` queries.

The race needs a Tokio thread to be descheduled at the wrong moment, so the
subprocesses run two at a time on one CPU (`taskset`, where available), as on a
loaded machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session

HANDOFF = str(Path(sys.executable).with_name("handoff"))
PIN = ["taskset", "-c", "0"] if shutil.which("taskset") else []

# Runs a `handoff` command in this interpreter and, once it has returned (before the
# interpreter finalizes), reports how many Tokio threads are still alive.
THREADS_AFTER_COMMAND = """
import sys
from temporal_handoff.cli import app
from temporal_handoff.runtime_scope import tokio_threads
try:
    app(sys.argv[1:])
except SystemExit as exc:
    print(f"exit={exc.code} tokio_threads={tokio_threads()}", file=sys.stderr)
"""

# A user's start script: connect, one call, print, exit.
START_SCRIPT = """
import sys
from temporalio.client import Client
from temporal_handoff.runtime_scope import command_runtime, run_short_lived
from temporal_handoff.workers.plugin import HandoffPlugin

async def main() -> None:
    client = await Client.connect(
        sys.argv[1], plugins=[HandoffPlugin()], runtime=command_runtime()
    )
    print((await client.get_workflow_handle(sys.argv[2]).describe()).status.name)

run_short_lived(main)
"""


@dataclass
class Proc:
    args: list[str]
    code: int
    out: str
    err: str


@dataclass
class Served:
    wid: str
    address: str
    env: dict[str, str]


@pytest_asyncio.fixture(loop_scope="session")
async def served(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> AsyncIterator[Served]:
    """A finished session, and its worker kept running to answer queries."""
    address = env.client.service_client.config.target_host
    brain = ScriptedAgentBrain(tasks_per_turn=2)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": 3_000}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(8, 2), prefix="exit", context_window=3_000
            )
            result = await handle.result()
            assert result.reason == TerminationReason.TASK_COMPLETED
            environ = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default"}
            environ.pop("HANDOFF_STORAGE_DIR", None)
            yield Served(handle.id, address, environ)


async def spawn(args: list[str], environ: dict[str, str]) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        *args, env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None
    return Proc(args, proc.returncode, out.decode(), err.decode())


async def spawn_all(commands: list[list[str]], environ: dict[str, str], lanes: int = 2) -> list[Proc]:
    """Run the commands, `lanes` at a time; every result, in order."""
    gate = asyncio.Semaphore(lanes)

    async def one(args: list[str]) -> Proc:
        async with gate:
            return await spawn(PIN + args, environ)

    return list(await asyncio.gather(*(one(args) for args in commands)))


def failures(procs: list[Proc]) -> str:
    """'' if every process exited 0, else how many did not and how each ended."""
    bad = [p for p in procs if p.code != 0]
    lines = [
        f"exit {p.code} ({' '.join(a for a in p.args if len(a) < 80 and '/' not in a)}): "
        + next((ln for ln in p.err.splitlines() if "Fatal" in ln), p.err.strip()[-200:])
        for p in bad
    ]
    return f"{len(bad)} of {len(procs)} failed:\n" + "\n".join(lines) if bad else ""


async def test_commands_leave_no_temporal_thread_to_the_interpreter_exit(served: Served) -> None:
    """Deterministic: when a command returns, its runtime's Tokio threads are joined
    (before the fix the SDK's default runtime kept them until finalization)."""
    for args, code in (
        (["history", served.wid, "--json"], 0),
        (["status", served.wid, "--json"], 0),
        (["history", "no-such-session", "--json"], 2),  # a failure keeps no client alive
    ):
        p = await spawn([sys.executable, "-c", THREADS_AFTER_COMMAND, *args], served.env)
        assert f"exit={code} tokio_threads=0" in p.err, (args, p.err[-500:])


async def test_fifty_short_lived_cli_invocations_exit_0(served: Served) -> None:
    """`handoff history --json` / `status --json`; on the code before the fix 6 of these
    50 aborted (exit -6, `PyGILState_Release`)."""
    commands = [
        [HANDOFF, "history", served.wid, "--json"] if i % 2 == 0 else
        [HANDOFF, "status", served.wid, "--json"]
        for i in range(50)
    ]
    procs = await spawn_all(commands, served.env)
    assert not failures(procs), failures(procs)
    for p in procs:
        parsed = json.loads(p.out)
        if "history" in p.args:
            assert parsed[-1]["termination"] == "TASK_COMPLETED"
        else:
            assert parsed["session_id"] == served.wid


async def test_short_lived_start_scripts_exit_0(served: Served) -> None:
    """A user's script on `run_short_lived` + `command_runtime()`. With both made
    no-ops (the SDK's default runtime, plain `asyncio.run`) 13 of 50 aborted (about one
    in four); 15 runs keep the test's cost down (the 50-run CLI test above is the issue's
    must-show)."""
    script = [sys.executable, "-c", START_SCRIPT, served.address, served.wid]
    procs = await spawn_all([script] * 15, served.env)
    assert not failures(procs), failures(procs)
    assert {p.out.strip() for p in procs} == {"COMPLETED"}
