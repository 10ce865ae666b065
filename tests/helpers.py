"""Small shared helpers for the integration tests."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client, WorkflowHandle

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
