"""Which prompt-cache TTL a model call asks for: 5 minutes, or 1 hour when it pays.

Anthropic bills a cache write 1.25× the base input price with the 5-minute TTL and 2×
with the 1-hour TTL, a read 0.1×; a read refreshes the entry's TTL. A session that waits
for a human longer than 5 minutes (AWAITING_DECISION, AWAITING_INPUT, PAUSED) loses its
5-minute entries, so the call after the wait writes the whole prompt again at 1.25×
instead of reading it at 0.1×. Writing the call before the wait with the 1-hour TTL
avoids that, but the call cannot know a wait will follow.

The policy (``SessionConfig.cache_ttl="auto"``) bets on the session's own record: from
the human waits it measured (workflow time) it estimates ``p``, the chance that a call
is followed by a wait that outlasts the 5-minute cache, and asks for 1 h when

    p × prefix × (1.25 − 0.1)  >  (2 − 1.25) × new

(expected saving on the next call vs. the extra paid now, in base-input-price token
units): ``prefix`` is this call's prompt, which the next call would read instead of
re-write; ``new`` is what this call writes (its prompt minus what is still cached).
``p = long_waits / (calls + 1)`` (a Beta(0, 1) prior: 0 until a long wait is seen), so
a session that never waited long calls exactly as with ``cache_ttl="5m"``.

Myopic on purpose (one call ahead) and pure: no I/O, no clock (the workflow passes the
numbers it measured with ``workflow.now()``), safe in workflow code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from temporal_handoff.schemas.base import DurableModel

CacheTtl = Literal["5m", "1h"]
CacheTtlMode = Literal["5m", "1h", "auto"]

WRITE_5M = 1.25
"""5-minute cache write, × the base input price."""
WRITE_1H = 2.0
"""1-hour cache write, × the base input price."""
READ = 0.1
"""Cache read, × the base input price."""
TTL_1H_S = 3600.0
PRIOR_CALLS = 1
"""Pseudo-calls without a long wait in the estimate of ``p`` (the conservative prior)."""


class HumanWaits(DurableModel):
    """The session's human waits (pause, decision, input), measured in workflow time;
    carried across continue-as-new in the ledger."""

    waits: int = Field(default=0, ge=0)
    long_waits: int = Field(default=0, ge=0)
    """Waits at least ``SessionConfig.cache_wait_threshold_s`` long: they outlast the
    5-minute cache."""
    total_s: float = Field(default=0.0, ge=0)
    longest_s: float = Field(default=0.0, ge=0)

    def add(self, seconds: float, threshold_s: float) -> None:
        seconds = max(0.0, seconds)
        self.waits += 1
        self.long_waits += 1 if seconds >= threshold_s else 0
        self.total_s += seconds
        self.longest_s = max(self.longest_s, seconds)


def long_wait_probability(long_waits: int, calls: int) -> float:
    """The chance that a call is followed by a wait that outlasts the 5-minute cache:
    long waits per call so far, with one pseudo-call without one (0 before any)."""
    return min(1.0, max(0, long_waits) / (max(0, calls) + PRIOR_CALLS))


@dataclass(frozen=True)
class TtlChoice:
    """One call's TTL and the figures it was chosen on (shown in its activity summary)."""

    ttl: CacheTtl
    mode: CacheTtlMode
    p: float = 0.0
    prefix_tokens: int = 0
    new_tokens: int = 0

    @property
    def saving(self) -> float:
        """Expected saving on the next call, in base-input-price tokens."""
        return self.p * self.prefix_tokens * (WRITE_5M - READ)

    @property
    def extra(self) -> float:
        """What the 1-hour TTL costs more on this call, in base-input-price tokens."""
        return (WRITE_1H - WRITE_5M) * self.new_tokens

    def summary(self) -> str:
        if self.mode != "auto":
            return f"cache {self.ttl}"
        return (
            f"cache {self.ttl} (auto: p={self.p:.2f}, saving ~{self.saving:,.0f} vs extra "
            f"~{self.extra:,.0f} input-token eq.)"
        )


def choose_ttl(mode: CacheTtlMode, p: float, prefix_tokens: int, new_tokens: int) -> TtlChoice:
    """The TTL for one call: fixed by ``mode``, or (``auto``) 1 h only when the expected
    saving beats the extra cost (``p`` 0: always 5 min)."""
    prefix, new = max(0, prefix_tokens), max(0, min(new_tokens, prefix_tokens))
    if mode != "auto":
        return TtlChoice(ttl=mode, mode=mode, prefix_tokens=prefix, new_tokens=new)
    choice = TtlChoice(ttl="5m", mode=mode, p=p, prefix_tokens=prefix, new_tokens=new)
    if p > 0 and choice.saving > choice.extra:
        return TtlChoice(ttl="1h", mode=mode, p=p, prefix_tokens=prefix, new_tokens=new)
    return choice


def still_cached(ttl: CacheTtl, seconds_since: float, threshold_s: float) -> bool:
    """Whether the previous call's prefix is still in the cache ``seconds_since`` after
    it (the 5-minute TTL as the workflow measures it: ``threshold_s``)."""
    return seconds_since < (TTL_1H_S if ttl == "1h" else threshold_s)
