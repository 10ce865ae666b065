"""Token accounting: exact usage per call, context occupancy, cumulative spend.

Two numbers that the naive approach conflates:

* **occupancy** — the size of the prompt the *next* call will send. It is the last
  call's ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens +
  output_tokens`` (the whole previous prompt plus the reply now appended to it), plus
  an estimate of whatever the session appends before the next call.
* **spend** — the sum over calls, per field, priced per model.
  Prompt-cache tokens are priced as Anthropic bills them: a write costs 1.25× the
  base input price with the 5-minute TTL and 2× with the 1-hour TTL, a read 0.1×.
* **billed** — spend plus the usage of answers the API gave whose activity result was
  then lost (worker killed after the answer, start-to-close timeout, a failed or
  abandoned retry): Anthropic bills them, the conversation never saw them. They are a
  separate line (``lost_*``) so occupancy and calibration stay about the conversation.
  Budgets are checked against the billed totals.

Pure data and arithmetic: safe in workflow code.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from temporal_handoff.schemas.base import DurableModel
from temporal_handoff.schemas.cache_ttl import HumanWaits
from temporal_handoff.schemas.estimator import ModelFit, NewContent, ratio
from temporal_handoff.schemas.lifecycle import LifecycleState

USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class TokenUsage(DurableModel):
    """The four usage fields the Messages API reports for one call."""

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_creation_input_tokens: int = Field(default=0, ge=0)
    cache_read_input_tokens: int = Field(default=0, ge=0)
    cache_creation_1h_input_tokens: int = Field(default=0, ge=0)
    """Of ``cache_creation_input_tokens``, those written with the 1-hour TTL (usage
    ``cache_creation.ephemeral_1h_input_tokens``); the rest had the 5-minute TTL."""

    @property
    def prompt_tokens(self) -> int:
        """All tokens of the prompt this call sent (cached or not)."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total(self) -> int:
        """Prompt plus output: the context occupied once the reply is appended."""
        return self.prompt_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        fields = (*USAGE_FIELDS, "cache_creation_1h_input_tokens")
        return TokenUsage(**{f: getattr(self, f) + getattr(other, f) for f in fields})


class ModelPrice(DurableModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True)

    input: float
    output: float
    cache_write: float
    """5-minute cache write: 1.25× ``input``."""
    cache_read: float
    """Cache read: 0.1× ``input``."""

    @property
    def cache_write_1h(self) -> float:
        """1-hour cache write: 2× the base input price."""
        return 2 * self.input


# Public list prices, USD per MTok (base input, output, 5-minute cache write, cache read).
PRICES: dict[str, ModelPrice] = {
    "claude-opus-4": ModelPrice(input=15.0, output=75.0, cache_write=18.75, cache_read=1.5),
    "claude-opus-4-1": ModelPrice(input=15.0, output=75.0, cache_write=18.75, cache_read=1.5),
    "claude-opus-4-5": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-sonnet-4": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-opus-4-6": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
    "claude-3-5-haiku": ModelPrice(input=0.8, output=4.0, cache_write=1.0, cache_read=0.08),
}
DEFAULT_PRICE = PRICES["claude-sonnet-4-6"]
"""Models missing from the table are priced as Sonnet (say so in reports)."""

# Context windows (input tokens) used when the Models API is unreachable.
CONTEXT_WINDOWS: dict[str, int] = {
    "claude-opus-4": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-opus-4-5": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-sonnet-4-6": 1_000_000,
    "claude-opus-4-6": 1_000_000,
    "claude-haiku-4-5": 200_000,
    "claude-3-5-haiku": 200_000,
}
DEFAULT_CONTEXT_WINDOW = 200_000

# Largest `max_tokens` the API accepts per model (published output limits); above it
# the API answers 400 "max_tokens: N > M, which is the maximum allowed number of output
# tokens for <model>". Unknown models are not checked.
MAX_OUTPUT_TOKENS: dict[str, int] = {
    "claude-opus-4": 32_000,
    "claude-opus-4-1": 32_000,
    "claude-opus-4-5": 64_000,
    "claude-sonnet-4": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-sonnet-4-6": 128_000,
    "claude-opus-4-6": 128_000,
    "claude-haiku-4-5": 64_000,
    "claude-3-5-haiku": 8_192,
}


def _lookup(table: dict[str, object], model: str) -> object | None:
    """Longest table key that prefixes the model id (ids carry date suffixes)."""
    best = None
    for key in table:
        if model == key or model.startswith(key + "-"):
            if best is None or len(key) > len(best):
                best = key
    return table[best] if best is not None else None


def price_for(model: str) -> ModelPrice:
    """The price row for a model id, falling back to Sonnet pricing."""
    found = _lookup(PRICES, model)  # type: ignore[arg-type]
    return found if isinstance(found, ModelPrice) else DEFAULT_PRICE


def fallback_context_window(model: str) -> int:
    """Context window from the built-in table."""
    found = _lookup(CONTEXT_WINDOWS, model)  # type: ignore[arg-type]
    return found if isinstance(found, int) else DEFAULT_CONTEXT_WINDOW


def max_output_tokens(model: str) -> int | None:
    """The model's `max_tokens` limit from the built-in table (None if unknown)."""
    found = _lookup(MAX_OUTPUT_TOKENS, model)  # type: ignore[arg-type]
    return found if isinstance(found, int) else None


def usage_cost_usd(usage: TokenUsage, model: str) -> float:
    """USD for one call's usage at the model's list price."""
    p = price_for(model)
    hour = min(usage.cache_creation_1h_input_tokens, usage.cache_creation_input_tokens)
    return (
        usage.input_tokens * p.input
        + usage.output_tokens * p.output
        + (usage.cache_creation_input_tokens - hour) * p.cache_write
        + hour * p.cache_write_1h
        + usage.cache_read_input_tokens * p.cache_read
    ) / 1_000_000


COST_KINDS = ("input", "output", "cache_write", "cache_read")
"""What `usage_cost_by_kind` splits a call's cost into."""


def usage_cost_by_kind(usage: TokenUsage, model: str) -> dict[str, float]:
    """USD per kind of token for one call (sums to `usage_cost_usd`, up to rounding)."""
    p = price_for(model)
    hour = min(usage.cache_creation_1h_input_tokens, usage.cache_creation_input_tokens)
    return {
        "input": usage.input_tokens * p.input / 1_000_000,
        "output": usage.output_tokens * p.output / 1_000_000,
        "cache_write": (
            (usage.cache_creation_input_tokens - hour) * p.cache_write + hour * p.cache_write_1h
        )
        / 1_000_000,
        "cache_read": usage.cache_read_input_tokens * p.cache_read / 1_000_000,
    }


ERROR_BUCKETS = 100
"""Pre-flight error histogram: tenths of a percent up to 10 %, then one bucket."""


class FieldStats(DurableModel):
    """min/max/sum of one usage field over calls."""

    total: int = 0
    min: int | None = None
    max: int | None = None

    def add(self, value: int) -> None:
        self.total += value
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)


class TokenLedger(DurableModel):
    """Occupancy of the current context plus cumulative spend over all generations.

    ``occupancy``/``pending_estimate`` describe the current generation's context and
    are reset at each handoff; everything else is carried across continue-as-new.
    """

    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0)
    output_limit: int | None = None
    """The model's largest `max_tokens` (Models API), None if unknown."""
    occupancy: int = Field(default=0, ge=0)
    """Exact prompt size as of the last call: its prompt tokens plus its output."""
    pending_estimate: int = Field(default=0, ge=0)
    """Calibrated estimate of content appended since the last call."""
    calls: int = 0
    calls_this_generation: int = 0
    zero_call_generations: int = 0
    """How many generations in a row, up to this one's predecessor, ended without
    progress: no model call (its first call did not fit) or no reply kept (every reply
    cut at `max_tokens`)."""
    replies_kept_this_generation: int | None = None
    """Replies of this generation kept in the conversation (a reply cut at `max_tokens`
    is not); None in ledgers from before it was counted."""
    note_calls: int = 0
    """Of `calls`, the handoff-note turns (`SessionConfig.handoff_note`): one per handoff
    at most; their usage is in the spend, not in any context's occupancy."""
    stats: dict[str, FieldStats] = Field(
        default_factory=lambda: {f: FieldStats() for f in USAGE_FIELDS}
    )
    cost_usd: float = 0.0
    cost_by_kind: dict[str, float] = Field(default_factory=dict)
    """USD per kind of token (`COST_KINDS`); sessions recorded before it start empty."""
    cache_write_1h_tokens: int = 0
    """Cache writes with the 1-hour TTL (part of the cache_creation stats)."""
    estimated_sum: int = 0
    """Sum of raw tiktoken estimates for content later measured exactly."""
    observed_sum: int = 0
    """Sum of exact token counts for that same content."""
    last_prompt_tokens: int = 0
    peak_prompt_tokens: int = 0
    lost_usage: TokenUsage = Field(default_factory=TokenUsage)
    """Usage of answers billed but never used (their activity result was lost)."""
    lost_answers: int = 0
    lost_cost_usd: float = 0.0
    fits: dict[str, ModelFit] = Field(default_factory=dict)
    """The occupancy estimator's fit per model (`estimator`), learned from every call."""
    preflight_errors: list[int] = Field(default_factory=list)
    """Histogram of the pre-flight's relative error (|estimate - prompt| / prompt) per
    call, before any exact count: bucket i holds errors in [i, i+1) tenths of a percent,
    the last bucket everything from `ERROR_BUCKETS` tenths up."""
    exact_counts: int = 0
    """Pre-flights that asked the API for the exact count (near the limit)."""
    uncalibrated_calls: int = 0
    """Calls estimated before the model's fit had learned anything (not in
    `preflight_errors`)."""
    human_waits: HumanWaits = Field(default_factory=HumanWaits)
    """The session's human waits, measured in workflow time (the `cache_ttl` policy's
    evidence)."""
    cache_ttl_calls: dict[str, int] = Field(default_factory=dict)
    """Calls per prompt-cache TTL the policy chose ("5m", "1h"); empty for sessions
    recorded before it."""

    # ---- derived ----------------------------------------------------------------
    @property
    def calibration(self) -> float:
        """Observed / estimated tokens, the ratio-only calibration (1.0 until seen)."""
        return ratio(self.estimated_sum, self.observed_sum)

    def fit_for(self, model: str) -> ModelFit:
        """The estimator's fit for `model` (a fresh prior if none was learned yet)."""
        return self.fits.get(model) or ModelFit()

    def preflight_error_percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) of the pre-flight's relative error, as the upper
        edge of its histogram bucket (None before any call)."""
        total = sum(self.preflight_errors)
        if total == 0:
            return None
        need = q / 100 * total
        seen = 0
        for i, n in enumerate(self.preflight_errors):
            seen += n
            if seen >= need and n:
                return (i + 1) / 1000
        return len(self.preflight_errors) / 1000

    @property
    def next_prompt_tokens(self) -> int:
        """Best estimate of the next prompt: exact occupancy + calibrated pending content."""
        return self.occupancy + self.pending_estimate

    @property
    def remaining(self) -> int:
        return max(0, self.context_window - self.next_prompt_tokens)

    @property
    def usage_fraction(self) -> float:
        return self.next_prompt_tokens / self.context_window

    @property
    def total_tokens(self) -> int:
        return sum(s.total for s in self.stats.values())

    @property
    def billed_tokens(self) -> int:
        """Every token Anthropic bills: used calls plus lost answers (for budgets)."""
        return self.total_tokens + self.lost_usage.total

    @property
    def billed_cost_usd(self) -> float:
        return self.cost_usd + self.lost_cost_usd

    def billed_usage(self) -> TokenUsage:
        """Per-field sums of everything billed (used calls plus lost answers)."""
        used = TokenUsage(
            **{f: self.stats[f].total for f in USAGE_FIELDS},
            cache_creation_1h_input_tokens=self.cache_write_1h_tokens,
        )
        return used + self.lost_usage

    def field_total(self, field: str) -> int:
        return self.stats[field].total

    @property
    def cache_read_fraction(self) -> float:
        """Share of all prompt tokens (input + cache writes + reads) read from cache."""
        prompt = sum(
            self.stats[f].total
            for f in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return self.stats["cache_read_input_tokens"].total / prompt if prompt else 0.0

    @property
    def prompt_cost_usd(self) -> float:
        """USD spent on prompt tokens: plain input, cache writes and cache reads."""
        return sum(self.cost_by_kind.get(k, 0.0) for k in ("input", "cache_write", "cache_read"))

    def average(self, field: str) -> float:
        return self.stats[field].total / self.calls if self.calls else 0.0

    def state_for(self, warn: float, handoff: float) -> LifecycleState:
        """The lifecycle state that the current occupancy implies."""
        frac = self.usage_fraction
        if frac >= handoff:
            return LifecycleState.CRITICAL
        if frac >= warn:
            return LifecycleState.WARNING
        return LifecycleState.ACTIVE

    # ---- updates ----------------------------------------------------------------
    def record(
        self,
        usage: TokenUsage,
        model: str,
        estimated_new_tokens: int = 0,
        new: NewContent | None = None,
        estimated_prompt: int | None = None,
        exact_count: bool = False,
    ) -> None:
        """Add one completed call: exact occupancy, spend, and calibration sample.

        ``estimated_new_tokens`` is the raw tiktoken estimate of content that was new
        in this call's prompt; its exact size is this prompt minus the previous
        occupancy, which teaches the calibration factor. ``new`` (what the activity
        measured of that content) teaches the model's fit; ``estimated_prompt`` (the
        pre-flight's estimate of the whole prompt) goes into the error histogram.
        """
        prompt = usage.prompt_tokens
        if estimated_new_tokens > 0 and prompt > self.occupancy:
            self.estimated_sum += estimated_new_tokens
            self.observed_sum += prompt - self.occupancy
        calibrated = model in self.fits
        if new is not None and prompt > 0:
            observed = prompt if new.whole else prompt - self.occupancy
            if observed >= 0:
                self.fits.setdefault(model, ModelFit()).add(new, observed)
        if estimated_prompt is not None and prompt > 0:
            self.exact_counts += 1 if exact_count else 0
            if not calibrated:
                self.uncalibrated_calls += 1
            else:
                if not self.preflight_errors:
                    self.preflight_errors = [0] * (ERROR_BUCKETS + 1)
                err = abs(estimated_prompt - prompt) / prompt
                self.preflight_errors[min(ERROR_BUCKETS, int(err * 1000))] += 1
        self.occupancy = usage.total
        self.pending_estimate = 0
        self.last_prompt_tokens = prompt
        self.peak_prompt_tokens = max(self.peak_prompt_tokens, prompt)
        self.calls += 1
        self.calls_this_generation += 1
        self._add_spend(usage, model)

    def _add_spend(self, usage: TokenUsage, model: str) -> None:
        """A used call's usage into the per-field stats, USD and 1-hour cache writes."""
        for f in USAGE_FIELDS:
            self.stats[f].add(getattr(usage, f))
        self.cost_usd += usage_cost_usd(usage, model)
        for kind, usd in usage_cost_by_kind(usage, model).items():
            self.cost_by_kind[kind] = self.cost_by_kind.get(kind, 0.0) + usd
        self.cache_write_1h_tokens += usage.cache_creation_1h_input_tokens

    def record_note(self, usage: TokenUsage, model: str) -> None:
        """Add a handoff-note turn: a call (spend, counts) whose prompt and answer stay
        out of every context, so occupancy and the estimator's fit are left alone."""
        self.calls += 1
        self.calls_this_generation += 1
        self.note_calls += 1
        self.peak_prompt_tokens = max(self.peak_prompt_tokens, usage.prompt_tokens)
        self._add_spend(usage, model)

    def record_lost(self, usage: TokenUsage, model: str, answers: int = 1) -> None:
        """Add answers billed but lost: spend only, no occupancy or calibration."""
        if usage.total == 0:
            return
        self.lost_usage = self.lost_usage + usage
        self.lost_answers += answers
        self.lost_cost_usd += usage_cost_usd(usage, model)

    def add_pending(self, raw_estimate: int) -> None:
        """Account for appended content (tool results, human text) before the next call."""
        self.pending_estimate += int(raw_estimate * self.calibration + 0.999)

    def new_generation(self, context_window: int | None = None) -> TokenLedger:
        """A copy for the successor: spend and calibration kept, occupancy reset."""
        nxt = self.model_copy(deep=True)
        nxt.occupancy = 0
        nxt.pending_estimate = 0
        kept = self.replies_kept_this_generation
        progressed = self.calls_this_generation > 0 if kept is None else kept > 0
        nxt.zero_call_generations = 0 if progressed else self.zero_call_generations + 1
        nxt.replies_kept_this_generation = 0
        nxt.calls_this_generation = 0
        nxt.last_prompt_tokens = 0
        if context_window is not None:
            nxt.context_window = context_window
        return nxt
