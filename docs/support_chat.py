"""Bring your own agent: a free-form support session with your own tool, driven by the CLI.

Starts an embedded Temporal dev server, a worker with the plugin and one user tool
(`lookup_order`), and a session that has a goal and no tasks. Then it talks to the
agent with `handoff say --wait`, hands off twice (`handoff flush`), and prints every
generation's transcript with `handoff transcript`. With ANTHROPIC_API_KEY set the
agent is Claude; without it, the offline fake Messages API with a scripted
conversational agent (`temporal_handoff.testing.ConversationBrain`).

    python docs/support_chat.py
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from typing import Any

import anthropic
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_handoff import (
    HandoffPlugin,
    ProjectState,
    SessionConfig,
    SessionInput,
    SessionResult,
    ToolPolicy,
    ToolSpec,
    UserTool,
)
from temporal_handoff.testing import ConversationBrain, Exchange, FakeAnthropicServer
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.storage import external_storage

ORDERS = {"A-1": "shipped 2026-11-30 with DHL, tracking JD0140"}


async def lookup_order(args: dict[str, Any]) -> str:
    """Your tool: any async function of the tool input, returning text for the model."""
    order = ORDERS.get(str(args.get("order_id")))
    if order is None:
        raise KeyError(f"no order {args.get('order_id')!r}")
    return order


LOOKUP = ToolSpec(
    name="lookup_order",
    description="Look up an order by id: status, carrier, tracking number.",
    input_schema={
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
    policy=ToolPolicy(max_attempts=2, timeout_s=10, non_retryable_errors=["KeyError"]),
)

SCRIPT = [
    Exchange(
        when="where is my order", tool="lookup_order", tool_input={"order_id": "A-1"},
        note="A-1: shipped with DHL, tracking JD0140.", reply="Your order A-1 was {result}.",
    ),
    Exchange(
        when="change the address",
        reply="A shipped parcel's address cannot be changed; DHL can redirect it with "
        "tracking number JD0140, or I can open a return.",
    ),
    Exchange(
        when="thanks", reply="You're welcome. Closing this conversation.",
        finish="Customer asked about A-1: shipped with DHL (JD0140); redirect via DHL.",
    ),
]


def handoff(*args: str, env: dict[str, str]) -> None:
    """Run the `handoff` CLI as a user would, echoing the command and its output."""
    print(f"$ handoff {shlex.join(args)}")
    cmd = [sys.executable, "-c", "from temporal_handoff.cli import main; main()", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    print(out.stdout + out.stderr, end="" if (out.stdout + out.stderr).endswith("\n") else "\n")


async def main() -> None:
    with ExitStack() as stack:
        store = stack.enter_context(tempfile.TemporaryDirectory())
        model = None
        if not os.environ.get("ANTHROPIC_API_KEY"):
            fake = stack.enter_context(FakeAnthropicServer(brain=ConversationBrain(SCRIPT)))
            model = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="offline", max_retries=0)
        env = await start_dev_server()
        try:
            address = env.client.service_client.config.target_host
            plugin = HandoffPlugin(
                tools=[UserTool(spec=LOOKUP, fn=lookup_order)],
                anthropic_client=model,
                storage=external_storage(store),
            )
            client = await Client.connect(address, plugins=[plugin])
            async with Worker(client, task_queue="support"):
                handle = await client.start_workflow(
                    "AgentSessionWorkflow",
                    SessionInput(
                        config=SessionConfig(
                            user_tools=plugin.tool_specs,
                            system_prompt="You are a support agent for an online shop.",
                        ),
                        project=ProjectState(
                            name="support", goal="Answer the customer's questions about order A-1"
                        ),
                    ),
                    id="support-chat-1", task_queue="support", result_type=SessionResult,
                )
                cli_env = {**os.environ, "TEMPORAL_ADDRESS": address, "HANDOFF_STORAGE_DIR": store}
                run = asyncio.to_thread
                await run(handoff, "say", handle.id, "Where is my order A-1?", "--wait", env=cli_env)
                await run(handoff, "flush", handle.id, env=cli_env)
                await run(handoff, "say", handle.id, "Can I change the address?", "--wait", env=cli_env)
                await run(handoff, "flush", handle.id, env=cli_env)
                await run(handoff, "say", handle.id, "Thanks!", "--wait", env=cli_env)
                result = await handle.result()
                await run(handoff, "transcript", handle.id, env=cli_env)
            print(f"result: {result.reason.value}, generation {result.generation}")
            print(f"summary: {result.summary}")
        finally:
            await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
