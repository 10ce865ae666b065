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
from temporal_handoff.cli.dev_env import KEYS
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
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
