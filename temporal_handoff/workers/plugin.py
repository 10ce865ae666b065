"""`HandoffPlugin`: the whole setup in one object.

    client = await Client.connect(addr, plugins=[HandoffPlugin()])
    worker = Worker(client, task_queue="agents")   # activities + workflows come from the client's plugin

It adds the activities and workflows, replaces only the default payload converter
with the pydantic one (a user's codec or external storage is kept), passes the
schema modules through the workflow sandbox, and lists the deterministic failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import anthropic
import pydantic
from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    ExternalStorage,
    PayloadCodec,
)
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from temporal_handoff.activities.child_activity import handoff_child_owner
from temporal_handoff.activities.handoff_activity import build_handoff
from temporal_handoff.activities.model_activity import ModelActivities
from temporal_handoff.activities.notify_activity import Notifier, NotifyActivities
from temporal_handoff.activities.recall_activity import recall
from temporal_handoff.activities.tokenizer import estimate_tokens
from temporal_handoff.schemas.config import STATE_TOOL_NAMES
from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.schemas.state_events import EventError
from temporal_handoff.workers.search_attributes import (
    SearchAttributesMissing,
    ensure_search_attributes,
)
from temporal_handoff.workers.tolerant_converter import (
    HandoffPayloadConverter,
    TolerantDataConverter,
)
from temporal_handoff.workflows.handoff import HandoffWorkflow
from temporal_handoff.workflows.session import AgentSessionWorkflow

ToolFn = Callable[[dict[str, Any]], Awaitable[str]]

PASSTHROUGH = ("pydantic", "pydantic_core", "annotated_types", "temporal_handoff.schemas")


class UserTool(BaseModel):
    """A user-defined tool: its spec (shown to the model) and the coroutine that runs it.

    The coroutine runs as the activity `tool:<name>`; list the same spec in
    `SessionConfig.user_tools` (or use `HandoffPlugin.tool_specs`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    spec: ToolSpec
    fn: Any = Field(description="async (input: dict) -> str")


class HandoffOptions(BaseModel):
    """Plugin options, validated when the plugin is built (never inside a workflow task)."""

    model_config = ConfigDict(extra="forbid")

    heartbeat_every_s: float = Field(default=5.0, gt=0, le=300)
    """Heartbeat interval of streaming model calls."""
    conversation_cache: bool = True
    """Each model call puts a moving prompt-cache breakpoint on the conversation, so a
    turn reads the previous turns from Claude's prompt cache (0.1× the input price)
    instead of paying for the whole conversation again. Off: only the system prompt
    (tools + system) is cached."""
    register_search_attributes: bool = True
    """At worker start, add missing Agent* search attributes to the namespace (allowed
    on the dev server); if False, only check. Either way a worker refuses to start on a
    namespace without them (naming `handoff setup`) instead of failing every task."""
    check_search_attributes: bool = True
    """Check the namespace at worker start (turn off only if every session runs with
    `SessionConfig.search_attributes=False`)."""


def _data_converter(
    existing: DataConverter | None,
    storage: ExternalStorage | None = None,
    codec: PayloadCodec | None = None,
) -> DataConverter:
    base = existing or DataConverter.default
    if base.payload_converter_class in (DefaultPayloadConverter, PydanticPayloadConverter):
        base = dataclasses.replace(base, payload_converter_class=HandoffPayloadConverter)
    if storage is not None and base.external_storage is None:
        # A user's own external storage wins; ours only fills the gap.
        base = dataclasses.replace(base, external_storage=storage)
    if codec is not None and base.payload_codec is None:
        # A user's own codec wins. With ours, failure messages and stack traces move
        # into the (encrypted) encoded attributes too.
        base = dataclasses.replace(base, payload_codec=codec)
        if base.failure_converter_class is DefaultFailureConverter:
            base = dataclasses.replace(
                base, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
            )
    if type(base) is DataConverter:
        # An unreadable payload (crafted signal, unknown key id, forged storage
        # reference) becomes a marker instead of failing every workflow task.
        base = TolerantDataConverter.from_converter(base)
    return base


def _workflow_runner(existing: WorkflowRunner | None) -> WorkflowRunner:
    if isinstance(existing, SandboxedWorkflowRunner):
        return dataclasses.replace(
            existing, restrictions=existing.restrictions.with_passthrough_modules(*PASSTHROUGH)
        )
    if existing is None:
        runner = SandboxedWorkflowRunner()
        return dataclasses.replace(
            runner, restrictions=runner.restrictions.with_passthrough_modules(*PASSTHROUGH)
        )
    return existing


def _tool_activity(tool: UserTool) -> Callable[..., Awaitable[str]]:
    fn = tool.fn

    async def run_tool(tool_input: dict[str, Any]) -> str:
        return str(await fn(tool_input))

    return activity.defn(name=f"tool:{tool.spec.name}")(run_tool)


HEARTBEAT_THROTTLE = timedelta(seconds=1)


class HandoffPlugin(SimplePlugin):
    """Adds temporal-handoff's workflows, activities and converter to a client/worker.

    Args:
        options: validated plugin options.
        notifier: coroutine called (in the `notify` activity) on lifecycle events.
        tools: user-defined tools, run as activities.
        anthropic_client: a preconfigured `AsyncAnthropic` (tests point it at the
            fake server); by default one is built from the worker's environment.
        storage: external payload storage that keeps conversation content out of
            workflow history (see `temporal_handoff.workers.storage.external_storage`);
            ignored if the client's data converter already has one. Every worker
            and client of a deployment must be given the same storage.
        codec: payload codec, e.g. `temporal_handoff.codec.AesGcmCodec` (see
            `codec_from_env`); also encodes failure messages. Ignored if the client's
            data converter already has a codec. Workers and clients need the same keys.
    """

    def __init__(
        self,
        options: HandoffOptions | None = None,
        *,
        notifier: Notifier | None = None,
        tools: Sequence[UserTool] = (),
        anthropic_client: anthropic.AsyncAnthropic | None = None,
        storage: ExternalStorage | None = None,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.options = options or HandoffOptions()
        names = [t.spec.name for t in tools]
        for name in names:
            if name in STATE_TOOL_NAMES or name == "recall":
                raise ValueError(f"tools: {name!r} is a built-in tool name")
            if names.count(name) > 1:
                raise ValueError(f"tools: duplicate tool name {name!r}")
        self.tool_specs = [t.spec for t in tools]
        model = ModelActivities(
            anthropic_client,
            heartbeat_every_s=self.options.heartbeat_every_s,
            conversation_cache=self.options.conversation_cache,
        )
        notify = NotifyActivities(notifier)
        super().__init__(
            name="temporal_handoff.HandoffPlugin",
            data_converter=functools.partial(_data_converter, storage=storage, codec=codec),
            activities=[
                model.call_model,
                model.model_info,
                estimate_tokens,
                build_handoff,
                recall,
                handoff_child_owner,
                notify.notify,
                *[_tool_activity(t) for t in tools],
            ],
            workflows=[AgentSessionWorkflow, HandoffWorkflow],
            workflow_runner=_workflow_runner,
            # A schema violation inside workflow code is deterministic: retrying the
            # task would loop forever, so fail the workflow instead.
            workflow_failure_exception_types=[pydantic.ValidationError, EventError],
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """Heartbeats leave within `HEARTBEAT_THROTTLE` of the call: a model call
        heartbeats each answer's usage (what the API bills) the moment it comes, and
        one held back by the SDK's throttle (30-60 s) would be lost with a killed
        worker or a timed-out attempt; a pause or abort reaches the call as soon."""
        config = super().configure_worker(config)
        for key in ("max_heartbeat_throttle_interval", "default_heartbeat_throttle_interval"):
            current = config.get(key)
            if not isinstance(current, timedelta) or current > HEARTBEAT_THROTTLE:
                config[key] = HEARTBEAT_THROTTLE  # type: ignore[literal-required]
        return config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        """Check the namespace's search attributes before polling (one clear error)."""
        problem: SearchAttributesMissing | None = None
        if self.options.check_search_attributes:
            try:
                await ensure_search_attributes(
                    worker.client, register=self.options.register_search_attributes
                )
            except SearchAttributesMissing as err:
                problem = err
        if problem is None:
            await super().run_worker(worker, next)
            return
        # A worker's shutdown only completes once its run has started, so a plugin that
        # raised before `next` would leave `async with Worker(...)` waiting forever:
        # start it already shut down, then fail with the reason.
        runner = asyncio.ensure_future(super().run_worker(worker, next))
        await worker.shutdown()
        with contextlib.suppress(Exception):
            await runner
        raise problem
