"""`handoff dev`: one local setup that stays up — Temporal + UI + codec server + worker.

`dev_loop()` starts, in order:

1. the codec server (`temporal_handoff.codec_server`) on 127.0.0.1, resolving the
   content store's references (and decrypting when `HANDOFF_CODEC_KEYS` is set);
2. `temporal server start-dev` with a file database under the state directory, the
   search attributes registered, the UI on `ui_port` and pointed at the codec server
   (`--ui-codec-endpoint`), so the UI shows handoff documents, not references;
3. a worker on `task_queue` with the content store `<state dir>/payloads`, talking to
   the real Claude API when `ANTHROPIC_API_KEY` is set, else to the loopback fake.

It writes `<state dir>/dev.env` (mode 0600): the `export` lines that make every other
`handoff` command (and `temporal --codec-endpoint`) find the same server and store.
`handoff demo` runs its session on the same loop and leaves it up afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_handoff.codec import codec_from_env
from temporal_handoff.codec_server import serve_codec
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage

__all__ = ["DevLoop", "DevLoopError", "dev_loop", "serve_dev"]

HOST = "127.0.0.1"
ENV_FILE = "dev.env"


class DevLoopError(Exception):
    """The loop cannot start (a busy port, a bad state directory): one line."""


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class DevLoop:
    """What is running, and how to reach it."""

    state_dir: Path
    port: int
    ui_port: int
    codec_url: str
    task_queue: str
    client: Client
    env: WorkflowEnvironment
    model_note: str

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def storage_dir(self) -> Path:
        return self.state_dir / "payloads"

    def ui_url(self, workflow_id: str | None = None) -> str:
        base = f"http://localhost:{self.ui_port}/namespaces/default/workflows"
        return f"{base}/{workflow_id}" if workflow_id else base

    def exports(self) -> list[str]:
        """The `export` lines for every other `handoff` command (no secrets)."""
        return [
            f"export TEMPORAL_ADDRESS={self.address}",
            "export TEMPORAL_NAMESPACE=default",
            f"export HANDOFF_STORAGE_DIR={self.storage_dir}",
            f"export HANDOFF_TASK_QUEUE={self.task_queue}",
        ]


def _write_env(path: Path, lines: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


@contextlib.asynccontextmanager
async def dev_loop(
    *,
    state_dir: str | os.PathLike[str] = ".handoff",
    port: int = 7233,
    ui_port: int = 8233,
    codec_port: int = 0,
    task_queue: str = "agent-sessions",
    model: str = "claude-sonnet-4-6",
    context_window: int = 8_000,
    tasks_per_turn: int = 2,
) -> AsyncIterator[DevLoop]:
    """Start the loop (see module doc); everything stops when the block exits."""
    root = Path(state_dir).resolve()
    try:
        (root / "payloads").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DevLoopError(f"state dir: cannot create {root}: {err.strerror or err}") from None
    for name, value in (("port", port), ("ui-port", ui_port), ("codec-port", codec_port)):
        if value and _busy(value):
            raise DevLoopError(
                f"{name}: {HOST}:{value} is busy (another `handoff dev`?); choose another "
                f"(--{name}, or PORT=/UI_PORT= for make demo)"
            )
    codec = codec_from_env()
    storage = external_storage(root / "payloads")
    token = secrets.token_urlsafe(24)
    path_token = secrets.token_urlsafe(24)
    codec_port = codec_port or _free_port()
    ui_origin = f"http://localhost:{ui_port},http://{HOST}:{ui_port}"
    async with contextlib.AsyncExitStack() as stack:
        try:
            runner = await serve_codec(
                codec, token=token, ui_origin=ui_origin, host=HOST, port=codec_port,
                storage=storage, path_token=path_token,
            )
        except OSError as err:
            raise DevLoopError(f"codec-port: cannot listen on {codec_port}: {err}") from None
        stack.push_async_callback(runner.cleanup)
        codec_base = f"http://{HOST}:{codec_port}"
        env = await start_dev_server(
            db_file=str(root / "temporal.db"), port=port, ui=True, ui_port=ui_port,
            ui_codec_endpoint=f"{codec_base}/{path_token}",
        )
        stack.push_async_callback(env.shutdown)
        if os.environ.get("ANTHROPIC_API_KEY"):
            model_client = anthropic.AsyncAnthropic(max_retries=0)
            note = f"the Claude API ({model})"
        else:
            from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain

            fake = FakeAnthropicServer(
                brain=ScriptedAgentBrain(tasks_per_turn=tasks_per_turn),
                context_windows={model: context_window},
            ).start()
            stack.callback(fake.stop)
            model_client = anthropic.AsyncAnthropic(
                base_url=fake.base_url, api_key="fake-key", max_retries=0
            )
            note = f"the fake Messages API at {fake.base_url} (no ANTHROPIC_API_KEY)"
        config = env.client.config()
        config["plugins"] = [
            HandoffPlugin(anthropic_client=model_client, storage=storage, codec=codec)
        ]
        client = Client(**config)
        await stack.enter_async_context(Worker(client, task_queue=task_queue))
        loop = DevLoop(
            state_dir=root, port=port, ui_port=ui_port, codec_url=codec_base,
            task_queue=task_queue, client=client, env=env, model_note=note,
        )
        _write_env(
            root / ENV_FILE,
            loop.exports()
            + [
                f"export HANDOFF_CODEC_ENDPOINT={codec_base}",
                f"export HANDOFF_CODEC_TOKEN={token}",
            ],
        )
        yield loop


def banner(loop: DevLoop) -> list[str]:
    """What `handoff dev` (and the demo, at its end) prints."""
    return [
        f"Temporal UI:   {loop.ui_url()}",
        f"Temporal:      {loop.address} (database {loop.state_dir / 'temporal.db'})",
        f"Codec server:  {loop.codec_url} (resolves {loop.storage_dir}; the UI is wired to it)",
        f"Worker:        task queue {loop.task_queue}, model calls to {loop.model_note}",
        "In another shell, so `handoff` and `temporal` find this server and store:",
        *(f"  {line}" for line in loop.exports()),
        f"  (or: source {loop.state_dir / ENV_FILE}, which also has the codec token for "
        "`temporal workflow show --codec-endpoint $HANDOFF_CODEC_ENDPOINT "
        '--codec-auth "Bearer $HANDOFF_CODEC_TOKEN"`)',
    ]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT (Ctrl-C) while the block runs; install it
    before saying "ready", so a signal right after that line cannot kill the process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _say(line: str) -> None:
    print(line, flush=True)


async def serve_dev(print_line: Any = _say, **options: Any) -> None:
    """`handoff dev`: start the loop, print how to use it, stay up until SIGTERM/Ctrl-C."""
    with stop_on_signals() as stop:
        async with dev_loop(**options) as loop:
            for line in banner(loop):
                print_line(line)
            print_line("Ready. Ctrl-C (or SIGTERM) stops everything; the data stays in "
                       f"{loop.state_dir}.")
            await stop.wait()
    print_line("stopped")
