"""Small shared helpers for the integration tests."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SessionInput, SessionResult


async def start_session(
    client: Client,
    task_queue: str,
    project: ProjectState,
    prefix: str = "session",
    task_timeout: timedelta | None = None,
    paused: bool = False,
    **config: object,
) -> WorkflowHandle[object, SessionResult]:
    """Start an `AgentSessionWorkflow` with a unique id (`paused`: it waits for `resume`)."""
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(
            config=SessionConfig(**config), project=project, paused=paused  # type: ignore[arg-type]
        ),
        id=f"{prefix}-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=SessionResult,
        task_timeout=task_timeout,
    )


def is_store_reference(payload: Payload) -> bool:
    """A content-store reference (what history holds for a stored payload)."""
    return payload.metadata.get("messageType", b"").endswith(b"ExternalStorageReference")


def call_model_inputs(history: WorkflowHistory) -> list[Payload]:
    """The input payload of every `call_model` activity scheduled in `history`."""
    return [
        e.activity_task_scheduled_event_attributes.input.payloads[0]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "call_model"
    ]
