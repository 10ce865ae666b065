"""`handoff dev`: a real process that starts the dev server, UI, codec server and
worker, survives a demo-sized session driven by the other `handoff` commands (found
through the `export` lines it writes), serves the UI wired to its codec server, and
stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import aiohttp
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client

from tests.helpers import call_model_inputs, is_store_reference

HANDOFF = str(Path(sys.executable).parent / "handoff")
READY_S = 180.0
"""Upper bound for the loop to come up (normally ~3 s; the machine may be loaded)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _exports(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


async def _handoff(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [HANDOFF, *args], env=env, capture_output=True, text=True, timeout=600
    )


async def test_handoff_dev_serves_ui_codec_and_commands_then_stops_on_sigterm(tmp_path: Path) -> None:
    port, ui_port = _free_port(), _free_port()
    state = tmp_path / ".handoff"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "HANDOFF_"))}
    proc = subprocess.Popen(
        [HANDOFF, "dev", "--dir", str(state), "--port", str(port), "--ui-port", str(ui_port)],
        env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ready."):
                ready.set()
        ready.set()  # EOF: the process ended (the assertion below says how)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert await asyncio.to_thread(ready.wait, READY_S), "\n".join(lines)
        assert any(line.startswith("Ready.") for line in lines), "\n".join(lines)
        out = "\n".join(lines)
        assert f"http://localhost:{ui_port}/namespaces/default/workflows" in out
        assert f"export TEMPORAL_ADDRESS=127.0.0.1:{port}" in out
        assert f"export HANDOFF_STORAGE_DIR={state.resolve() / 'payloads'}" in out
        exports = _exports(state / "dev.env")
        assert oct((state / "dev.env").stat().st_mode & 0o777) == "0o600"  # holds the codec token
        assert exports["HANDOFF_CODEC_TOKEN"] not in out  # never printed
        env = {**clean, **exports}

        # A session through the ordinary commands, on the loop's worker and store.
        wid = f"dev-{uuid.uuid4().hex[:8]}"
        started = await _handoff(
            env, "start", "--tasks", "24", "--config", '{"context_window": 3000}', "--id", wid
        )
        assert started.returncode == 0, started.stderr
        done = await _handoff(env, "result", wid)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["reason"] == "TASK_COMPLETED"
        assert json.loads(done.stdout)["generation"] >= 1
        for args in (("history", wid), ("replay", wid), ("status", wid)):
            res = await _handoff(env, *args)
            assert res.returncode == 0, (args, res.stdout, res.stderr)
        assert proc.poll() is None  # still up

        # The UI is served and its settings point at the loop's codec server, which
        # turns a stored conversation (a model call's input) into JSON for it.
        client = await Client.connect(f"127.0.0.1:{port}")
        history = await client.get_workflow_handle(wid).fetch_history()
        ref = next(filter(is_store_reference, call_model_inputs(history)))  # a conversation
        ui = f"http://localhost:{ui_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ui}/namespaces/default/workflows") as r:
                assert r.status == 200
            async with http.get(f"{ui}/api/v1/settings") as r:
                endpoint = (await r.json())["Codec"]["Endpoint"]
            assert endpoint.startswith(exports["HANDOFF_CODEC_ENDPOINT"] + "/")
            body = json_format.MessageToDict(Payloads(payloads=[ref]))
            async with http.post(
                f"{endpoint}/decode?preserveStorageRefs=true", json=body,
                headers={"Origin": ui, "X-Namespace": "default"},
            ) as r:
                assert r.status == 200
                assert r.headers["Access-Control-Allow-Origin"] == ui
                (decoded,) = json_format.ParseDict(await r.json(), Payloads()).payloads
            assert decoded.metadata["encoding"] == b"json/plain"
            assert b'"messages"' in decoded.data
            async with http.post(exports["HANDOFF_CODEC_ENDPOINT"] + "/decode", json=body) as r:
                assert r.status == 401  # the bare endpoint needs the token

        # SIGTERM: everything stops, exit 0, ports released.
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, READY_S)
        reader.join(READY_S)
        assert code == 0, "\n".join(lines)
        assert "stopped" in lines, lines[-5:]
        assert not _listening(port) and not _listening(ui_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
