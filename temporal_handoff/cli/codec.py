"""`handoff codec-server` (and `handoff codec-key`): payload encryption for the Temporal UI.

Registered on the `app` of :mod:`temporal_handoff.cli.common`. Keys come only from ``HANDOFF_CODEC_KEYS`` (never a command-line argument,
which other users could read in the process list).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from temporal_handoff.cli.common import CliError, app, console, fail, run
from temporal_handoff.codec import KEYS_ENV, CodecKeyError, codec_from_env, generate_key, parse_keys
from temporal_handoff.codec_server import TOKEN_ENV, serve_codec

MIN_TOKEN_CHARS = 16
PATH_TOKEN_ENV = "HANDOFF_CODEC_PATH_TOKEN"


@app.command("codec-server")
def codec_server(
    token: str = typer.Option(
        "", "--token", envvar=TOKEN_ENV, show_default=False,
        help=f"bearer token clients must send (prefer the {TOKEN_ENV} variable)",
    ),
    ui_origin: str = typer.Option(
        "http://localhost:8233", "--ui-origin", help="the only origin allowed by CORS"
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8081, "--port", min=0, max=65535),
    storage_dir: str | None = typer.Option(
        None, "--storage-dir", envvar="HANDOFF_STORAGE_DIR",
        help="content store whose references /decode and /download resolve",
    ),
) -> None:
    """Serve /encode, /decode, /download: resolve content-store references, decrypt (HANDOFF_CODEC_KEYS).

    The Temporal UI cannot send a static bearer token; set HANDOFF_CODEC_PATH_TOKEN
    and give the UI the endpoint http://HOST:PORT/<that token> instead.
    """
    import os

    from temporal_handoff.workers.worker import storage_from_env

    async def go() -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise CliError(
                f"a bearer token of at least {MIN_TOKEN_CHARS} characters is required "
                f"(--token or {TOKEN_ENV})"
            )
        try:
            codec = codec_from_env()
        except CodecKeyError as err:
            raise CliError(str(err)) from None
        if storage_dir and not Path(storage_dir).is_dir():
            raise CliError(f"storage-dir: {storage_dir} is not a directory")
        storage = storage_from_env(storage_dir)
        if codec is None and storage is None:
            raise CliError(
                f"nothing to decode: set {KEYS_ENV} (e.g. 'k1:<base64 32-byte key>') "
                "and/or --storage-dir (HANDOFF_STORAGE_DIR)"
            )
        path_token = os.environ.get(PATH_TOKEN_ENV, "").strip() or None
        if path_token is not None and len(path_token) < MIN_TOKEN_CHARS:
            raise CliError(f"{PATH_TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} characters")
        try:
            runner = await serve_codec(
                codec, token=token, ui_origin=ui_origin or None, host=host, port=port,
                storage=storage, path_token=path_token,
            )
        except OSError as err:
            raise CliError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        bound = runner.addresses[0] if runner.addresses else (host, port)
        keys = (
            f"keys {', '.join(codec.key_ids)} (active {codec.active_key_id})"
            if codec is not None else "no keys"
        )
        console.print(
            f"codec server on http://{bound[0]}:{bound[1]} · {keys} · "
            f"store {storage_dir or os.environ.get('HANDOFF_STORAGE_DIR') or 'none'} · "
            f"CORS origin {ui_origin or 'none'}",
            highlight=False,
            soft_wrap=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        run(go)
    except KeyboardInterrupt:  # pragma: no cover - interactive stop
        pass


@app.command("codec-key")
def codec_key(key_id: str = typer.Argument("k1")) -> None:
    """Print a new random key entry for HANDOFF_CODEC_KEYS (put the newest first)."""
    entry = f"{key_id}:{generate_key()}"
    try:
        parse_keys(entry)
    except CodecKeyError as err:
        fail(str(err), 2)
    print(entry)
