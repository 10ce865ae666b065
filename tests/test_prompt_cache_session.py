"""The session's prompt caching pays: a moving breakpoint on the conversation.

The fake Messages API caches per Anthropic's rules (`testing/fake_cache.py`), so these
figures are what the same requests would be billed on real Claude (list prices).
"""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import pytest
from temporalio.client import Client

from temporal_handoff.activities.cache_breakpoints import (
    MAX_BREAKPOINTS,
    count_breakpoints,
    with_conversation_breakpoints,
)
from temporal_handoff.activities.model_activity import _usage as activity_usage
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import SessionResult
from temporal_handoff.schemas.tokens import USAGE_FIELDS, TokenLedger, TokenUsage
from temporal_handoff.testing import EchoBrain, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import filler
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffOptions
from tests.conftest import running_worker
from tests.helpers import start_session

MODEL = "claude-sonnet-4-6"
WINDOW = 8_000


async def _run(client: Client, conversation_cache: bool) -> TokenLedger:
    """An 80-task session to completion; its ledger, checked against the fake's answers."""
    task_queue = f"tq-cache-{uuid.uuid4()}"
    brain = ScriptedAgentBrain(tasks_per_turn=2)
    with FakeAnthropicServer(brain=brain, context_windows={MODEL: WINDOW}) as fake:
        async with running_worker(
            client, task_queue, fake.base_url,
            options=HandoffOptions(conversation_cache=conversation_cache),
        ):
            handle = await start_session(
                client, task_queue, synthetic_project(80, 3), prefix="cache",
                model=MODEL, context_window=WINDOW, max_tokens=1024,
            )
            result: SessionResult = await handle.result()
        served = [r.usage for r in fake.message_requests() if r.status == 200 and r.usage]
    assert result.reason == TerminationReason.TASK_COMPLETED
    ledger = result.ledger
    for f in USAGE_FIELDS:
        assert ledger.field_total(f) == sum(u[f] for u in served), f
    return ledger


async def test_conversation_caching_pays(client: Client) -> None:
    cached = await _run(client, conversation_cache=True)
    uncached = await _run(client, conversation_cache=False)
    ratio = cached.prompt_cost_usd / uncached.prompt_cost_usd
    print(
        f"cache_read_fraction {cached.cache_read_fraction:.3f} (uncached "
        f"{uncached.cache_read_fraction:.3f}); prompt USD {cached.prompt_cost_usd:.4f} vs "
        f"{uncached.prompt_cost_usd:.4f} (ratio {ratio:.3f})"
    )
    assert cached.cache_read_fraction >= 0.80
    assert ratio <= 0.30
    # Same work, same prompts: only how they are billed differs.
    assert cached.calls == uncached.calls
    assert cached.cost_by_kind["cache_read"] > 0


def _tool_turn(turn: int, calls: int) -> list[dict[str, Any]]:
    """An assistant reply with `calls` parallel tool uses and the user's results."""
    uses = [
        {"type": "tool_use", "id": f"tu_{turn}_{i}", "name": "lookup", "input": {"q": i}}
        for i in range(calls)
    ]
    results = [
        {"type": "tool_result", "tool_use_id": u["id"], "content": filler(f"r{turn}{i}", 30)}
        for i, u in enumerate(uses)
    ]
    return [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]


def test_each_turn_reads_the_previous_prompt_even_after_many_tool_calls() -> None:
    system: Any = [
        {"type": "text", "text": filler("sys", 2500), "cache_control": {"type": "ephemeral"}}
    ]
    tools: Any = [{"name": "lookup", "description": "Look up.", "input_schema": {"type": "object"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Start."}]
    with FakeAnthropicServer(brain=EchoBrain(max_chars=20)) as fake:
        api = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
        previous = 0
        for turn in range(4):
            if turn:
                # 12 tool uses + 12 results: 24 blocks, past the ~20-block lookback.
                messages += _tool_turn(turn, 12)
            sent = with_conversation_breakpoints(messages, system, tools)
            assert count_breakpoints(system, tools, sent) <= MAX_BREAKPOINTS
            assert "cache_control" not in str(messages)  # the caller's messages untouched
            msg = api.messages.create(
                model=MODEL, max_tokens=50, system=system, tools=tools, messages=sent  # type: ignore[arg-type]
            )
            u = msg.usage
            read = u.cache_read_input_tokens or 0
            if turn:
                assert read == previous, turn
            assert u.input_tokens == 0  # the breakpoint is on the last block
            previous = read + (u.cache_creation_input_tokens or 0) + u.input_tokens


def test_breakpoints_stay_within_four() -> None:
    marked = {"type": "ephemeral"}
    system: Any = [{"type": "text", "text": f"s{i}", "cache_control": marked} for i in range(3)]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a"}, *_tool_turn(1, 2)]
    sent = with_conversation_breakpoints(messages, system, None)
    assert count_breakpoints(system, None, sent) == MAX_BREAKPOINTS
    # Only the latest message got the one free slot.
    assert "cache_control" in str(sent[-1]) and "cache_control" not in str(sent[:-1])
    full: Any = [*system, {"type": "text", "text": "s3", "cache_control": marked}]
    assert with_conversation_breakpoints(messages, full, None) is messages


def test_ledger_prices_cache_tokens_as_billed() -> None:
    """Writes 1.25× the input price (5 min) or 2× (1 h), reads 0.1× (Sonnet: $3/MTok)."""
    ledger = TokenLedger()
    ledger.record(
        TokenUsage(
            input_tokens=1_000_000,
            cache_creation_input_tokens=3_000_000,
            cache_creation_1h_input_tokens=1_000_000,
            cache_read_input_tokens=10_000_000,
        ),
        MODEL,
    )
    assert ledger.cost_by_kind["input"] == pytest.approx(3.0)
    assert ledger.cost_by_kind["cache_write"] == pytest.approx(2 * 3.75 + 1 * 6.0)
    assert ledger.cost_by_kind["cache_read"] == pytest.approx(3.0)
    assert ledger.cost_usd == pytest.approx(3.0 + 13.5 + 3.0)
    assert ledger.prompt_cost_usd == pytest.approx(ledger.cost_usd)
    assert ledger.cache_read_fraction == pytest.approx(10 / 14)


def test_the_activity_reads_the_one_hour_share_of_cache_writes() -> None:
    system: Any = [
        {"type": "text", "text": filler("hour", 2500),
         "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    with FakeAnthropicServer(brain=EchoBrain(max_chars=20)) as fake:
        api = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
        msg = api.messages.create(
            model=MODEL, max_tokens=50, system=system, messages=[{"role": "user", "content": "hi"}]
        )
    usage = activity_usage(msg.usage)
    assert usage.cache_creation_1h_input_tokens == usage.cache_creation_input_tokens > 2048
