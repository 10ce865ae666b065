"""What the payload store's write path costs, with blobs that already exist on disk.

`LocalStorageDriver` deduplicates: a chunk that is already in the store is not written
again. Since the store verifies such a chunk (its bytes must hash to its name, else it
is rewritten from the writer's bytes), this measures the three cases of a store call,
in one process, without Temporal:

* ``cold``: a fresh driver (a new worker process, another session sharing the same
  system prompt) stores a whole conversation whose chunks all exist already: every
  chunk is checked on disk. The worst case of the verification.
* ``warm``: the same session stores its next turn (the in-process memo skips the chunks
  it already made sure of; only the new ones touch the disk).
* ``new``: every chunk is new (written to a temporary file and renamed).

Run: ``.venv/bin/python bench/store_write.py [--json] [--turns 25 100 400] [--repeats 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import StorageDriverStoreContext, StorageDriverWorkflowInfo

from temporal_handoff.testing.brain import filler
from temporal_handoff.workers.storage import LocalStorageDriver


def ctx(workflow_id: str) -> StorageDriverStoreContext:
    return StorageDriverStoreContext(
        target=StorageDriverWorkflowInfo(namespace="default", id=workflow_id, run_id="r1")
    )


def request(turns: int, seed: str = "s") -> Payload:
    """A Messages-API-shaped request of `turns` exchanges (~1.9 KB each)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "start " + seed}]
    for t in range(turns):
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": filler(f"{seed}a{t}", 200)}]}
        )
        messages.append(
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"t{t}", "content": filler(f"{seed}u{t}", 100)}
            ]}
        )
    body = {"model": "m", "system": [{"type": "text", "text": "sys"}], "messages": messages}
    return Payload(
        metadata={"encoding": b"json/plain"}, data=json.dumps(body, separators=(",", ":")).encode()
    )


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


async def measure(turns: int, repeats: int) -> dict[str, Any]:
    payload = request(turns)
    nxt = request(turns + 1)
    cold: list[float] = []
    warm: list[float] = []
    new: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed = LocalStorageDriver(root / "s")
        await seed.store(ctx("seed"), [payload])
        for i in range(repeats):
            d = LocalStorageDriver(root / "s")  # empty memo and cache: a new process
            t0 = time.perf_counter()
            await d.store(ctx(f"cold-{i}"), [payload])
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await d.store(ctx(f"cold-{i}"), [nxt])
            warm.append(time.perf_counter() - t0)
        for i in range(repeats):
            d = LocalStorageDriver(root / f"n{i}")
            t0 = time.perf_counter()
            await d.store(ctx("new"), [payload])
            new.append(time.perf_counter() - t0)
        chunks = sum(1 for p in (root / "s" / "blobs").rglob("*") if p.is_file())
    return {
        "turns": turns,
        "payload_kb": round(len(payload.data) / 1024, 1),
        "blobs": chunks,
        "cold_ms": _ms(cold),
        "warm_ms": _ms(warm),
        "new_ms": _ms(new),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, nargs="+", default=[25, 100, 400])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    args = p.parse_args()
    repeats = 5 if args.quick else args.repeats
    rows = [asyncio.run(measure(t, repeats)) for t in args.turns]
    if args.json:
        print(json.dumps({"bench": "store_write", "rows": rows}))
        return
    print(f"{'turns':>6} {'KB':>8} {'blobs':>6} {'cold ms':>9} {'warm ms':>9} {'new ms':>9}")
    for r in rows:
        print(
            f"{r['turns']:>6} {r['payload_kb']:>8} {r['blobs']:>6} "
            f"{r['cold_ms']:>9} {r['warm_ms']:>9} {r['new_ms']:>9}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
