"""`handoff setup`: register the search attributes on a cluster."""

from __future__ import annotations

from temporal_handoff.cli.common import ADDRESS, NAMESPACE, CliError, app, connect, console, run
from temporal_handoff.schemas import visibility as sa
from temporal_handoff.workers.search_attributes import (
    SearchAttributesMissing,
    ensure_search_attributes,
)


@app.command()
def setup(address: str | None = ADDRESS, namespace: str | None = NAMESPACE) -> None:
    """Register the search attributes on a cluster (operator service; idempotent)."""

    async def go() -> None:
        client = await connect(address, namespace)
        try:
            report = await ensure_search_attributes(client)
        except SearchAttributesMissing as err:
            raise CliError(str(err), 1) from None
        types = {key.name: sa.cli_type(key) for key in sa.ALL_KEYS}
        for name in report.present:
            console.print(f"{name} ({types[name]}): already registered")
        for name in report.registered:
            console.print(f"{name} ({types[name]}): registered")
        console.print(f"search attributes ready in namespace {client.namespace}", highlight=False)

    run(go)
