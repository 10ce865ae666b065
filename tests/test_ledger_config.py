"""Token ledger semantics and config validation (pure, no server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import LifecycleState
from temporal_handoff.schemas.tokens import TokenLedger, TokenUsage, fallback_context_window


def test_three_calls_occupancy_differs_from_spend() -> None:
    ledger = TokenLedger(context_window=10_000)
    # Call 1: the whole first prompt is new; 500 tokens of it written to the cache.
    ledger.record(
        TokenUsage(input_tokens=1000, output_tokens=200, cache_creation_input_tokens=500),
        "claude-sonnet-4-5",
        estimated_new_tokens=1200,
    )
    assert ledger.occupancy == 1700
    # Call 2: previous prompt (1500, now cached) + reply (200) + 100 new tokens.
    ledger.record(
        TokenUsage(input_tokens=300, output_tokens=150, cache_read_input_tokens=1500),
        "claude-sonnet-4-5",
        estimated_new_tokens=80,
    )
    assert ledger.occupancy == 1950
    # Call 3: previous prompt 1800 cached + 150 reply + 100 new.
    ledger.record(
        TokenUsage(input_tokens=250, output_tokens=100, cache_read_input_tokens=1800),
        "claude-sonnet-4-5",
        estimated_new_tokens=80,
    )
    # Occupancy is the size of the next prompt, not a sum over calls.
    assert ledger.occupancy == 2050 + 100 == 2150
    assert ledger.total_tokens == 1550 + 450 + 500 + 3300 == 5800
    assert ledger.field_total("input_tokens") == 1550
    assert ledger.field_total("output_tokens") == 450
    assert ledger.field_total("cache_creation_input_tokens") == 500
    assert ledger.field_total("cache_read_input_tokens") == 3300
    assert ledger.stats["output_tokens"].min == 100
    assert ledger.stats["output_tokens"].max == 200
    assert ledger.average("output_tokens") == 150
    # $3 in, $15 out, $3.75 cache write, $0.30 cache read per MTok.
    assert ledger.cost_usd == pytest.approx((1550 * 3 + 450 * 15 + 500 * 3.75 + 3300 * 0.3) / 1e6)
    # Observed new content 1500 + 100 + 100 against estimates 1200 + 80 + 80.
    assert ledger.calibration == pytest.approx(1700 / 1360)
    assert ledger.remaining == 10_000 - 2150
    assert ledger.usage_fraction == pytest.approx(0.215)
    assert ledger.state_for(0.75, 0.9) == LifecycleState.ACTIVE


def test_pending_estimate_and_states() -> None:
    ledger = TokenLedger(context_window=1000)
    ledger.record(TokenUsage(input_tokens=700, output_tokens=50), "m", estimated_new_tokens=500)
    assert ledger.calibration == pytest.approx(1.4)
    assert ledger.state_for(0.75, 0.9) == LifecycleState.WARNING
    ledger.add_pending(100)  # 100 raw tiktoken tokens × 1.4
    assert ledger.next_prompt_tokens == 750 + 140
    assert ledger.state_for(0.75, 0.9) == LifecycleState.WARNING
    ledger.add_pending(10)
    assert ledger.state_for(0.75, 0.9) == LifecycleState.CRITICAL
    nxt = ledger.new_generation(2000)
    assert (nxt.occupancy, nxt.context_window, nxt.total_tokens) == (0, 2000, 750)
    assert nxt.calibration == pytest.approx(1.4)


def test_context_window_table() -> None:
    assert fallback_context_window("claude-sonnet-4-5-20250929") == 200_000
    assert fallback_context_window("unknown-model") == 200_000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"warn_threshold": 0.9, "handoff_threshold": 0.8}, "warn_threshold"),
        ({"warn_threshold": 0}, "warn_threshold"),
        ({"handoff_threshold": 1.5}, "handoff_threshold"),
        ({"max_generations": 0}, "max_generations"),
        ({"context_window": 10}, "context_window"),
        ({"compression_level": "tiny"}, "compression_level"),
        ({"token_budget": -1}, "token_budget"),
        ({"usd_budget": 0}, "usd_budget"),
        ({"model": ""}, "model"),
        ({"max_tokens": "lots"}, "max_tokens"),
        # Above the model's output limit: the API would answer every call with a 400.
        ({"model": "claude-sonnet-4-5", "max_tokens": 64_001}, "max_tokens"),
        ({"successor_model": "claude-haiku-4-5-20251001", "max_tokens": 100_000}, "max_tokens"),
        ({"level_budgets": {"minimal": 10, "standard": 1200, "full": 2000}}, "level_budgets"),
        # Strict: "yes" or 1 is a typo, not a switch.
        ({"progress_hints": "yes"}, "progress_hints"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    """As a human writes it (`handoff start --config`): every mistake names the field."""
    with pytest.raises(ValidationError) as info:
        validate_human(SessionConfig, kwargs)
    assert field in str(info.value)
    if field != "colour":
        with pytest.raises(ValidationError, match=field):
            SessionConfig(**kwargs)


def test_config_decoded_from_a_payload_ignores_unknown_fields() -> None:
    """A config carried in a newer worker's input keeps decoding on an older one."""
    cfg = SessionConfig.model_validate({"colour": "blue", "max_generations": 3})
    assert cfg.max_generations == 3 and "colour" not in cfg.model_dump()


def test_good_config_defaults() -> None:
    cfg = SessionConfig(successor_model="claude-haiku-4-5")
    assert (cfg.warn_threshold, cfg.handoff_threshold, cfg.max_generations) == (0.75, 0.9, 20)
    assert cfg.progress_hints is True
    assert cfg.model_for(0) == "claude-sonnet-4-6"
    assert cfg.model_for(3) == "claude-haiku-4-5"
