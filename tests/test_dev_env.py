"""Every `handoff` command finds the `handoff dev` loop by itself via `.handoff/dev.env`
when no environment variable or flag says otherwise.

The file is written as `handoff dev` writes it (`devloop.DevLoop.exports`), pointing
at the test's dev server, a content store and a task queue served by a real worker;
the commands run with TEMPORAL_ADDRESS, HANDOFF_STORAGE_DIR and HANDOFF_TASK_QUEUE
unset, in the directory that holds `.handoff/`.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from temporal_handoff.cli import app
from temporal_handoff.cli.dev_env import KEYS, dev_env_file
from temporal_handoff.schemas.session import SessionInput
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.storage import external_storage
from tests.conftest import running_worker
from tests.helpers import is_store_reference
from tests.test_cli_visibility import closed_port
from tests.waits import wait_status

UNSET: dict[str, str | None] = {key: None for key in (*KEYS, "HANDOFF_DEV_DIR")}
TASKS = 400
"""A project whose session input (~80 KB) goes to the content store: reading it back
needs the store the file names."""


async def handoff(*args: str, **env: str | None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env={**UNSET, **env})


async def test_commands_find_server_store_and_task_queue_in_dot_handoff(
    env: WorkflowEnvironment, client: Client, task_queue: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / ".handoff" / "payloads"
    store.mkdir(parents=True)
    address = env.client.service_client.config.target_host
    (tmp_path / ".handoff" / "dev.env").write_text(
        f"export TEMPORAL_ADDRESS={address}\nexport TEMPORAL_NAMESPACE=default\n"
        f"export HANDOFF_STORAGE_DIR={store}\nexport HANDOFF_TASK_QUEUE={task_queue}\n"
        "export HANDOFF_CODEC_TOKEN=not-needed-by-commands\n"
    )
    monkeypatch.chdir(tmp_path)
    wid = f"dev-env-{uuid.uuid4().hex[:8]}"
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url, storage=external_storage(store)):
            started = await handoff(
                "start", "--tasks", str(TASKS), "--config", '{"context_window": 3000}', "--id", wid
            )
            assert started.exit_code == 0, started.output
            try:
                # On the worker of the file's task queue: the session makes progress.
                await wait_status(client, wid, lambda s: s.turn >= 1, "a first model turn")
                status = await handoff("status", wid, "--json")
                assert status.exit_code == 0, status.output
                assert json.loads(status.stdout)["session_id"] == wid
                # The CLI's client wrote the session input to the file's store...
                history = await client.get_workflow_handle(wid).fetch_history()
                first = history.events[0].workflow_execution_started_event_attributes
                assert is_store_reference(first.input.payloads[0])
                assert any(p.is_file() for p in store.rglob("*"))
                # ...and reads it back from there.
                shown = await handoff("history", wid, "--json")
                assert shown.exit_code == 0, shown.output
                assert [r["generation"] for r in json.loads(shown.stdout)][0] == 0

                # Flags and the environment win over the file.
                closed = closed_port()
                res = await handoff("history", wid, "--address", closed)
                assert res.exit_code == 2 and f"cannot reach Temporal at {closed}" in res.stderr
                res = await handoff("history", wid, TEMPORAL_ADDRESS=closed)
                assert res.exit_code == 2 and f"cannot reach Temporal at {closed}" in res.stderr
                # HANDOFF_DEV_DIR= turns the lookup off: the default address again.
                res = await handoff("history", wid, HANDOFF_DEV_DIR="")
                assert res.exit_code != 0 and wid not in res.stdout
            finally:
                await client.get_workflow_handle(wid).terminate("test done")
    # Nothing the file said stays in this process's environment after a command.
    assert os.environ.get("HANDOFF_STORAGE_DIR") != str(store)
    assert os.environ.get("HANDOFF_TASK_QUEUE") != task_queue


async def test_a_stale_dev_env_says_where_the_address_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = closed_port()
    (tmp_path / ".handoff").mkdir()
    (tmp_path / ".handoff" / "dev.env").write_text(f"export TEMPORAL_ADDRESS={closed}\n")
    monkeypatch.chdir(tmp_path)
    res = await handoff("list")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"cannot reach Temporal at {closed} (from .handoff/dev.env" in lines[0]


async def test_a_command_in_a_subdirectory_finds_the_dev_loop_up_the_tree(
    env: WorkflowEnvironment, client: Client, task_queue: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As git finds `.git`: the nearest `.handoff/dev.env` from the current directory
    up; `HANDOFF_DEV_DIR` and the environment win over it."""
    address = env.client.service_client.config.target_host
    (tmp_path / ".handoff").mkdir()
    (tmp_path / ".handoff" / "dev.env").write_text(
        f"export TEMPORAL_ADDRESS={address}\nexport TEMPORAL_NAMESPACE=default\n"
    )
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    wid = f"dev-env-up-{uuid.uuid4().hex[:8]}"
    # No worker: the session only needs a history for `handoff history` to read.
    await client.start_workflow(
        "AgentSessionWorkflow", SessionInput(project=synthetic_project(3, 1)), id=wid,
        task_queue=task_queue,
    )
    try:
        found = await handoff("history", wid, "--json")
        assert found.exit_code == 0, found.output
        assert [r["generation"] for r in json.loads(found.stdout)] == [0]

        # A nearer `.handoff/dev.env` wins (here a stale one), named in the error.
        closed = closed_port()
        nearer = tmp_path / "src" / ".handoff"
        nearer.mkdir()
        (nearer / "dev.env").write_text(f"export TEMPORAL_ADDRESS={closed}\n")
        res = await handoff("history", wid)
        assert res.exit_code == 2, res.output
        assert f"cannot reach Temporal at {closed} (from {nearer / 'dev.env'}" in res.stderr
        # HANDOFF_DEV_DIR wins over the walk; an environment variable over both.
        res = await handoff("history", wid, "--json", HANDOFF_DEV_DIR=str(tmp_path / ".handoff"))
        assert res.exit_code == 0 and wid in res.stdout, res.output
        res = await handoff("history", wid, TEMPORAL_ADDRESS=address)
        assert res.exit_code == 0 and wid in res.stdout, res.output
    finally:
        await client.get_workflow_handle(wid).terminate("test done")


def test_the_walk_up_stops_at_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".handoff").mkdir()
    (tmp_path / ".handoff" / "dev.env").write_text("export TEMPORAL_ADDRESS=x:1\n")
    home = tmp_path / "home" / "me"
    (home / "proj").mkdir(parents=True)
    (tmp_path / "srv" / "proj").mkdir(parents=True)
    # Above the home directory: not looked at.
    assert dev_env_file({"HOME": str(home)}, cwd=home / "proj") is None
    # Outside it: up to the root, so the file above is found.
    found = dev_env_file({"HOME": str(home)}, cwd=tmp_path / "srv" / "proj")
    assert found == tmp_path / ".handoff" / "dev.env"
    # In the home directory itself: found there.
    (home / ".handoff").mkdir()
    (home / ".handoff" / "dev.env").write_text("export TEMPORAL_ADDRESS=y:1\n")
    assert dev_env_file({"HOME": str(home)}, cwd=home / "proj") == home / ".handoff" / "dev.env"
    # In the current directory: the short relative path (as error messages show it).
    monkeypatch.chdir(tmp_path)
    assert dev_env_file({"HOME": str(home)}) == Path(".handoff/dev.env")
