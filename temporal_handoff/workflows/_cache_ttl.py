"""The session's prompt-cache TTL per model call (`schemas.cache_ttl`), workflow side.

Deterministic: times are `workflow.now()`; the session's human waits and the TTL calls
are recorded in the ledger (carried across continue-as-new). Sessions recorded before
the policy (patch `CACHE_TTL_PATCH`) send no TTL (the API's 5 minutes) and measure
nothing.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.cache_ttl import (
        CacheTtl,
        TtlChoice,
        choose_ttl,
        long_wait_probability,
        still_cached,
    )
    from temporal_handoff.schemas.config import SessionConfig
    from temporal_handoff.schemas.tokens import TokenLedger

CACHE_TTL_PATCH = "cache-ttl-auto-1"


class CacheTtlPolicy:
    """Chooses each call's TTL and remembers when the last call wrote the cache."""

    def __init__(self) -> None:
        self.last_at: datetime | None = None
        self.last_ttl: CacheTtl = "5m"
        self.pending: TtlChoice | None = None
        """The choice of the call in flight (None: policy off)."""

    @staticmethod
    def on() -> bool:
        return workflow.patched(CACHE_TTL_PATCH)

    def choose(
        self, cfg: SessionConfig, ledger: TokenLedger, fixed_tokens: int
    ) -> TtlChoice | None:
        """The next call's TTL (None for sessions recorded before the policy)."""
        if not self.on():
            self.pending = None
            return None
        prefix = max(ledger.next_prompt_tokens, fixed_tokens)
        cached = 0
        if self.last_at is not None and ledger.last_prompt_tokens:
            since = (workflow.now() - self.last_at).total_seconds()
            if still_cached(self.last_ttl, since, cfg.cache_wait_threshold_s):
                cached = ledger.last_prompt_tokens
        p = long_wait_probability(ledger.human_waits.long_waits, ledger.calls)
        self.pending = choose_ttl(cfg.cache_ttl, p, prefix, prefix - cached)
        return self.pending

    def called(self, ledger: TokenLedger) -> None:
        """The call in flight was answered (and billed): its entries were written now."""
        choice, self.pending = self.pending, None
        if choice is None:
            return
        self.last_at, self.last_ttl = workflow.now(), choice.ttl
        ledger.cache_ttl_calls[choice.ttl] = ledger.cache_ttl_calls.get(choice.ttl, 0) + 1

    def waited(self, cfg: SessionConfig, ledger: TokenLedger, seconds: float) -> None:
        """A human wait (pause, decision, input) ended after `seconds` of workflow time."""
        if self.on():
            ledger.human_waits.add(seconds, cfg.cache_wait_threshold_s)
