"""A worker process for the crash test: `python -m tests.crash_worker ADDRESS TASK_QUEUE`.

Model calls go to ANTHROPIC_BASE_URL (the test's fake server). A short sticky-queue
timeout lets another worker take over a killed worker's workflows quickly.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from temporal_handoff.workers.plugin import HandoffPlugin


async def main(address: str, task_queue: str) -> None:
    client = await Client.connect(address, plugins=[HandoffPlugin()])
    worker = Worker(
        client,
        task_queue=task_queue,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
    )
    print("ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
