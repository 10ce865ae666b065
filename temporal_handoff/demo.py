"""`handoff demo`: one long session on the `handoff dev` loop (embedded Temporal, UI,
codec server, worker) with fake or real Claude; the loop stays up afterwards.

Without `ANTHROPIC_API_KEY` the loopback fake Messages API runs the scripted agent;
with it, the real Claude API is used (the key is read by the activity from the
environment and never enters workflow input or history).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.chain import RunSummary, session_chain
from temporal_handoff.devloop import dev_loop, stop_on_signals
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.session import SessionInput, SessionResult, SessionStatus
from temporal_handoff.testing.synthetic import synthetic_project


def chain_table(rows: list[RunSummary], title: str = "Handoff chain") -> Table:
    """One row per generation; a "session" column when the chain spans resumed sessions."""
    table = Table(title=title)
    several = len({r.workflow_id for r in rows}) > 1
    cols = ("gen", "run id", "turns", "note", "tokens at handoff", "payload tokens", "ended by")
    for col in (("session",) if several else ()) + cols:
        table.add_column(col)
    for r in rows:
        cells = [
            str(r.generation),
            r.run_id[:13],
            str(r.turns),
            "yes" if r.note_calls else "",
            "" if r.tokens_at_handoff is None else f"{r.tokens_at_handoff:,}",
            "" if r.payload_tokens is None else f"{r.payload_tokens:,}",
            r.termination,
        ]
        table.add_row(*(([r.workflow_id] if several else []) + cells))
    return table


async def run_demo(
    *,
    tasks: int = 169,
    phases: int = 6,
    context_window: int = 8_000,
    model: str = "claude-sonnet-4-6",
    state_dir: str = ".handoff",
    port: int = 7233,
    ui_port: int = 8233,
    as_json: bool = False,
    tasks_per_turn: int = 2,
    stay: bool = False,
) -> dict[str, Any]:
    """Run the demo session to completion on the `handoff dev` loop; return the summary.

    With `stay`, the loop (UI, codec server, worker) stays up afterwards until
    SIGTERM/Ctrl-C, so the printed links work.
    """
    # Piped output (CI logs, `| tee`) gets a wide console so the chain table is whole.
    console = Console(stderr=as_json, quiet=as_json, width=None if sys.stdout.isatty() else 110)
    async with dev_loop(
        state_dir=state_dir, port=port, ui_port=ui_port, model=model,
        context_window=context_window, tasks_per_turn=tasks_per_turn,
        task_queue=f"demo-{uuid.uuid4().hex[:8]}",
    ) as loop:
        console.print(f"Model calls go to {loop.model_note}", highlight=False)
        client = loop.client
        workflow_id = f"demo-session-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(
            "AgentSessionWorkflow",
            SessionInput(
                config=SessionConfig(
                    model=model, context_window=context_window, max_tokens=1024, user="demo"
                ),
                project=synthetic_project(tasks, phases),
            ),
            id=workflow_id,
            task_queue=loop.task_queue,
            result_type=SessionResult,
            static_summary=f"demo: {tasks}-task project",
        )
        result = await _follow(handle, console, tasks)
        chain = await session_chain(client, workflow_id)
        summary = {
            "workflow_id": workflow_id,
            "generations": result.generation + 1,
            "tasks_total": len(result.project.tasks),
            "tasks_completed": result.project.completed_count,
            "tasks_completed_twice": result.project.duplicate_completions,
            "decisions_recorded": result.health.decisions_recorded,
            "decisions_in_final_state": len(result.project.decisions),
            "handoff_payload_tokens": [r.payload_tokens for r in chain if r.payload_tokens]
            if result.final_handoff is None
            else [r.payload_tokens for r in chain[:-1] if r.payload_tokens],
            "termination": result.reason.value,
            "total_tokens": result.ledger.total_tokens,
            "cost_usd": round(result.ledger.cost_usd, 4),
            "ui_url": loop.ui_url(workflow_id),
        }
        console.print(chain_table(chain))
        console.print(
            f"Finished: {result.reason.value}; {summary['tasks_completed']}/"
            f"{summary['tasks_total']} tasks over {summary['generations']} generations; "
            f"{result.ledger.total_tokens:,} tokens (${result.ledger.cost_usd:.4f})"
        )
        console.print(f"Temporal UI: {loop.ui_url(workflow_id)}", highlight=False, soft_wrap=True)
        console.print("Follow-up, in another shell:", highlight=False)
        exe = Path(sys.argv[0]) if Path(sys.argv[0]).name == "handoff" else Path("handoff")
        if exe.is_absolute() and exe.is_relative_to(Path.cwd()):
            exe = exe.relative_to(Path.cwd())
        for line in (
            f"source {loop.state_dir}/dev.env",
            f"{exe} history {workflow_id}",
            f"{exe} replay {workflow_id}",
            f"{exe} export {workflow_id} --dir /tmp/{workflow_id}",
        ):
            console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
        if as_json:
            print(json.dumps(summary, sort_keys=True), flush=True)
        if stay:
            with stop_on_signals() as stop:
                console.print(
                    "The UI and server stay up; Ctrl-C (or SIGTERM) stops them.", highlight=False
                )
                await stop.wait()
    console.print(
        f"Stopped. To reopen the UI on this data: make dev PORT={port} UI_PORT={ui_port} "
        f"(or handoff dev --dir {state_dir} --port {port} --ui-port {ui_port})",
        highlight=False, soft_wrap=True,
    )
    return summary


async def _follow(handle: Any, console: Console, tasks: int) -> SessionResult:
    """Live progress (generation, context bar, tasks) until the session ends."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    ctx = progress.add_task("context", total=100, info="")
    done = progress.add_task("tasks  ", total=tasks, info="")
    result_task = asyncio.ensure_future(handle.result())
    with Live(progress, console=console, refresh_per_second=8, transient=False):
        while not result_task.done():
            try:
                st: SessionStatus = await handle.query("status", result_type=SessionStatus)
                progress.update(
                    ctx,
                    completed=st.context_pct,
                    info=f"gen {st.generation} · {st.lifecycle.value} · {st.context_pct:.0f}%",
                )
                progress.update(done, completed=st.tasks_done, info=f"{st.tasks_done}/{tasks}")
            except (RPCError, WorkflowQueryFailedError):
                pass  # a query can race a continue-as-new; the next poll retries
            await asyncio.wait({result_task}, timeout=0.25)
    return result_task.result()
