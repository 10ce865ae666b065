"""Worker entry point: `handoff worker`.

SIGTERM/SIGINT start a graceful shutdown: the worker stops polling, lets in-flight
activities finish within `graceful_shutdown_timeout`, then exits; anything not done
by then is cancelled and retried by Temporal on another worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from temporal_handoff.workers.plugin import HandoffPlugin

log = logging.getLogger("temporal_handoff.worker")


async def run_worker(
    client: Client,
    *,
    task_queue: str = "agent-sessions",
    max_concurrent_activities: int = 100,
    max_concurrent_workflow_tasks: int = 100,
    graceful_shutdown_s: float = 30.0,
    plugin: HandoffPlugin | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    has_plugin = any(isinstance(p, HandoffPlugin) for p in client.config().get("plugins", []))
    worker = Worker(
        client,
        task_queue=task_queue,
        plugins=[] if has_plugin and plugin is None else [plugin or HandoffPlugin()],
        max_concurrent_activities=max_concurrent_activities,
        max_concurrent_workflow_tasks=max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=graceful_shutdown_s),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("worker on task queue %s", task_queue)
    async with worker:
        await stop.wait()
        log.info("shutting down: draining in-flight activities")
    log.info("worker stopped")
