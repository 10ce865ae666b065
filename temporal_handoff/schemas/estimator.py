"""The one estimator of context occupancy: how many tokens new content adds to a prompt.

Occupancy itself is exact (the last call's usage, see `tokens.TokenLedger`); what is
estimated is the content appended since. Claude's counts are not a ratio of any
local count: every message has a frame, the first call of a context also pays for
the tool definitions and the API's tool-use system prompt, and the tokenizer's ratio
to tiktoken depends on the text (prose, code, JSON). So the estimate is a per-model
fit, learned from every call's usage by least squares with a weak prior::

    new tokens ≈ per_unit × units + per_message × messages + whole_prompt × [first call]

``units`` are offline tiktoken tokens in activities (`TokenFit` with ``unit="tiktoken"``)
and characters in workflow code, which may not run tiktoken (``unit="chars"``): the same
fit, learned from the same calls, on two measures of the same text. Nothing here does
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
from typing import Literal

from pydantic import Field

from temporal_handoff.schemas.base import DurableModel

__all__ = [
    "COUNT_TOKENS_MARGIN",
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

_PRIOR = {
    # unit: (per_unit, per_message, whole_prompt) and the weight of each prior row.
    # Weak: a few calls' worth of samples outweigh it.
    "tiktoken": ((1.0, 4.0, 0.0), (1_000.0, 0.3, 0.1)),
    "chars": ((0.25, 4.0, 0.0), (4_000.0, 0.3, 0.1)),
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
    chars: int = Field(default=0, ge=0)
    messages: int = Field(default=0, ge=0)
    whole: bool = False
    """The whole prompt (first call of a context: system, tools and all messages)."""


class TokenFit(DurableModel):
    """Least-squares fit of observed new tokens on (units, messages, whole prompt).

    Sufficient statistics only (XᵀX and Xᵀy with the prior's rows added when solved),
    so adding a sample is O(1) and the state stays 13 numbers.
    """

    unit: Literal["tiktoken", "chars"] = "tiktoken"
    samples: int = 0
    xx: list[float] = Field(default_factory=lambda: [0.0] * 9)
    xy: list[float] = Field(default_factory=lambda: [0.0] * 3)

    def add(self, units: int, messages: int, whole: bool, observed: int) -> None:
        x = (float(units), float(messages), 1.0 if whole else 0.0)
        for i in range(3):
            self.xy[i] += x[i] * observed
            for j in range(3):
                self.xx[3 * i + j] += x[i] * x[j]
        self.samples += 1

    def coefficients(self) -> tuple[float, float, float]:
        """(per_unit, per_message, whole_prompt): the fit with the prior's rows."""
        prior, weight = _PRIOR[self.unit]
        a = [self.xx[3 * i : 3 * i + 3] + [self.xy[i]] for i in range(3)]
        for i in range(3):
            # A prior row: x = weight·e_i, y = weight·prior_i.
            a[i][i] += weight[i] ** 2
            a[i][3] += weight[i] ** 2 * prior[i]
        solved = _solve3(a)
        return solved if solved is not None else prior

    def tokens(self, units: int, messages: int = 0, whole: bool = False) -> int:
        """Estimated tokens of new content (rounded up; never below zero)."""
        if units <= 0 and messages <= 0:
            return 0
        per_unit, per_message, fixed = self.coefficients()
        value = per_unit * units + per_message * messages + (fixed if whole else 0.0)
        return max(0, math.ceil(value - 1e-9))


class ModelFit(DurableModel):
    """One model's fits: on tiktoken tokens (activities) and on characters (workflow)."""

    tiktoken: TokenFit = Field(default_factory=lambda: TokenFit(unit="tiktoken"))
    chars: TokenFit = Field(default_factory=lambda: TokenFit(unit="chars"))

    def add(self, new: NewContent, observed: int) -> None:
        """Teach both fits one call: `new` content turned out to be `observed` tokens."""
        self.tiktoken.add(new.tokens, new.messages, new.whole, observed)
        self.chars.add(new.chars, new.messages, new.whole, observed)

    def estimate(self, new: NewContent) -> int:
        """Tokens of `new` content from its tiktoken count."""
        return self.tiktoken.tokens(new.tokens, new.messages, new.whole)

    def estimate_chars(self, chars: int, messages: int = 1) -> int:
        """Tokens of new content from its length alone (workflow code)."""
        return self.chars.tokens(chars, messages)


class Preflight(DurableModel):
    """What the estimate says about sending a prompt under `limit` tokens."""

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


def _solve3(a: list[list[float]]) -> tuple[float, float, float] | None:
    """Gaussian elimination with partial pivoting on a 3×4 augmented matrix."""
    m = [row[:] for row in a]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(3):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, 4):
                    m[r][c] -= f * m[col][c]
    return (m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2])
