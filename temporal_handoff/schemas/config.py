"""Session configuration: validated eagerly so a typo fails at start, not in a workflow task."""

from __future__ import annotations

import json
from enum import Enum
from typing import Literal

from pydantic import Field, model_validator

from temporal_handoff.schemas.base import DurableModel
from temporal_handoff.schemas.cache_ttl import CacheTtlMode
from temporal_handoff.schemas.estimator import rough_tokens
from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.schemas.tokens import max_output_tokens
from temporal_handoff.schemas.tools import state_tool_specs


class CompressionLevel(str, Enum):
    MINIMAL = "minimal"
    STANDARD = "standard"
    FULL = "full"


STATE_TOOL_NAMES = (
    "complete_task", "fail_task", "record_decision", "add_blocker", "note_file", "add_todo",
    "set_phase",
)

TURN_RESERVE_TOKENS = 500
"""Room a generation needs for at least one turn beyond its fixed prompt."""

MAX_TOKENS_RETRIES = 3
"""With `on_max_tokens="retry"`: how many times in a row a turn cut at `max_tokens` is
asked again with `max_tokens` doubled before the session raises a blocker."""

DEFAULT_LEVEL_BUDGETS: dict[str, int] = {"minimal": 500, "standard": 1200, "full": 2000}


class SessionConfig(DurableModel):
    """How one agent session runs. Every field is validated; errors name the field.

    Carried in every `SessionInput`, so unknown fields are ignored when decoded; where a
    person writes it (`handoff start --config`) it is read with `validate_human`, and an
    unknown field is an error naming it."""

    model: str = Field(default="claude-sonnet-4-6", min_length=1, max_length=128)
    """Model id for generation 0."""
    successor_model: str | None = Field(default=None, min_length=1, max_length=128)
    """Model id for generations ≥ 1 (defaults to `model`)."""
    context_window: int | None = Field(default=None, ge=1_000, le=10_000_000)
    """Override of the model's context window (tokens)."""
    warn_threshold: float = Field(default=0.75, gt=0, lt=1)
    """Context fraction that starts the handoff child (WARNING)."""
    handoff_threshold: float = Field(default=0.90, gt=0, le=1)
    """Context fraction at which the session hands off (CRITICAL → seal)."""
    max_generations: int = Field(default=20, ge=1, le=10_000)
    """Loop guard: the session stops rather than start generation `max_generations`."""
    compression_level: CompressionLevel = CompressionLevel.STANDARD
    level_budgets: dict[CompressionLevel, int] = Field(
        default_factory=lambda: {CompressionLevel(k): v for k, v in DEFAULT_LEVEL_BUDGETS.items()}
    )
    """Token budget of the continuation prompt per compression level."""
    token_budget: int | None = Field(default=None, ge=1)
    """Stop with BUDGET_EXHAUSTED once cumulative tokens reach this."""
    usd_budget: float | None = Field(default=None, gt=0)
    """Stop with BUDGET_EXHAUSTED once cumulative cost reaches this."""
    max_tokens: int = Field(default=4096, ge=1, le=128_000)
    """`max_tokens` per model call. Above the model's output limit (Models API) the
    session stops at start with CONFIG_ERROR. Every pre-flight reserves it (prompt +
    `max_tokens` ≤ window, not only prompt ≤ the handoff threshold); a window too small
    for the fixed prompt + one turn + `max_tokens` gets the largest `max_tokens` that
    fits (`max_tokens_room`)."""
    min_max_tokens: int = Field(default=256, ge=1, le=128_000)
    """The smallest `max_tokens` worth a call. When the pre-flight refuses a generation's
    first call (nothing said yet, so a handoff would not help) and the prompt fits under
    the handoff threshold, that call's `max_tokens` is lowered to what fits beside it,
    not below this; if even this does not fit, the session stops with CONFIG_ERROR."""
    on_max_tokens: Literal["retry", "blocker"] = "retry"
    """A reply cut at `max_tokens` (`stop_reason: "max_tokens"`) is never used: none of
    its tool calls runs (the last one may be cut mid-input) and it is not added to the
    conversation (its tokens are billed). `retry`: the same turn is asked again with
    `max_tokens` doubled (up to the model's output limit and what the window holds), at
    most `MAX_TOKENS_RETRIES` times in a row, then a blocker; the raised value stays for
    the rest of the generation. `blocker`: a human-decision blocker at once."""
    stream_threshold: int = Field(default=16_000, ge=1)
    """Calls with `max_tokens` above this stream (SSE) with heartbeats."""
    max_turns_per_generation: int = Field(default=500, ge=1)
    max_quiet_turns: int = Field(default=3, ge=1, le=1_000)
    """Replies in a row without a tool call after which a nudged session ends
    AGENT_FINISHED (see `when_quiet`)."""
    when_quiet: Literal["auto", "wait", "nudge"] = "auto"
    """What follows a reply without tool calls. "wait": the session waits for the human's
    next message (`say`), visibly (lifecycle AWAITING_INPUT, NeedsHuman), as a chat does.
    "nudge": it asks the model to go on, and ends AGENT_FINISHED after
    `max_quiet_turns` such replies in a row. "auto": "wait" for a free-form session (a
    goal, no tasks), "nudge" for a task session."""
    system_prompt: str = Field(
        default=(
            "You are an autonomous engineering agent working through a project plan. "
            "Use the state tools to record progress: complete_task when a task is done, "
            "record_decision for choices, add_blocker when you need a human."
        ),
        max_length=64_000,
    )
    model_call_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """start-to-close timeout of one model call attempt."""
    model_retry_initial_s: float = Field(default=1.0, gt=0, le=600)
    """First retry interval of a failed model call (doubles up to 60 s); `retry-after`
    from the API overrides it."""
    model_max_attempts: int = Field(default=20, ge=1, le=10_000)
    """Attempts of one model call (retryable errors: 429, 5xx, connection) before the
    session stops retrying, raises a human-decision blocker and notifies."""
    model_retry_timeout_s: float = Field(default=900.0, gt=0, le=7 * 24 * 3600)
    """Overall time for one model call, retries included, before the same blocker."""
    max_carry_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=2 * 1024 * 1024)
    """Largest serialized successor (continue-as-new) or handoff-child input; a session
    whose next input would be larger ends HANDOFF_FAILED with its state instead of
    being terminated by Temporal (2 MiB)."""
    human_decision_timeout_s: float | None = Field(default=None, gt=0)
    """If set, a human-decision blocker unanswered this long is auto-resolved as deferred."""
    max_human_text_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=2 * 1024 * 1024)
    """Hard cap on the handoff payload (Temporal terminates workflows past 2 MiB)."""
    handoff_child_timeout_s: float = Field(default=24 * 3600.0, ge=1, le=30 * 24 * 3600)
    """Execution timeout of each handoff child (it is also terminated when its session
    run closes). The child lives from WARNING to the handoff, pauses and pending human
    decisions included; one that times out is replaced (or the session builds the
    payload itself), so this only bounds a child whose session cannot close it."""
    user_tools: list[ToolSpec] = Field(default_factory=list)
    """Tools registered on the plugin (run as activities named `tool:<name>`)."""
    progress_hints: bool = Field(default=True, strict=True)
    """Tool results and "continue" nudges carry the workflow's view of progress (counts
    and the `Next eligible tasks:` line). Off: they carry only what the model itself
    recorded, so a successor works from its system prompt, the continuation prompt and
    `recall` alone (how the handoff-fidelity tests and benchmark run)."""
    cache_ttl: CacheTtlMode = "auto"
    """Prompt-cache TTL of the session's breakpoints. "5m": always 5 minutes (writes
    1.25× the input price). "1h": always 1 hour (writes 2×). "auto": 5 minutes, and 1 hour
    for a call when the session's measured human waits make it cheaper (`cache_ttl`
    module: a wait over 5 minutes otherwise costs the next call a full re-write)."""
    cache_wait_threshold_s: float = Field(default=300.0, ge=0, le=3600)
    """With `cache_ttl="auto"`: a human wait (or a gap between calls) at least this
    long, in workflow time, counts as outlasting the 5-minute cache. 300 s matches the
    API; tests that simulate long waits on the fake's cache clock set it lower."""
    handoff_note: bool = Field(default=True, strict=True)
    """At each handoff, ask the model once (one bounded turn, text only: a reply that
    calls a tool is no note, and its calls never run) for a short note to its successor:
    what it was doing, what it learned that no state tool recorded. The note is shown
    to the successor quoted in `<agent_note>`, as the predecessor's words, never as
    state, and is the first thing left out when the continuation prompt's budget is
    tight. Skipped when the turn would overflow the window (the
    pre-flight), after an overflow, or on any error or timeout: the handoff never waits
    on it. Its tokens go into the ledger (`TokenLedger.note_calls`)."""
    handoff_note_max_tokens: int = Field(default=400, ge=1, le=128_000)
    """`max_tokens` of the note turn (the note is cut to about 4 characters a token)."""
    handoff_note_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Time the note turn may take, retries included; then the handoff goes on without."""
    search_attributes: bool = True
    """Upsert the Agent* search attributes (they must be registered on the namespace)."""
    agent_type: str = Field(default="claude-agent", max_length=64)
    user: str = Field(default="", max_length=128)

    @model_validator(mode="after")
    def _thresholds(self) -> SessionConfig:
        if not self.warn_threshold < self.handoff_threshold:
            raise ValueError(
                f"warn_threshold ({self.warn_threshold}) must be below "
                f"handoff_threshold ({self.handoff_threshold})"
            )
        for level in CompressionLevel:
            if level not in self.level_budgets:
                raise ValueError(f"level_budgets: missing budget for level '{level.value}'")
            if self.level_budgets[level] < 50:
                raise ValueError(f"level_budgets[{level.value}] must be ≥ 50 tokens")
        if self.context_window is not None:
            shortfall = self.window_shortfall(self.context_window)
            if shortfall:
                raise ValueError(shortfall)
        for field in ("model", "successor_model"):
            model = getattr(self, field)
            limit = max_output_tokens(model) if model else None
            if limit is not None and self.max_tokens > limit:
                # The API would reject every call (400), each one a human blocker.
                raise ValueError(
                    f"max_tokens: {self.max_tokens} > {limit}, the output limit of "
                    f"{field} {model}"
                )
            if limit is not None and self.handoff_note and self.handoff_note_max_tokens > limit:
                raise ValueError(
                    f"handoff_note_max_tokens: {self.handoff_note_max_tokens} > {limit}, the "
                    f"output limit of {field} {model}"
                )
        reserved = {"recall", *STATE_TOOL_NAMES}
        for tool in self.user_tools:
            if tool.name in reserved:
                raise ValueError(f"user_tools: {tool.name!r} is a built-in tool name")
        return self

    def fixed_prompt_tokens(self) -> int:
        """Rough tokens of what every call sends before the conversation: system prompt,
        tool definitions and the continuation prompt's budget (4 characters a token)."""
        tools = state_tool_specs() + list(self.user_tools)
        chars = len(self.system_prompt) + sum(len(json.dumps(t.wire())) for t in tools)
        return rough_tokens(chars) + self.level_budgets[self.compression_level]

    def window_shortfall(self, window: int) -> str | None:
        """Why a window of `window` tokens cannot run this session, or None if it can.

        The handoff threshold must leave room for the fixed prompt and one turn;
        otherwise every generation would hand off before its first call."""
        usable = int(self.handoff_threshold * window)
        need = self.fixed_prompt_tokens() + TURN_RESERVE_TOKENS
        if need <= usable:
            return None
        return (
            f"context_window: {window} tokens × handoff_threshold {self.handoff_threshold} "
            f"= {usable} usable, but system prompt + tools + continuation-prompt budget "
            f"({self.fixed_prompt_tokens()}) + one turn ({TURN_RESERVE_TOKENS}) need {need}"
        )

    def max_tokens_shortfall(self, output_limit: int | None, model: str = "") -> str | None:
        """Why the API would refuse every call's `max_tokens`, or None: above the model's
        output limit."""
        name = f"{model}'s" if model else "the model's"
        if output_limit is not None and self.max_tokens > output_limit:
            return (
                f"max_tokens: {self.max_tokens} is above {name} output limit of "
                f"{output_limit} tokens (Models API)"
            )
        return None

    def max_tokens_room(self, window: int) -> int:
        """The largest `max_tokens` that fits in `window` beside the fixed prompt and one
        turn (at least 1)."""
        return max(1, window - self.fixed_prompt_tokens() - TURN_RESERVE_TOKENS)

    def model_for(self, generation: int) -> str:
        if generation > 0 and self.successor_model:
            return self.successor_model
        return self.model
