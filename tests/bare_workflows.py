"""Workflows used only by tests. Kept apart from test modules so the workflow
sandbox does not re-import test-only dependencies (aiohttp, the fake server)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.model_io import ModelRequest, ModelResponse


@workflow.defn(name="OneModelCall")
class OneModelCall:
    """The bare minimum around the activity: one call, Temporal's retries."""

    @workflow.run
    async def run(self, req: ModelRequest) -> ModelResponse:
        return await workflow.execute_activity(
            "call_model",
            req,
            result_type=ModelResponse,
            start_to_close_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=100), maximum_attempts=5
            ),
        )


with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.session import SessionInput, SessionResult
    from temporal_handoff.workflows.session import AgentSessionWorkflow


@workflow.defn(name="AgentSessionWorkflow")
class ChangedSessionWorkflow(AgentSessionWorkflow):
    """A deliberately nondeterministic edit: lifecycle notifications go to another
    activity, so the `notify` activities recorded in history no longer match on replay."""

    @workflow.run
    async def run(self, inp: SessionInput | None = None) -> SessionResult:
        return await super().run(inp)

    def _start_notify(self, *args: object, **kwargs: object) -> workflow.ActivityHandle[None]:
        return workflow.start_activity(
            "notify_renamed", "x", start_to_close_timeout=timedelta(seconds=30)
        )
