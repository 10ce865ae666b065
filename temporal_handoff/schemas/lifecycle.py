"""Lifecycle states and termination reasons of an agent session."""

from __future__ import annotations

from enum import Enum


class LifecycleState(str, Enum):
    INITIALIZING = "INITIALIZING"
    ACTIVE = "ACTIVE"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    HANDOFF_PENDING = "HANDOFF_PENDING"
    HANDOFF_COMPLETE = "HANDOFF_COMPLETE"
    PAUSED = "PAUSED"
    AWAITING_DECISION = "AWAITING_DECISION"
    AWAITING_INPUT = "AWAITING_INPUT"
    """The agent replied and waits for the human's next message (`say`)."""
    TERMINATED = "TERMINATED"


class TerminationReason(str, Enum):
    TASK_COMPLETED = "TASK_COMPLETED"
    CONTEXT_HANDOFF = "CONTEXT_HANDOFF"
    MANUAL_FLUSH = "MANUAL_FLUSH"
    HISTORY_LIMIT = "HISTORY_LIMIT"
    MAX_GENERATIONS = "MAX_GENERATIONS"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    USER_ABORT = "USER_ABORT"
    MODEL_ERROR = "MODEL_ERROR"
    HANDOFF_FAILED = "HANDOFF_FAILED"
    """The handoff payload could not be built (e.g. over `max_payload_bytes`)."""
    AGENT_FINISHED = "AGENT_FINISHED"
    """The model ended its turn with tasks left and no way forward (e.g. max turns)."""
    FINISHED = "FINISHED"
    """The agent called `finish` with a summary (free-form sessions)."""
    CONFIG_ERROR = "CONFIG_ERROR"
    """The configuration cannot work (e.g. the window cannot hold prompt + handoff budget);
    the result's document lets `--resume-from` continue with a fixed config."""
