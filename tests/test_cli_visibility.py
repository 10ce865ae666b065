"""`handoff list/history/watch/stats/export/replay/plot/setup` against a real session on
the dev server (real worker, real anthropic client, fake Messages API).

One session (30 tasks, a 3,000-token window: several handoffs) runs once for the
module while `handoff watch --json` follows it; every test reads it back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from rich.console import Console
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from temporal_handoff.cli import app
from temporal_handoff.cli.visibility import _panel
from temporal_handoff.plotting import usage_series
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import synthetic_project
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.schemas.visibility import ALL_KEYS
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.workers.devserver import temporal_binary
from tests.conftest import running_worker

WINDOW = 3_000
runner = CliRunner()


async def cli(*args: str) -> Result:
    """Invoke the CLI in a thread: its commands call asyncio.run themselves."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


@dataclass
class Session:
    wid: str
    address: str
    project: str
    user: str
    result: SessionResult
    watch: Result


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def session(env: WorkflowEnvironment, client: Client) -> Session:
    address = env.client.service_client.config.target_host
    tag = uuid.uuid4().hex[:8]
    project = synthetic_project(30, 3).model_copy(update={"name": f"vis-{tag}"})
    user = f"vis-user-{tag}"
    task_queue = f"tq-vis-{tag}"
    wid = f"vis-session-{tag}"
    brain = ScriptedAgentBrain(tasks_per_turn=2)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": WINDOW}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(config=SessionConfig(context_window=WINDOW, max_tokens=300, user=user), project=project),
                id=wid, task_queue=task_queue, result_type=SessionResult,
            )
            # `watch` follows the session from its start, across continue-as-new,
            # and returns by itself when it closes.
            watch = await cli("watch", wid, "--json", "--interval", "0.1", "--address", address)
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 2
    return Session(wid, address, project.name, user, result, watch)


async def poll(args: list[str], ok: Callable[[Result], bool], timeout: float = 15) -> Result:
    """Visibility is eventually consistent: retry a command until `ok` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        res = await cli(*args)
        if ok(res) or asyncio.get_running_loop().time() > deadline:
            return res
        await asyncio.sleep(0.3)


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def assert_one_error(res: Result, text: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    # One message (rich may soft-wrap it at the terminal width), nothing else.
    lines = res.stderr.splitlines()
    assert lines[0].startswith("error: "), res.stderr
    assert not any(line.startswith("error:") for line in lines[1:]), res.stderr
    assert text in " ".join(res.stderr.split()), res.stderr


# ---------------------------------------------------------------- history
async def test_history_text_json_markdown(session: Session) -> None:
    g = session.result.generation
    res = await cli("history", session.wid, "--json", "--address", session.address)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["generation"] for r in rows] == list(range(g + 1))
    assert [r["termination"] for r in rows] == ["CONTEXT_HANDOFF"] * g + ["TASK_COMPLETED"]
    assert all(r["payload_tokens"] and r["payload_tokens"] <= 1200 for r in rows[:-1])
    assert all(r["handoff_child"] == f"{session.wid}-handoff-{r['generation']}" for r in rows[:-1])

    res = await cli("history", session.wid, "--markdown", "--address", session.address)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| gen | run id |")
    assert len(lines) == 2 + g + 1
    assert lines[-1].endswith("| TASK_COMPLETED |")

    res = await cli("history", session.wid, "--address", session.address)
    assert res.exit_code == 0 and f"Handoff chain of {session.wid}" in res.stdout

    assert_one_error(
        await cli("history", "no-such-session", "--address", session.address),
        "unknown workflow 'no-such-session'",
    )


# ---------------------------------------------------------------- list / stats
async def test_list_filters_by_search_attributes(session: Session) -> None:
    addr = ["--address", session.address]

    def settled(res: Result) -> bool:
        if res.exit_code != 0:
            return False
        rows = json.loads(res.stdout)
        return len(rows) == 1 and rows[0]["lifecycle"] == "TERMINATED"

    res = await poll(["list", "--project", session.project, "--json", *addr], settled)
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["workflow_id"] == session.wid
    assert row["status"] == "COMPLETED"
    assert row["generation"] == session.result.generation
    assert row["user"] == session.user
    assert row["project"] == session.project
    assert row["total_tokens"] == session.result.ledger.total_tokens
    assert row["cost_usd"] == pytest.approx(session.result.ledger.cost_usd, abs=1e-5)
    assert row["handoff_summary"].startswith(f"gen {session.result.generation - 1}→")

    res = await cli("list", "--user", session.user, "--state", "terminated", *addr)
    assert res.exit_code == 0 and session.wid in res.stdout and "TERMINATED" in res.stdout
    res = await cli("list", "--project", session.project, "--state", "ACTIVE", *addr)
    assert res.exit_code == 0 and res.stdout.strip() == "no sessions match"
    # Every generation is a run of its own in visibility.
    res = await cli("list", "--project", session.project, "--all-runs", "--json", *addr)
    runs = json.loads(res.stdout)
    assert len(runs) == session.result.generation + 1
    assert sorted(r["status"] for r in runs).count("CONTINUED_AS_NEW") == session.result.generation

    res = await cli("list", "--state", "SLEEPING", *addr)
    assert_one_error(res, "invalid --state 'SLEEPING'")
    assert_one_error(await cli("list", "--project", "a'b\"c", *addr), "invalid --project")


async def test_stats_counts_handoffs_tokens_cost(session: Session) -> None:
    addr = ["--address", session.address]

    def settled(res: Result) -> bool:
        return res.exit_code == 0 and json.loads(res.stdout)["by_lifecycle"] == {"TERMINATED": 1}

    res = await poll(["stats", "--project", session.project, "--json", *addr], settled)
    out = json.loads(res.stdout)
    g = session.result.generation
    assert out["sessions"] == 1
    assert out["by_status"] == {"COMPLETED": 1}
    assert out["handoffs_total"] == out["handoffs_max"] == g
    assert out["handoffs_per_session"] == pytest.approx(g)
    assert out["total_tokens"] == session.result.ledger.total_tokens
    assert out["cost_usd"] == pytest.approx(session.result.ledger.cost_usd, abs=1e-5)

    res = await cli("stats", "--project", session.project, *addr)
    assert res.exit_code == 0
    assert f"handoffs:  {g} total" in res.stdout and "TERMINATED 1" in res.stdout

    res = await cli("stats", "--project", f"nothing-{uuid.uuid4().hex}", "--json", *addr)
    assert json.loads(res.stdout)["sessions"] == 0


# ---------------------------------------------------------------- watch
async def test_watch_follows_across_continue_as_new(session: Session) -> None:
    res = session.watch
    assert res.exit_code == 0, res.output
    snaps = [json.loads(line) for line in res.stdout.splitlines()]
    live = [s for s in snaps if not s["closed"]]
    assert live and all(s["session_id"] == session.wid for s in snaps)
    # It kept following the same workflow id through the handoffs.
    gens = [s["generation"] for s in live if s["generation"] is not None]
    assert len(set(gens)) >= 2 and gens == sorted(gens)
    assert any(s["lifecycle"] in ("WARNING", "CRITICAL", "HANDOFF_PENDING") for s in live)
    assert all(0 <= s["context_pct"] <= 100 for s in live if s["source"] == "query")
    final = snaps[-1]
    assert final["closed"] and final["status"] == "COMPLETED"
    assert final["reason"] == "TASK_COMPLETED"
    assert final["tasks_done"] == final["tasks_total"] == 30

    res = await cli("watch", session.wid, "--once", "--address", session.address)
    assert res.exit_code == 0
    assert res.stdout.startswith(f"{session.wid} closed: COMPLETED (TASK_COMPLETED)")

    assert_one_error(
        await cli("watch", "no-such-session", "--once", "--address", session.address),
        "unknown workflow",
    )


def test_watch_panel_renders_gauge_tasks_and_blockers() -> None:
    """On a terminal `watch` redraws a panel; render one from a live snapshot."""
    snap = {
        "session_id": "s-1", "closed": False, "source": "query", "generation": 2,
        "lifecycle": "WARNING", "turn": 7, "context_pct": 81.5, "context_window": 3000,
        "tasks_done": 12, "tasks_total": 30, "total_tokens": 45_000, "cost_usd": 0.1234,
        "open_blockers": [{"id": "B-1", "type": "human_decision", "description": "pick a db"}],
    }
    out = Console(record=True, width=100, color_system=None)
    out.print(_panel(snap))
    text = out.export_text()
    assert "s-1" in text and "generation 2 · WARNING · turn 7" in text
    assert "81.5% of 3,000" in text and "12/30" in text and "tokens 45,000 ($0.1234)" in text
    assert "open blockers: 1" in text and "B-1 (human_decision): pick a db" in text


# ---------------------------------------------------------------- export
async def test_export_state_and_summaries(session: Session, tmp_path: Path) -> None:
    out = tmp_path / "export"
    res = await cli("export", session.wid, "--dir", str(out), "--address", session.address)
    assert res.exit_code == 0, res.output
    g = session.result.generation
    names = sorted(p.name for p in (out / "session-summaries").iterdir())
    assert names == [f"{i:03d}.md" for i in range(g)]
    state = json.loads((out / "state.json").read_text())
    assert state == session.result.project.model_dump(mode="json")
    text = (out / "state.json").read_text()
    assert text == json.dumps(state, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    first = (out / "session-summaries" / "000.md").read_text()
    assert first.startswith(f"# Handoff `{session.wid}` generation 0 → 1")
    assert "## Next eligible tasks" in first
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # Exporting again gives the same bytes: clean git diffs.
    res = await cli("export", session.wid, "--dir", str(out), "--address", session.address)
    assert res.exit_code == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    assert_one_error(
        await cli("export", "no-such-session", "--dir", str(out), "--address", session.address),
        "unknown workflow",
    )


# ---------------------------------------------------------------- replay
async def test_replay_runs_and_children_and_detects_nondeterminism(
    session: Session, client: Client, tmp_path: Path
) -> None:
    g = session.result.generation
    res = await cli("replay", session.wid, "--address", session.address)
    assert res.exit_code == 0, res.output
    assert f"{2 * g + 1}/{2 * g + 1} histories replayed" in res.stdout
    assert f"{session.wid}-handoff-0 (handoff child)" in res.stdout

    # A history whose recorded commands differ from what the code does now.
    history = await client.get_workflow_handle(session.wid).fetch_history()
    good = tmp_path / "good.json"
    good.write_text(history.to_json())
    data = history.to_json_dict()
    # (the last run may do no model call at all, but it always notifies TERMINATED)
    scheduled = [e for e in data["events"] if "activityTaskScheduledEventAttributes" in e]
    activity_type = scheduled[0]["activityTaskScheduledEventAttributes"]["activityType"]
    activity_type["name"] += "_v0"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    WorkflowHistory.from_json("check", bad.read_text())  # still a valid history file

    res = await cli("replay", "--history-file", str(good), "--history-file", str(bad))
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"ok   {good}")
    assert lines[1].startswith(f"FAIL {bad}")
    assert "1/2 histories replayed — nondeterminism detected" in res.stdout

    assert_one_error(await cli("replay"), "give a WORKFLOW_ID or --history-file")
    assert_one_error(
        await cli("replay", "no-such-session", "--address", session.address), "unknown workflow"
    )


# ---------------------------------------------------------------- plot
async def test_plot_usage_png(session: Session, client: Client, tmp_path: Path) -> None:
    png = tmp_path / "usage.png"
    res = await cli("plot", session.wid, "-o", str(png), "--address", session.address)
    assert res.exit_code == 0, res.output
    g = session.result.generation
    assert f"{g + 1} generation(s)" in res.stdout and f"{g} handoff(s)" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    runs = await usage_series(client, session.wid)
    assert [r.generation for r in runs] == list(range(g + 1))
    assert all(r.context_window == WINDOW for r in runs)
    for r in runs[:-1]:
        assert r.ended_by == "CONTEXT_HANDOFF" and r.turns
        fr = r.fractions()
        # Usage grows within a generation, past the warn threshold before the handoff,
        # and no call ever overflowed the window.
        assert fr == sorted(fr) and fr[-1] >= r.warn_threshold and max(fr) <= 1.0
    assert runs[-1].ended_by == "TASK_COMPLETED"

    assert_one_error(
        await cli("plot", "no-such-session", "-o", str(png), "--address", session.address),
        "unknown workflow",
    )


# ---------------------------------------------------------------- setup
async def test_setup_registers_search_attributes(env: WorkflowEnvironment) -> None:
    # The shared server has them already: nothing to do, exit 0.
    address = env.client.service_client.config.target_host
    res = await cli("setup", "--address", address)
    assert res.exit_code == 0, res.output
    assert res.stdout.count("already registered") == len(ALL_KEYS)

    # A bare dev server without them: registered, then idempotent.
    bare = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), dev_server_log_level="error"
    )
    try:
        bare_address = bare.client.service_client.config.target_host
        res = await cli("setup", "--address", bare_address)
        assert res.exit_code == 0, res.output
        assert res.stdout.count(": registered") == len(ALL_KEYS)
        listed = await bare.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert {k.name for k in ALL_KEYS} <= set(listed.custom_attributes)
        res = await cli("setup", "--address", bare_address)
        assert res.exit_code == 0 and res.stdout.count("already registered") == len(ALL_KEYS)
    finally:
        await bare.shutdown()


# ---------------------------------------------------------------- unreachable
@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["stats"],
        ["history", "x"],
        ["watch", "x", "--once"],
        ["export", "x", "--dir", "unused-dir"],
        ["replay", "x"],
        ["plot", "x", "-o", "unused.png"],
        ["setup"],
    ],
    ids=lambda a: a[0],
)
async def test_unreachable_server_is_one_error_line(args: list[str], tmp_path: Path) -> None:
    args = [str(tmp_path / a) if a.startswith("unused") else a for a in args]
    res = await cli(*args, "--address", closed_port())
    assert_one_error(res, "cannot reach Temporal at 127.0.0.1:")
    assert not any(tmp_path.iterdir())
