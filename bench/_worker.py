"""A benchmark worker in its own process (so its CPU and RSS are its own).

    python bench/_worker.py --address HOST:PORT --task-queue TQ --base-url URL \
        [--storage-dir DIR] [--bare] [--max-concurrent N]

Prints ``READY`` once polling; on SIGTERM/SIGINT drains, prints one JSON line
``{"rss_peak_mb", "rss_mb", "storage": {...}}`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

import anthropic
from temporalio.client import Client
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from temporal_handoff.workers.plugin import HandoffOptions, HandoffPlugin
from temporal_handoff.workers.storage import external_storage


def rss_mb() -> tuple[float, float]:
    """(peak, current) resident set size of this process in MB, from /proc."""
    peak = cur = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak, cur


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--namespace", default="default")
    p.add_argument("--task-queue", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--storage-dir", default=None)
    p.add_argument("--threshold", type=int, default=None)
    p.add_argument("--bare", action="store_true", help="also register BareModelLoop")
    p.add_argument("--max-concurrent", type=int, default=200)
    p.add_argument("--read-file-tool", action="store_true",
                   help="register the `read_file` user tool (testing.reading)")
    p.add_argument("--no-conversation-cache", action="store_true",
                   help="HandoffOptions(conversation_cache=False): cache only tools + system")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    storage = None
    if args.storage_dir:
        kw = {"threshold_bytes": args.threshold} if args.threshold is not None else {}
        storage = external_storage(args.storage_dir, **kw)  # type: ignore[arg-type]
    model = anthropic.AsyncAnthropic(base_url=args.base_url, api_key="bench", max_retries=0)
    options = HandoffOptions(conversation_cache=not args.no_conversation_cache)
    tools = []
    if args.read_file_tool:
        from temporal_handoff.testing.reading import READ_FILE, read_file
        from temporal_handoff.workers.plugin import UserTool

        tools.append(UserTool(spec=READ_FILE, fn=read_file))
    plugin = HandoffPlugin(options, anthropic_client=model, storage=storage, tools=tools)
    client = await Client.connect(args.address, namespace=args.namespace, plugins=[plugin])
    workflows: list[type] = []
    if args.bare:
        from bare_workflow import BareModelLoop

        workflows.append(BareModelLoop)
    n = args.max_concurrent
    worker = Worker(
        client,
        task_queue=args.task_queue,
        workflows=workflows,
        max_concurrent_activities=n,
        # Workflow activations are CPU-bound under the GIL: a few at a time finish fast;
        # hundreds at once all crawl past the 10 s workflow task timeout and thrash.
        max_concurrent_workflow_tasks=min(n, 50),
        max_cached_workflows=max(1000, 2 * n),
        # Enough pollers for a burst of new sessions on every task queue partition.
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(maximum=max(5, n // 50)),
        nonsticky_to_sticky_poll_ratio=0.5,
        activity_task_poller_behavior=PollerBehaviorSimpleMaximum(maximum=max(5, n // 100)),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("READY", flush=True)
        await stop.wait()
    peak, cur = rss_mb()
    stats = {}
    if storage is not None:
        stats = dataclasses.asdict(storage.drivers[0].stats)  # type: ignore[attr-defined]
    print(json.dumps({"rss_peak_mb": round(peak, 1), "rss_mb": round(cur, 1), "storage": stats}))


if __name__ == "__main__":
    asyncio.run(main())
