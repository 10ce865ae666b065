"""The codec server resolves content-store references for the Temporal UI, and
`handoff replay` reads store-backed sessions with the same store as every command.

The references are real: written by the SDK into a real dev server's history by a
client with the content store (and, in one case, AES-GCM keys).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from pathlib import Path

import aiohttp
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from temporal_handoff.cli import app
from temporal_handoff.codec import AesGcmCodec
from temporal_handoff.codec_server import serve_codec
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import synthetic_project
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage
from tests.conftest import running_worker

UI = "http://localhost:8233"
TOKEN = "store-token-" + "y" * 20
PATH_TOKEN = "path-token-" + "z" * 20
REFERENCE = b"temporal.api.sdk.v1.ExternalStorageReference"


async def stored_start_input(
    env: WorkflowEnvironment, store: Path, codec: AesGcmCodec | None, marker: str
) -> Payload:
    """Start (and terminate) a session whose input goes to the store; its history's input."""
    # inline_max_bytes=0: this (non-conversation) input goes to the store too.
    plugin = HandoffPlugin(storage=external_storage(store, inline_max_bytes=0), codec=codec)
    client = Client(**{**env.client.config(), "plugins": [plugin]})
    project = synthetic_project(40, 3)
    first = next(iter(project.tasks))
    project.tasks[first].title = marker
    handle = await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=SessionConfig(), project=project),
        id=f"codec-store-{uuid.uuid4().hex[:8]}",
        task_queue=f"nobody-{uuid.uuid4().hex[:8]}",  # no worker: only the input matters
    )
    try:
        history = await handle.fetch_history()
    finally:
        await handle.terminate("test done")
    payload = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert payload.metadata["messageType"] == REFERENCE  # a store reference in history
    assert marker.encode() not in payload.SerializeToString()
    return payload


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes"])
async def test_codec_server_decodes_and_downloads_store_references(
    env: WorkflowEnvironment, tmp_path: Path, encrypted: bool
) -> None:
    store = tmp_path / "payloads"
    codec = AesGcmCodec({"k1": os.urandom(32)}) if encrypted else None
    marker = f"STORED-TITLE-{uuid.uuid4().hex}"
    ref = await stored_start_input(env, store, codec, marker)
    stored = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    assert (marker.encode() in stored) is (not encrypted)  # AES: ciphertext in the store

    body = json_format.MessageToDict(Payloads(payloads=[ref]))
    runner = await serve_codec(
        codec, token=TOKEN, ui_origin=UI, host="127.0.0.1", port=0,
        storage=external_storage(store), path_token=PATH_TOKEN,
    )
    empty = await serve_codec(
        codec, token=TOKEN, ui_origin=UI, host="127.0.0.1", port=0,
        storage=external_storage(tmp_path / "other-store"),
    )
    try:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}", "Origin": UI, "X-Namespace": "default"}
        async with aiohttp.ClientSession() as http:

            async def post(url: str, headers: dict[str, str]) -> tuple[int, str]:
                async with http.post(url, json=body, headers=headers) as r:
                    return r.status, await r.text()

            # Auth required: no token, a wrong token, a wrong path token, a namespace prefix.
            for url, headers in (
                (f"{base}/decode", {}),
                (f"{base}/download", {}),
                (f"{base}/decode", {"Authorization": "Bearer wrong"}),
                (f"{base}/wrong-{PATH_TOKEN}/decode", {}),
                (f"{base}/default/download", {"Origin": UI}),
            ):
                status, text = await post(url, headers)
                assert status == 401, (url, text)
                assert marker not in text

            # What the UI sends (?preserveStorageRefs=true) and the CLI's bearer token;
            # the UI without SSO uses the path-token endpoint.
            for url, headers in (
                (f"{base}/decode?preserveStorageRefs=true", auth),
                (f"{base}/default/decode", auth),
                (f"{base}/download?preserveStorageRefs=true", auth),
                (f"{base}/{PATH_TOKEN}/decode?preserveStorageRefs=true", {"Origin": UI}),
                (f"{base}/{PATH_TOKEN}/download", {"Origin": UI}),
            ):
                async with http.post(url, json=body, headers=headers) as r:
                    assert r.status == 200, (url, await r.text())
                    assert r.headers["Access-Control-Allow-Origin"] == UI
                    out = json_format.ParseDict(await r.json(), Payloads())
                (decoded,) = out.payloads
                assert decoded.metadata["encoding"] == b"json/plain", url
                assert not decoded.external_payloads
                assert marker.encode() in decoded.data, url

            # The UI's preflight for its headers.
            pre = {
                "Origin": UI, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization-extras,content-type,x-namespace",
            }
            async with http.options(f"{base}/{PATH_TOKEN}/decode", headers=pre) as r:
                allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
                assert {"authorization-extras", "content-type", "x-namespace"} <= allowed

            # A store without the blob: /decode passes the reference back (the rest of
            # the page still decodes), /download says why it cannot.
            ehost, eport = empty.addresses[0][:2]
            async with http.post(f"http://{ehost}:{eport}/decode", json=body, headers=auth) as r:
                assert r.status == 200
                (same,) = json_format.ParseDict(await r.json(), Payloads()).payloads
                assert same.metadata["messageType"] == REFERENCE
            async with http.post(f"http://{ehost}:{eport}/download", json=body, headers=auth) as r:
                assert r.status == 410
                assert "missing" in await r.text()
    finally:
        await runner.cleanup()
        await empty.cleanup()


# ---------------------------------------------------------------- replay
runner_cli = CliRunner()


async def cli(env: dict[str, str | None], *args: str) -> Result:
    return await asyncio.to_thread(runner_cli.invoke, app, list(args), env=env)


async def test_replay_store_backed_session(
    env: WorkflowEnvironment, client: Client, task_queue: str, tmp_path: Path
) -> None:
    store = tmp_path / "payloads"
    # inline_max_bytes=0: every payload from 4 KiB up is stored (inputs, results, the
    # handoff documents), so every command that reads this history needs the store.
    storage = external_storage(store, inline_max_bytes=0)
    starter = Client(**{**client.config(), "plugins": [HandoffPlugin(storage=storage)]})
    window = 3_000
    brain = ScriptedAgentBrain(tasks_per_turn=2)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": window}) as fake:
        async with running_worker(client, task_queue, fake.base_url, storage=storage):
            handle = await starter.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(config=SessionConfig(context_window=window), project=synthetic_project(24, 2)),
                id=f"replay-store-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                result_type=SessionResult,
            )
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 1  # runs and a handoff child, all store-backed
    address = env.client.service_client.config.target_host
    g = result.generation

    res = await cli({"HANDOFF_STORAGE_DIR": str(store)}, "replay", handle.id, "--address", address)
    assert res.exit_code == 0, res.output
    # Every run and every handoff child (the last run may have started one too).
    done = re.search(r"(\d+)/(\d+) histories replayed", res.stdout)
    assert done is not None and done[1] == done[2], res.stdout
    assert int(done[1]) >= 2 * g + 1, res.stdout
    assert "nondeterminism" not in res.output

    # Without the store: one line that says which variable to set, not a false alarm.
    for command in ("replay", "history"):
        res = await cli({"HANDOFF_STORAGE_DIR": None}, command, handle.id, "--address", address)
        assert res.exit_code == 2, res.output
        assert "nondeterminism" not in res.output and "Traceback" not in res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr  # no warning, no traceback: one line
        assert lines[0].startswith("error: ") and "HANDOFF_STORAGE_DIR" in lines[0], res.stderr

    # Without the server (a closed port): one line naming the address.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    for command in ("replay", "history", "export"):
        extra = ("--dir", str(tmp_path / "out")) if command == "export" else ()
        res = await cli({"HANDOFF_STORAGE_DIR": str(store)}, command, handle.id, *extra, "--address", closed)
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f"cannot reach Temporal at {closed}" in lines[0], res.stderr
