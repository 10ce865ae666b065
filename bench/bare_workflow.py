"""The bare baseline for `turn_overhead.py`: the same `call_model` activity in a plain loop.

Imports only temporalio and `temporal_handoff.schemas`: the workflow sandbox
re-imports this module, so it must not pull in the fake server or aiohttp.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.model_io import ModelRequest, ModelResponse, ToolSpec


@workflow.defn(name="BareModelLoop")
class BareModelLoop:
    """Call the model `turns` times, appending each reply and a minimal tool result.

    Input: ``{"model", "system", "tools", "opening", "turns"}`` (plain JSON).
    """

    @workflow.run
    async def run(self, inp: dict[str, Any]) -> int:
        messages: list[dict[str, Any]] = [{"role": "user", "content": inp["opening"]}]
        tools = [ToolSpec.model_validate(t) for t in inp["tools"]]
        for turn in range(int(inp["turns"])):
            resp = await workflow.execute_activity(
                "call_model",
                ModelRequest(
                    model=inp["model"],
                    system=inp["system"],
                    messages=messages,
                    tools=tools,
                    turn=turn + 1,
                ),
                result_type=ModelResponse,
                start_to_close_timeout=timedelta(seconds=120),
                retry_policy=RetryPolicy(maximum_attempts=0),
            )
            messages.append({"role": "assistant", "content": resp.content})
            uses = [b for b in resp.content if b.get("type") == "tool_use"]
            if uses:
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": u["id"], "content": "ok"}
                            for u in uses
                        ],
                    }
                )
            else:
                messages.append({"role": "user", "content": "Continue."})
        return int(inp["turns"])
