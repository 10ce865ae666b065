"""Every run's details (the UI's User Metadata) lead with the session's summary line.

temporalio 1.35 cannot carry `static_summary` across continue-as-new (neither
`workflow.continue_as_new` nor its command takes user metadata), so the UI shows "No
summary" for every run after generation 0; the details each run sets carry the line.
"""

from __future__ import annotations

import asyncio

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.session import AbortArgs
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from tests.conftest import running_worker
from tests.test_operator_actions import cleanup, start
from tests.waits import guarded, wait_status


async def details_starting(
    client: Client, handle: WorkflowHandle, first_line: str, what: str
) -> str:
    """The current run's details once their first line is `first_line`."""

    async def poll() -> str:
        while True:
            try:
                meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
            except RPCError:  # between two runs of a continue-as-new
                meta = WorkflowMetadata()
            if meta.current_details.splitlines()[:1] == [first_line]:
                return meta.current_details
            await asyncio.sleep(0.05)

    return await guarded(client, handle.id, poll(), what)


async def test_every_run_shows_the_summary_line(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 6, paused=True)
            async with cleanup(client, env, handle.id):
                st = await wait_status(client, handle.id, lambda s: s.paused, "the paused session")
                name = (await handle.query("project", result_type=dict))["name"]
                gen0 = await details_starting(
                    client, handle, f"agent session: {name} · generation 0", "gen 0 details"
                )
                assert gen0.splitlines()[1].startswith(f"gen 0 · turn {st.turn} · PAUSED")
                await handle.signal("flush")  # a handoff while paused: gen 1 stays paused
                gen1 = await details_starting(
                    client, handle, f"agent session: {name} · generation 1", "gen 1 details"
                )
                assert gen1.splitlines()[1].startswith("gen 1 · ")
                await handle.signal("abort", AbortArgs(reason="test done"))
                await handle.result()
