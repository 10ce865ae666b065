"""The one estimator of context occupancy: how many tokens new content adds to a prompt.

Occupancy itself is exact (the last call's usage, see `tokens.TokenLedger`); what is
estimated is the content appended since. Claude's counts are not a ratio of any
local count: every message has a frame, the first call of a context also pays for
the tool definitions and the API's tool-use system prompt, and the tokenizer's ratio
to tiktoken depends on the text (prose, code, JSON). So the estimate is a per-model
fit, learned from every call's usage by least squares with a weak prior::

    new tokens ≈ a × plain tokens + b × dense tokens + c × messages + d × [first call]

In activities the units are offline tiktoken tokens, split by line density: lines with
few characters per token (code, JSON, tables) are counted apart, since Claude's
tokenizer departs from tiktoken most on them (`TokenFit` with ``unit="tiktoken"``).
Workflow code may not run tiktoken: it uses the same kind of fit on characters
(``unit="chars"``), learned from the same calls. Nothing here does
I/O; it is plain arithmetic on numbers that activities measured, so workflow code may
use it (the fit is part of the ledger, in history).

The pre-flight (`preflight`) decides from the estimate when it is clearly under or
over the limit, and asks for the exact count (the API's ``count_tokens``, in the
activity) when the limit lies within the estimate's uncertainty: new content can
count `NEW_CONTENT_UNCERTAINTY` more or less than the fit says (a tool result of JSON
after a conversation of prose), and the exact count itself is an estimate within a few
percent (`COUNT_TOKENS_MARGIN`).

Tokenizer-free fallbacks for places with no fit at all (sizing a config before any
call, a document rendered in pure code) live here too: `approx_tokens`, `rough_tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from temporal_handoff.schemas.base import DurableModel

__all__ = [
    "COUNT_TOKENS_MARGIN",
    "DENSE_CHARS_PER_TOKEN",
    "NEAR_LIMIT_FRACTION",
    "NEW_CONTENT_UNCERTAINTY",
    "ModelFit",
    "NewContent",
    "Preflight",
    "TokenFit",
    "approx_tokens",
    "counted_fits",
    "preflight",
    "ratio",
    "rough_tokens",
]

NEW_CONTENT_UNCERTAINTY = 0.35
"""How far (relative) the tokens of new content may be from the fit's estimate: real
tokenizers differ from tiktoken by up to about a third between prose and code/JSON."""
NEAR_LIMIT_FRACTION = 0.02
"""An estimate within this fraction of the limit is always checked with an exact count."""
COUNT_TOKENS_MARGIN = 0.02
"""``count_tokens`` is itself an estimate ("may differ by a small amount"): a counted
prompt is taken to be up to this much larger."""

_PRIOR: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # unit: the prior coefficients and the weight of each prior row. Weak: a few
    # calls' worth of samples outweigh it. tiktoken features: plain tokens, dense
    # tokens, messages, whole prompt; chars features: chars, messages, whole prompt.
    "tiktoken": ((1.0, 1.2, 4.0, 0.0), (100.0, 100.0, 0.3, 0.01)),
    "chars": ((0.25, 4.0, 0.0), (400.0, 0.3, 0.01)),
}


def approx_tokens(text: str) -> int:
    """A tokenizer-free upper-ish estimate (≈ 3.5 characters per token), for pure code
    with no fit to use (documents rendered without the activity's tokenizer)."""
    return math.ceil(len(text) / 3.5) if text else 0


def rough_tokens(chars: int) -> int:
    """Four characters a token: sizing a configuration before any call was made."""
    return chars // 4


def ratio(estimated_sum: int, observed_sum: int) -> float:
    """The ratio-only calibration (observed / estimated; 1.0 until seen). Sessions
    recorded before the fit replay with it; documents still scale by it."""
    if estimated_sum <= 0 or observed_sum <= 0:
        return 1.0
    return observed_sum / estimated_sum


class NewContent(DurableModel):
    """What an activity measured of the content new in one call's prompt."""

    tokens: int = Field(default=0, ge=0)
    """Offline tiktoken count."""
    dense_tokens: int = Field(default=0, ge=0)
    """Of `tokens`, those on dense lines (fewer than `DENSE_CHARS_PER_TOKEN` characters
    a token: code, JSON, tables), which Claude's tokenizer counts differently."""
    chars: int = Field(default=0, ge=0)
    messages: int = Field(default=0, ge=0)
    whole: bool = False
    """The whole prompt (first call of a context: system, tools and all messages)."""

    def features(self, unit: str) -> tuple[float, ...]:
        whole = 1.0 if self.whole else 0.0
        if unit == "chars":
            return (float(self.chars), float(self.messages), whole)
        dense = min(self.dense_tokens, self.tokens)
        return (float(self.tokens - dense), float(dense), float(self.messages), whole)


DENSE_CHARS_PER_TOKEN = 3.8
"""Lines with fewer characters per tiktoken token are dense (code, JSON, markup)."""


class TokenFit(DurableModel):
    """Least-squares fit of observed new tokens on the content's features.

    Sufficient statistics only (XᵀX and Xᵀy; the prior's rows are added when solved),
    so adding a sample is O(1) and the state stays a few dozen numbers.
    """

    unit: Literal["tiktoken", "chars"] = "tiktoken"
    samples: int = 0
    xx: list[float] = Field(default_factory=list)
    xy: list[float] = Field(default_factory=list)

    def _size(self) -> int:
        return len(_PRIOR[self.unit][0])

    def add_features(self, x: tuple[float, ...], observed: int) -> None:
        n = self._size()
        if len(self.xy) != n:
            self.xx, self.xy = [0.0] * (n * n), [0.0] * n
        for i in range(n):
            self.xy[i] += x[i] * observed
            for j in range(n):
                self.xx[n * i + j] += x[i] * x[j]
        self.samples += 1

    def add(self, new: NewContent, observed: int) -> None:
        self.add_features(new.features(self.unit), observed)

    def coefficients(self) -> tuple[float, ...]:
        """The fit's coefficients, with the prior's rows (prior alone before samples)."""
        prior, weight = _PRIOR[self.unit]
        n = len(prior)
        xx = self.xx if len(self.xy) == n else [0.0] * (n * n)
        xy = self.xy if len(self.xy) == n else [0.0] * n
        a = [xx[n * i : n * i + n] + [xy[i]] for i in range(n)]
        for i in range(n):
            # A prior row: x = weight·e_i, y = weight·prior_i.
            a[i][i] += weight[i] ** 2
            a[i][n] += weight[i] ** 2 * prior[i]
        solved = _solve(a)
        return solved if solved is not None else prior

    def tokens(self, new: NewContent) -> int:
        """Estimated tokens of new content (rounded up; never below zero)."""
        x = new.features(self.unit)
        if not any(x):
            return 0
        value = sum(c * v for c, v in zip(self.coefficients(), x, strict=True))
        return max(0, math.ceil(value - 1e-9))


class ModelFit(DurableModel):
    """One model's fits: on tiktoken tokens (activities) and on characters (workflow)."""

    tiktoken: TokenFit = Field(default_factory=lambda: TokenFit(unit="tiktoken"))
    chars: TokenFit = Field(default_factory=lambda: TokenFit(unit="chars"))

    def add(self, new: NewContent, observed: int) -> None:
        """Teach both fits one call: `new` content turned out to be `observed` tokens."""
        self.tiktoken.add(new, observed)
        self.chars.add(new, observed)

    def estimate(self, new: NewContent) -> int:
        """Tokens of `new` content from its tiktoken counts."""
        return self.tiktoken.tokens(new)

    def estimate_chars(self, chars: int, messages: int = 1) -> int:
        """Tokens of new content from its length alone (workflow code)."""
        return self.chars.tokens(NewContent(chars=chars, messages=messages))


@dataclass(frozen=True)
class Preflight:
    """What the estimate says about sending a prompt under `limit` tokens (computed in
    the activity, never stored)."""

    estimate: int
    """Known occupancy plus the fit's estimate of the new content."""
    low: int
    high: int
    """The range the prompt's real count may lie in."""
    decision: Literal["send", "refuse", "count"]
    """`count`: the limit lies within the range; ask for the exact count."""


def preflight(known: int, new_estimate: int, limit: int) -> Preflight:
    """Decide from the estimate, or ask for the exact count when the limit is near.

    Args:
        known: Exact tokens already in the prompt (the previous call's prompt + output).
        new_estimate: The fit's estimate of the content added since.
        limit: The largest prompt that may be sent (handoff threshold and room for
            ``max_tokens`` taken off the window).
    """
    estimate = known + new_estimate
    spread = max(math.ceil(NEW_CONTENT_UNCERTAINTY * new_estimate),
                 math.ceil(NEAR_LIMIT_FRACTION * limit))
    low, high = estimate - spread, estimate + spread
    if high < limit:
        decision: Literal["send", "refuse", "count"] = "send"
    elif low > limit:
        decision = "refuse"
    else:
        decision = "count"
    return Preflight(estimate=estimate, low=max(0, low), high=high, decision=decision)


def counted_fits(counted: int, limit: int) -> bool:
    """Whether a prompt that `count_tokens` put at `counted` may be sent under `limit`."""
    return math.ceil(counted * (1 + COUNT_TOKENS_MARGIN)) <= limit


def _solve(a: list[list[float]]) -> tuple[float, ...] | None:
    """Gaussian elimination with partial pivoting on an n×(n+1) augmented matrix."""
    m = [row[:] for row in a]
    n = len(m)
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, n + 1):
                    m[r][c] -= f * m[col][c]
    return tuple(m[i][n] / m[i][i] for i in range(n))
