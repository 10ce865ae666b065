"""`handoff transcript`: what the agent (and the humans) said, every generation.

Running generations answer the `transcript` query; closed ones are read from Temporal
history and the payload store (:mod:`temporal_handoff.transcripts`).
"""

from __future__ import annotations

import typer

from temporal_handoff.cli.common import (
    ADDRESS,
    NAMESPACE,
    CliError,
    app,
    connect,
    fail,
    run,
    unknown_workflow,
)
from temporal_handoff.schemas.transcript import TranscriptEntry


def _show(entry: TranscriptEntry, as_json: bool) -> None:
    typer.echo(entry.model_dump_json() if as_json else entry.line())


@app.command()
def transcript(
    workflow_id: str,
    generation: int | None = typer.Option(None, "--generation", min=0, help="Only this one."),
    follow: bool = typer.Option(False, "--follow", help="Keep printing until the session ends."),
    role: list[str] = typer.Option([], "--role", help="Only these roles (agent, human, ...)."),
    max_chars: int = typer.Option(4_000, "--max-chars", min=100, max=100_000),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per entry."),
    address: str | None = ADDRESS,
    namespace: str | None = NAMESPACE,
) -> None:
    """Show what was said in a session: every generation's replies, oldest first."""
    from temporal_handoff import transcripts

    roles = set(role)
    unknown = roles - {"session", "human", "agent", "tool"}
    if unknown:
        fail(f"role: unknown role {sorted(unknown)[0]!r} (session, human, agent, tool)")
    if follow and generation is not None:
        fail("generation: --follow shows every generation; drop --generation")

    async def go() -> None:
        client = await connect(address, namespace)
        with unknown_workflow(workflow_id):
            try:
                entries = await transcripts.session_transcript(
                    client, workflow_id, generation, max_chars
                )
            except ValueError as err:
                raise CliError(str(err)) from None
        seen: set[tuple[int, int]] = set()
        for entry in entries:
            seen.add((entry.generation, entry.index))
            if not roles or entry.role in roles:
                _show(entry, as_json)
        if follow:
            async for entry in transcripts.follow(client, workflow_id, seen, max_chars):
                if not roles or entry.role in roles:
                    _show(entry, as_json)

    run(go)

