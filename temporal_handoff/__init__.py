"""Durable Claude agent sessions on Temporal that never run out of context.

Public names are loaded lazily: workflow code imports `temporal_handoff.schemas`
inside Temporal's sandbox, and importing this package must not drag the
Anthropic SDK or tiktoken in with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HandoffPlugin": "temporal_handoff.workers.plugin",
    "HandoffOptions": "temporal_handoff.workers.plugin",
    "UserTool": "temporal_handoff.workers.plugin",
    "AgentSessionWorkflow": "temporal_handoff.workflows.session",
    "HandoffWorkflow": "temporal_handoff.workflows.handoff",
    "SessionConfig": "temporal_handoff.schemas.config",
    "CompressionLevel": "temporal_handoff.schemas.config",
    "SessionInput": "temporal_handoff.schemas.session",
    "SessionResult": "temporal_handoff.schemas.session",
    "SessionStatus": "temporal_handoff.schemas.session",
    "TokenUsage": "temporal_handoff.schemas.tokens",
    "TokenLedger": "temporal_handoff.schemas.tokens",
    "LifecycleState": "temporal_handoff.schemas.lifecycle",
    "TerminationReason": "temporal_handoff.schemas.lifecycle",
    "ProjectState": "temporal_handoff.schemas.project",
    "Task": "temporal_handoff.schemas.project",
    "Phase": "temporal_handoff.schemas.project",
    "Decision": "temporal_handoff.schemas.project",
    "Blocker": "temporal_handoff.schemas.project",
    "BlockerType": "temporal_handoff.schemas.project",
    "TaskStatus": "temporal_handoff.schemas.project",
    "ToolSpec": "temporal_handoff.schemas.model_io",
    "ToolPolicy": "temporal_handoff.schemas.model_io",
    "TranscriptEntry": "temporal_handoff.schemas.transcript",
    "TranscriptPage": "temporal_handoff.schemas.transcript",
    "TranscriptQuery": "temporal_handoff.schemas.transcript",
    "DecideArgs": "temporal_handoff.schemas.session",
    "SayArgs": "temporal_handoff.schemas.session",
    "synthetic_project": "temporal_handoff.testing.synthetic",
    "from_orchestrator": "temporal_handoff.seeds",
    "from_state_json": "temporal_handoff.seeds",
    "read_seed": "temporal_handoff.seeds",
    "HandoffDocument": "temporal_handoff.schemas.handoff",
    "HandoffPayload": "temporal_handoff.schemas.handoff",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'temporal_handoff' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
