"""Each benchmark's --quick --json variant runs and prints the documented keys.

Timing targets are not asserted here (the machine is shared); `make bench` reports them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CASES = {
    "tokens": ["mb_per_s", "runs", "met"],
    "history_growth": [
        "bytes_per_turn_1k", "bytes_per_turn_20k", "events_per_turn_20k",
        "store_bytes_per_turn_20k", "naive_bytes_per_turn_20k",
    ],
    "handoff_latency": ["p50_ms", "p95_ms", "handoffs", "breakdown_median_ms"],
    "turn_overhead": ["ratio_1", "ratio_5", "ratio_10", "errors"],
    "concurrency": ["sessions", "efficiency", "rss_mb", "errors"],
    "cost": ["cache_read_fraction", "input_usd_ratio", "cached", "uncached"],
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", list(CASES))
def test_bench_quick_json(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=170, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object, nothing else
    result = json.loads(lines[0])
    missing = [k for k in CASES[name] if k not in result]
    assert not missing, (missing, result)
    if "errors" in result:
        assert result["errors"] == 0, result
    if name == "history_growth":
        # The store keeps the conversation out of history; the naive design does not.
        assert result["bytes_per_turn_20k"] < result["naive_bytes_per_turn_20k"] / 10
    if name == "tokens":
        # Realistic counts: no request may cross the window, on either model.
        assert [r["requests_over_window"] for r in result["runs"]] == [0, 0], result
    if name == "handoff_latency":
        assert result["handoffs"] >= 3
