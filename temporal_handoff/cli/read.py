"""Read one session: `handoff status`, `handoff history`, `handoff result`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from temporalio.client import WorkflowFailureError

from temporal_handoff.cli.common import (
    ADDRESS,
    NAMESPACE,
    CliError,
    app,
    connect,
    console,
    run,
    unknown_workflow,
)
from temporal_handoff.schemas.session import SessionResult, SessionStatus

if TYPE_CHECKING:
    from temporal_handoff.chain import RunSummary


@app.command()
def status(
    workflow_id: str,
    json_out: bool = typer.Option(False, "--json"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Lifecycle, generation, context usage, tokens, tasks, blockers, health."""

    async def go() -> None:
        client = await connect(address, namespace)
        handle = client.get_workflow_handle(workflow_id)
        with unknown_workflow(workflow_id):
            st = await handle.query("status", result_type=SessionStatus)
        if json_out:
            print(st.model_dump_json())
            return
        console.print(
            f"[bold]{st.session_id}[/] gen {st.generation} · {st.lifecycle.value} · "
            f"context {st.context_pct:.1f}% of {st.context_window:,} · "
            f"tasks {st.tasks_done}/{st.tasks_total} · tokens {st.total_tokens:,} "
            f"(${st.cost_usd:.4f})" + (" · paused" if st.paused else "")
        )
        if st.awaiting_input:
            console.print(
                f'  waiting for your message: handoff say {st.session_id} "…" --wait', markup=False
            )
        for b in st.open_blockers:
            console.print(f"  blocker {b['id']} ({b['type']}): {b['description']}")
        for reason in st.rejected_commands[-3:]:
            console.print(f"  rejected: {reason}", markup=False)
        if st.closing_reason:
            console.print(f"  closed: {st.closing_reason}: {st.closing_message}", markup=False)

    run(go)


def chain_markdown(rows: list[RunSummary]) -> str:
    """The chain as a markdown table ("note": the run wrote a note to its successor)."""
    several = len({r.workflow_id for r in rows}) > 1
    lines = [
        ("| session " if several else "") + "| gen | run id | turns | note "
        "| tokens at handoff | payload tokens | ended by |",
        ("|---" if several else "") + "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            (f"| {r.workflow_id} " if several else "")
            + f"| {r.generation} | `{r.run_id}` | {r.turns} | {'yes' if r.note_calls else ''} "
            f"| {r.tokens_at_handoff or ''} | {r.payload_tokens or ''} | {r.termination} |"
        )
    return "\n".join(lines)


@app.command()
def history(
    workflow_id: str,
    json_out: bool = typer.Option(False, "--json"),
    markdown: bool = typer.Option(False, "--markdown"),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """The handoff chain across continue-as-new runs (and back through --resume-from)."""
    from temporal_handoff.chain import session_chain
    from temporal_handoff.demo import chain_table

    async def go() -> None:
        client = await connect(address, namespace)
        with unknown_workflow(workflow_id):
            rows = await session_chain(client, workflow_id, follow_resumes=True)
        sessions = list(dict.fromkeys(r.workflow_id for r in rows))
        if json_out:
            print(json.dumps([r.model_dump(mode="json") for r in rows], sort_keys=True))
        elif markdown:
            print(chain_markdown(rows))
        else:
            title = f"Handoff chain of {workflow_id}"
            if len(sessions) > 1:
                title += " (resumed from " + " ← ".join(reversed(sessions[:-1])) + ")"
            console.print(chain_table(rows, title=title))

    run(go)


@app.command()
def result(
    workflow_id: str, address: str | None = ADDRESS, namespace: str | None = NAMESPACE
) -> None:
    """Wait for a session to end and print its result summary as JSON."""

    async def go() -> None:
        client = await connect(address, namespace)
        try:
            res = await client.get_workflow_handle(workflow_id, result_type=SessionResult).result()
        except WorkflowFailureError as err:
            raise CliError(f"session failed: {err.cause}", 1) from None
        print(
            json.dumps(
                {
                    "reason": res.reason.value,
                    "generation": res.generation,
                    "tasks_completed": res.project.completed_count,
                    "tasks_total": len(res.project.tasks),
                    "total_tokens": res.ledger.total_tokens,
                    "final_reply": res.final_reply,
                    "summary": res.summary,
                },
                sort_keys=True,
            )
        )

    run(go)
