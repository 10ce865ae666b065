"""A short soak (`bench/soak.py --sessions 4`): no session stuck, no command lost or
doubled, every session handed off ≥ 3 times, continue-as-new inputs far below 2 MiB.

The full soak (200 sessions) is a benchmark: `make bench` or
`.venv/bin/python bench/soak.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_soak_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--sessions", "4", "--concurrency", "4",
         "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=290, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("{"), (proc.stdout[-2000:], proc.stderr[-3000:])
    r = json.loads(lines[-1])
    summary = {k: v for k, v in r.items() if k != "ledger_problems"}
    assert r["sessions"] == 4, summary
    assert r["stuck"] == 0, r["stuck_reasons"]
    assert r["lost"] == 0 and r["doubled"] == 0 and r["wrongly_applied"] == 0, r["ledger_problems"]
    assert r["commands_accepted"] > 0 and r["tool_calls"] > 0, summary
    assert r["min_handoffs"] >= 3, summary
    assert r["max_can_input_pct_of_2mib"] < 25, summary
    assert proc.returncode == 0, proc.stderr[-2000:]
