"""`handoff demo`: embedded Temporal + worker + (fake or real) Claude, one long session.

Without `ANTHROPIC_API_KEY` the loopback fake Messages API runs the scripted agent;
with it, the real Claude API is used (the key is read by the activity from the
environment and never enters workflow input or history).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import anthropic
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.worker import Worker

from temporal_handoff.chain import RunSummary, session_chain
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import synthetic_project
from temporal_handoff.schemas.session import SessionInput, SessionResult, SessionStatus
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def chain_table(rows: list[RunSummary], title: str = "Handoff chain") -> Table:
    """One row per generation; a "session" column when the chain spans resumed sessions."""
    table = Table(title=title)
    several = len({r.workflow_id for r in rows}) > 1
    cols = ("gen", "run id", "turns", "tokens at handoff", "payload tokens", "ended by")
    for col in (("session",) if several else ()) + cols:
        table.add_column(col)
    for r in rows:
        cells = [
            str(r.generation),
            r.run_id[:13],
            str(r.turns),
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
    db_file: str = ".handoff/temporal.db",
    port: int = 7233,
    ui_port: int = 8233,
    as_json: bool = False,
    tasks_per_turn: int = 2,
) -> dict[str, Any]:
    """Run the demo session to completion and return the summary dict."""
    # Piped output (CI logs, `| tee`) gets a wide console so the chain table is whole.
    console = Console(stderr=as_json, quiet=as_json, width=None if sys.stdout.isatty() else 110)
    if not _free(port):
        console.print(f"[yellow]port {port} is busy; using a random port[/]")
        port, ui_port = 0, 0
    env = await start_dev_server(
        db_file=db_file, port=port or None, ui=True, ui_port=ui_port or None
    )
    fake = None
    try:
        if os.environ.get("ANTHROPIC_API_KEY"):
            model_client = anthropic.AsyncAnthropic(max_retries=0)
            console.print(f"Using the Claude API with model [bold]{model}[/]")
        else:
            from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain

            fake = FakeAnthropicServer(
                brain=ScriptedAgentBrain(tasks_per_turn=tasks_per_turn),
                context_windows={model: context_window},
            ).start()
            model_client = anthropic.AsyncAnthropic(
                base_url=fake.base_url, api_key="fake-key", max_retries=0
            )
            console.print(f"No ANTHROPIC_API_KEY: using the fake Messages API at {fake.base_url}")
        config = env.client.config()
        # Conversation content goes to the local content store, not into history.
        store = external_storage(str(Path(db_file).parent / "payloads"))
        config["plugins"] = [HandoffPlugin(anthropic_client=model_client, storage=store)]
        client = Client(**config)
        task_queue = f"demo-{uuid.uuid4().hex[:8]}"
        workflow_id = f"demo-session-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=task_queue):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(
                    config=SessionConfig(
                        model=model, context_window=context_window, max_tokens=1024, user="demo"
                    ),
                    project=synthetic_project(tasks, phases),
                ),
                id=workflow_id,
                task_queue=task_queue,
                result_type=SessionResult,
                static_summary=f"demo: {tasks}-task project",
            )
            result = await _follow(handle, console, tasks)
        chain = await session_chain(client, workflow_id)
        ui = getattr(env, "_ui_url", None) or (
            f"http://localhost:{ui_port}/namespaces/default/workflows/{workflow_id}"
            if ui_port
            else "(UI on a random port)"
        )
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
        }
        console.print(chain_table(chain))
        console.print(
            f"Finished: {result.reason.value}; {summary['tasks_completed']}/"
            f"{summary['tasks_total']} tasks over {summary['generations']} generations; "
            f"{result.ledger.total_tokens:,} tokens (${result.ledger.cost_usd:.4f})"
        )
        console.print(f"Temporal UI: {ui}")
        if as_json:
            print(json.dumps(summary, sort_keys=True))
        return summary
    finally:
        if fake is not None:
            fake.stop()
        await env.shutdown()


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
