"""Sessions from visibility and live: `handoff list`, `handoff stats`, `handoff watch`.

Same conventions as every command: one-line errors, exit code 2 for usage/connection
errors and unknown workflows.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError

from temporal_handoff.cli.common import (
    ADDRESS,
    NAMESPACE,
    CliError,
    app,
    connect,
    console,
    describe,
    out_console,
    run,
)
from temporal_handoff.schemas import visibility as sa
from temporal_handoff.schemas.lifecycle import LifecycleState
from temporal_handoff.schemas.session import SessionResult, SessionStatus

SESSION_TYPE = "AgentSessionWorkflow"


def _quote(flag: str, value: str) -> str:
    """A visibility-query string literal (values are never interpolated unquoted)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise CliError(f"invalid {flag}: it cannot contain both ' and \"")


def session_query(
    project: str | None = None,
    user: str | None = None,
    state: str | None = None,
    all_runs: bool = False,
    needs_human: bool = False,
) -> str:
    """The visibility query for sessions; by default only the latest run of each."""
    parts = [f"WorkflowType = '{SESSION_TYPE}'"]
    if not all_runs:
        # Each continue-as-new leaves a closed run behind: one row per session.
        parts.append("ExecutionStatus != 'ContinuedAsNew'")
    if project is not None:
        parts.append(f"{sa.PROJECT.name} = {_quote('--project', project)}")
    if user is not None:
        parts.append(f"{sa.USER.name} = {_quote('--user', user)}")
    if state is not None:
        try:
            value = LifecycleState(state.upper()).value
        except ValueError:
            allowed = ", ".join(s.value for s in LifecycleState)
            raise CliError(f"invalid --state {state!r}; one of {allowed}") from None
        parts.append(f"{sa.LIFECYCLE.name} = '{value}'")
    if needs_human:
        parts.append(f"{sa.NEEDS_HUMAN.name} = true")
    return " AND ".join(parts)


async def _rows(client: Client, query: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async for wf in client.list_workflows(query, limit=limit):
        attrs = wf.typed_search_attributes
        rows.append(
            {
                "workflow_id": wf.id,
                "run_id": wf.run_id,
                "status": wf.status.name if wf.status else "",
                "start_time": wf.start_time.isoformat() if wf.start_time else None,
                "close_time": wf.close_time.isoformat() if wf.close_time else None,
                "generation": attrs.get(sa.GENERATION),
                "lifecycle": attrs.get(sa.LIFECYCLE),
                "context_pct": attrs.get(sa.CONTEXT_PCT),
                "project": attrs.get(sa.PROJECT),
                "user": attrs.get(sa.USER),
                "agent_type": attrs.get(sa.AGENT_TYPE),
                "total_tokens": attrs.get(sa.TOTAL_TOKENS),
                "cost_usd": attrs.get(sa.COST_USD),
                "handoff_summary": await _memo_text(wf, "handoff_summary"),
                "needs_human": attrs.get(sa.NEEDS_HUMAN),
                "end_reason": await _memo_text(wf, "end_reason"),
            }
        )
    return rows


async def _memo_text(wf: Any, key: str) -> str:
    """A memo field, or "(unreadable)" when this client cannot decode it (another
    deployment's codec key): one such row must not fail the whole listing."""
    try:
        return str(await wf.memo_value(key, ""))
    except Exception:  # any decode failure is the same to a listing
        return "(unreadable)"


def _fmt(value: Any, spec: str = "") -> str:
    return "" if value is None else format(value, spec)


# ---------------------------------------------------------------- list
@app.command("list")
def list_sessions(
    project: str | None = typer.Option(None, "--project", help="AgentProject"),
    user: str | None = typer.Option(None, "--user", help="AgentUser"),
    state: str | None = typer.Option(None, "--state", help="AgentLifecycle, e.g. ACTIVE"),
    all_runs: bool = typer.Option(False, "--all-runs", help="include continued-as-new runs"),
    needs_human: bool = typer.Option(
        False, "--needs-human", help="only sessions waiting for a human decision"
    ),
    limit: int = typer.Option(100, min=1, max=10_000),
    json_out: bool = typer.Option(False, "--json", help="one JSON array"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Sessions from a visibility query (search attributes), newest first."""

    async def go() -> None:
        query = session_query(project, user, state, all_runs, needs_human)
        client = await connect(address, namespace)
        rows = await _rows(client, query, limit)
        if json_out:
            print(json.dumps(rows, sort_keys=True))
            return
        if not rows:
            console.print("no sessions match")
            return
        table = Table(title=f"Sessions ({len(rows)})")
        for col in ("workflow id", "status", "gen", "lifecycle", "context", "tokens", "cost",
                    "project", "user"):
            table.add_column(col, no_wrap=col == "workflow id")
        for r in rows:
            status = r["status"].lower()
            if r["end_reason"]:
                status += f" ({r['end_reason']})"
            elif r["needs_human"]:
                status += " (needs human)"
            table.add_row(
                r["workflow_id"], status, _fmt(r["generation"]),
                r["lifecycle"] or "", _fmt(r["context_pct"], ".1f") + ("%" if r["context_pct"] is not None else ""),
                _fmt(r["total_tokens"], ","), "$" + _fmt(r["cost_usd"], ".4f") if r["cost_usd"] is not None else "",
                r["project"] or "", r["user"] or "",
            )
        out_console().print(table)

    run(go)


# ---------------------------------------------------------------- stats
def compute_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate session rows (latest run of each) from `list`."""
    by_state: dict[str, int] = {}
    by_status: dict[str, int] = {}
    handoffs = [int(r["generation"] or 0) for r in rows]
    for r in rows:
        key = r["lifecycle"] or "UNKNOWN"
        by_state[key] = by_state.get(key, 0) + 1
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    n = len(rows)
    return {
        "sessions": n,
        "by_lifecycle": dict(sorted(by_state.items())),
        "by_status": dict(sorted(by_status.items())),
        "handoffs_total": sum(handoffs),
        "handoffs_per_session": round(sum(handoffs) / n, 2) if n else 0.0,
        "handoffs_max": max(handoffs, default=0),
        "total_tokens": sum(int(r["total_tokens"] or 0) for r in rows),
        "cost_usd": round(sum(float(r["cost_usd"] or 0.0) for r in rows), 6),
    }


@app.command()
def stats(
    project: str | None = typer.Option(None, "--project", help="AgentProject"),
    user: str | None = typer.Option(None, "--user", help="AgentUser"),
    json_out: bool = typer.Option(False, "--json"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Counts by lifecycle state, handoffs per session, tokens and cost (visibility)."""

    async def go() -> None:
        query = session_query(project, user)
        client = await connect(address, namespace)
        out = compute_stats(await _rows(client, query, limit=100_000))
        if json_out:
            print(json.dumps(out, sort_keys=True))
            return
        scope = f" of project {project}" if project else ""
        console.print(f"[bold]{out['sessions']}[/] session(s){scope}")
        states = ", ".join(f"{k} {v}" for k, v in out["by_lifecycle"].items()) or "-"
        statuses = ", ".join(f"{k.lower()} {v}" for k, v in out["by_status"].items()) or "-"
        console.print(f"lifecycle: {states}")
        console.print(f"status:    {statuses}")
        console.print(
            f"handoffs:  {out['handoffs_total']} total, {out['handoffs_per_session']:.2f} "
            f"per session (max {out['handoffs_max']})"
        )
        console.print(f"tokens:    {out['total_tokens']:,} (${out['cost_usd']:.4f})")

    run(go)


# ---------------------------------------------------------------- watch
def _snapshot_from_status(st: SessionStatus) -> dict[str, Any]:
    return {
        "session_id": st.session_id,
        "closed": False,
        "source": "query",
        "generation": st.generation,
        "lifecycle": st.lifecycle.value,
        "turn": st.turn,
        "context_pct": st.context_pct,
        "context_tokens": st.context_tokens,
        "context_window": st.context_window,
        "tasks_done": st.tasks_done,
        "tasks_total": st.tasks_total,
        "total_tokens": st.total_tokens,
        "cost_usd": st.cost_usd,
        "open_blockers": st.open_blockers,
        "paused": st.paused,
    }


def _snapshot_from_visibility(desc: WorkflowExecutionDescription) -> dict[str, Any]:
    """When the status query cannot be answered (no worker): the search attributes."""
    attrs = desc.typed_search_attributes
    return {
        "session_id": desc.id,
        "closed": False,
        "source": "visibility",
        "generation": attrs.get(sa.GENERATION),
        "lifecycle": attrs.get(sa.LIFECYCLE),
        "context_pct": attrs.get(sa.CONTEXT_PCT),
        "total_tokens": attrs.get(sa.TOTAL_TOKENS),
        "cost_usd": attrs.get(sa.COST_USD),
        "open_blockers": [],
    }


async def _final_snapshot(client: Client, desc: WorkflowExecutionDescription) -> dict[str, Any]:
    status = desc.status.name if desc.status else "UNKNOWN"
    snap: dict[str, Any] = {"session_id": desc.id, "closed": True, "status": status}
    attrs = desc.typed_search_attributes
    snap["generation"] = attrs.get(sa.GENERATION)
    snap["lifecycle"] = attrs.get(sa.LIFECYCLE)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        res = await client.get_workflow_handle(
            desc.id, run_id=desc.run_id, result_type=SessionResult
        ).result()
        snap.update(
            reason=res.reason.value,
            generation=res.generation,
            tasks_done=res.project.completed_count,
            tasks_total=len(res.project.tasks),
            total_tokens=res.ledger.total_tokens,
            cost_usd=round(res.ledger.cost_usd, 6),
            open_blockers=[
                {"id": b.id, "type": b.type.value, "description": b.description[:200]}
                for b in res.project.open_blockers()
            ],
        )
    return snap


def _line(s: dict[str, Any]) -> str:
    if s.get("closed"):
        reason = f" ({s['reason']})" if s.get("reason") else ""
        tail = ""
        if s.get("tasks_total") is not None:
            tail = (
                f" · tasks {s['tasks_done']}/{s['tasks_total']} · tokens "
                f"{s['total_tokens']:,} (${s['cost_usd']:.4f})"
            )
        return f"{s['session_id']} closed: {s['status']}{reason} · gen {s['generation']}{tail}"
    ctx = _fmt(s.get("context_pct"), ".1f")
    parts = [f"{s['session_id']} · gen {s.get('generation')} · {s.get('lifecycle')}",
             f"context {ctx}%"]
    if s.get("context_window"):
        parts[-1] += f" of {s['context_window']:,}"
    if s.get("tasks_total") is not None:
        parts.append(f"tasks {s['tasks_done']}/{s['tasks_total']}")
    if s.get("total_tokens") is not None:
        parts.append(f"tokens {s['total_tokens']:,}")
    parts.append(f"blockers {len(s.get('open_blockers') or [])}")
    return " · ".join(parts)


def _panel(s: dict[str, Any]) -> Panel:
    pct = float(s.get("context_pct") or 0.0)
    color = "green" if pct < 75 else "yellow" if pct < 90 else "red"
    gauge = Table.grid(padding=(0, 1))
    gauge.add_row(
        Text("context", style="bold"),
        ProgressBar(total=100, completed=min(pct, 100), width=40, complete_style=color),
        Text(f"{pct:5.1f}%" + (f" of {s['context_window']:,}" if s.get("context_window") else "")),
    )
    if s.get("tasks_total"):
        gauge.add_row(
            Text("tasks", style="bold"),
            ProgressBar(total=s["tasks_total"], completed=s["tasks_done"], width=40),
            Text(f"{s['tasks_done']}/{s['tasks_total']}"),
        )
    lines: list[Any] = [
        Text(f"generation {s.get('generation')} · {s.get('lifecycle')} · turn {s.get('turn', '-')}"
             + (" · paused" if s.get("paused") else "")),
        gauge,
    ]
    if s.get("total_tokens") is not None:
        lines.append(Text(f"tokens {s['total_tokens']:,} (${float(s.get('cost_usd') or 0):.4f})"))
    blockers = s.get("open_blockers") or []
    lines.append(Text(f"open blockers: {len(blockers)}", style="bold" if blockers else ""))
    for b in blockers:
        lines.append(Text(f"  {b['id']} ({b['type']}): {b['description']}"))
    return Panel(Group(*lines), title=s["session_id"], subtitle=f"via {s.get('source', '')}")


async def watch_snapshots(
    client: Client, workflow_id: str, interval: float, once: bool
) -> Any:
    """Yield snapshots of a session, following it across continue-as-new, until it closes."""
    handle = client.get_workflow_handle(workflow_id)  # no run id: always the latest run
    while True:
        desc = await describe(client, workflow_id)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            yield await _final_snapshot(client, desc)
            return
        try:
            st = await asyncio.wait_for(
                handle.query("status", result_type=SessionStatus), timeout=max(5.0, interval)
            )
            yield _snapshot_from_status(st)
        except (RPCError, WorkflowQueryFailedError, TimeoutError):
            # A query can race a continue-as-new, or no worker is polling: show what
            # visibility knows and try again at the next tick.
            yield _snapshot_from_visibility(desc)
        if once:
            return
        await asyncio.sleep(interval)


@app.command()
def watch(
    workflow_id: str,
    interval: float = typer.Option(1.0, min=0.05, help="seconds between polls"),
    once: bool = typer.Option(False, "--once", help="print one snapshot and exit"),
    json_out: bool = typer.Option(False, "--json", help="one JSON line per change"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Live view of a session (context gauge, tasks, generation, open blockers).

    Follows the session across continue-as-new and stops when it closes.
    """

    async def go() -> None:
        client = await connect(address, namespace)
        live = console.is_terminal and not json_out and not once
        last: str | None = None
        if live:
            with Live(console=console, refresh_per_second=4, transient=False) as view:
                async for snap in watch_snapshots(client, workflow_id, interval, once):
                    view.update(_panel(snap) if not snap["closed"] else Text(_line(snap)))
            return
        async for snap in watch_snapshots(client, workflow_id, interval, once):
            text = json.dumps(snap, sort_keys=True) if json_out else _line(snap)
            if text != last:
                print(text, flush=True)
                last = text

    run(go)
