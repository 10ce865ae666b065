"""The 1-hour prompt-cache TTL when a session waits for humans longer than 5 minutes.

The policy's arithmetic alone (`schemas/cache_ttl.py`), the breakpoints' TTL order on
the strict fake, and whole sessions: real Temporal dev server, real worker and
`anthropic` client, the fake Messages API whose cache follows Anthropic's rules on a
clock the test moves (`server.prompt_cache.clock`). A human "takes 10 minutes" on that
clock while the session waits; the workflow measures its waits in workflow time, so
those sessions set `cache_wait_threshold_s=0` (every human wait counts as long) to see
the same thing the cache sees.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from pydantic import ValidationError
from temporalio.client import Client

from temporal_handoff.activities.cache_breakpoints import (
    system_with_ttl,
    with_conversation_breakpoints,
)
from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.cache_ttl import (
    HumanWaits,
    choose_ttl,
    long_wait_probability,
    still_cached,
)
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SayArgs, SessionResult, SessionStatus
from temporal_handoff.schemas.tokens import TokenLedger, TokenUsage, price_for, usage_cost_usd
from temporal_handoff.testing import EchoBrain, FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import filler
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session
from tests.waits import wait_status

MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix 2,048 tokens
SYSTEM = "You help the human with their questions. " + filler("ttl-system", 2600)
HUMAN_WAIT_S = 600.0
"""How long the human takes to answer, on the fake cache's clock (past the 5 minutes)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the policy's arithmetic
def test_no_long_wait_seen_means_five_minutes() -> None:
    assert long_wait_probability(0, 0) == 0.0
    assert long_wait_probability(0, 500) == 0.0
    for prefix, new in ((100_000, 0), (100_000, 10), (5_000, 5_000)):
        assert choose_ttl("auto", 0.0, prefix, new).ttl == "5m"


def test_probability_has_a_conservative_prior() -> None:
    # One pseudo-call without a long wait: a first long wait is not yet a certainty.
    assert long_wait_probability(1, 1) == pytest.approx(0.5)
    assert long_wait_probability(2, 2) == pytest.approx(2 / 3)
    assert long_wait_probability(3, 30) == pytest.approx(3 / 31)
    assert long_wait_probability(9, 3) == 1.0  # capped


def test_one_hour_when_the_expected_saving_beats_the_extra_write() -> None:
    # Everything written anew (prefix == new): 1 h pays when p × 1.15 > 0.75, p > 0.652.
    assert choose_ttl("auto", 0.65, 10_000, 10_000).ttl == "5m"  # 7,475 < 7,500
    assert choose_ttl("auto", 0.66, 10_000, 10_000).ttl == "1h"  # 7,590 > 7,500
    # Most of the prompt read from cache: a small chance of a long wait already pays.
    assert choose_ttl("auto", 0.03, 10_000, 500).ttl == "5m"  # 345 < 375
    assert choose_ttl("auto", 0.04, 10_000, 500).ttl == "1h"  # 460 > 375
    choice = choose_ttl("auto", 0.04, 10_000, 500)
    assert choice.saving == pytest.approx(0.04 * 10_000 * 1.15)
    assert choice.extra == pytest.approx(0.75 * 500)
    assert "p=0.04" in choice.summary() and choice.summary().startswith("cache 1h")
    # Fixed modes ignore the figures.
    assert choose_ttl("5m", 1.0, 10_000, 0).ttl == "5m"
    assert choose_ttl("1h", 0.0, 10_000, 10_000).ttl == "1h"


def test_the_arithmetic_is_the_ledgers_prices() -> None:
    """The policy's factors are what the ledger bills (any model: they scale its input
    price): 1 h writes cost 0.75× input more than 5 min ones; a read instead of a 5-min
    re-write saves 1.15× input."""
    base = price_for(MODEL).input / 1e6
    n = 10_000
    five = usage_cost_usd(TokenUsage(cache_creation_input_tokens=n), MODEL)
    hour = usage_cost_usd(
        TokenUsage(cache_creation_input_tokens=n, cache_creation_1h_input_tokens=n), MODEL
    )
    read = usage_cost_usd(TokenUsage(cache_read_input_tokens=n), MODEL)
    assert hour - five == pytest.approx(choose_ttl("auto", 1, n, n).extra * base)
    assert five - read == pytest.approx(choose_ttl("auto", 1, n, n).saving * base)


def test_waits_and_cache_lifetime() -> None:
    waits = HumanWaits()
    for seconds in (30.0, 299.9, 300.0, 4000.0):
        waits.add(seconds, 300.0)
    assert (waits.waits, waits.long_waits, waits.longest_s) == (4, 2, 4000.0)
    assert still_cached("5m", 299.0, 300.0) and not still_cached("5m", 300.0, 300.0)
    assert still_cached("1h", 3599.0, 300.0) and not still_cached("1h", 3600.0, 300.0)


def test_config_and_ledger_contracts() -> None:
    assert SessionConfig().cache_ttl == "auto"
    assert SessionConfig().cache_wait_threshold_s == 300.0
    for bad, field in (
        ({"cache_ttl": "2h"}, "cache_ttl"),
        ({"cache_wait_threshold_s": -1}, "cache_wait_threshold_s"),
    ):
        with pytest.raises(ValidationError, match=field):
            validate_human(SessionConfig, bad)
    # Ledgers written before the policy (or by a newer worker) still decode.
    old = TokenLedger.model_validate({"calls": 3})
    assert old.human_waits == HumanWaits() and old.cache_ttl_calls == {}
    newer = TokenLedger.model_validate({"human_waits": {"waits": 2, "long_waits": 1, "p90_s": 9}})
    assert newer.human_waits.long_waits == 1


# ---------------------------------------------------------------- breakpoints on the wire
def test_one_hour_breakpoints_come_first() -> None:
    """The API refuses a 1 h breakpoint after a 5 min one: with "1h" the system
    breakpoint is raised to 1 h too, and the fake accepts the request."""
    system: Any = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages: Any = [{"role": "user", "content": "Hello there."}]
    with FakeAnthropicServer(brain=EchoBrain(max_chars=20)) as fake:
        api = anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)
        mixed: Any = with_conversation_breakpoints(messages, system, None, ttl="1h")
        with pytest.raises(anthropic.BadRequestError, match="longer TTLs must come first"):
            api.messages.create(model=MODEL, max_tokens=50, system=system, messages=mixed)
        hour_system: Any = system_with_ttl(system, "1h")
        assert system[0]["cache_control"] == {"type": "ephemeral"}  # input untouched
        sent: Any = with_conversation_breakpoints(messages, hour_system, None, ttl="1h")
        msg = api.messages.create(model=MODEL, max_tokens=50, system=hour_system, messages=sent)
    assert msg.usage.cache_creation is not None
    written = msg.usage.cache_creation_input_tokens or 0
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == written > 2048
    # 5 minutes is the API's default: those requests stay as they were.
    assert system_with_ttl(system, "5m") is system
    assert "ttl" not in str(with_conversation_breakpoints(messages, system, None, ttl="5m"))


# ---------------------------------------------------------------- whole sessions
def _replied(calls: int) -> Callable[[SessionStatus], bool]:
    """The session answered with its `calls`-th model call and waits for the human."""
    return lambda s: s.awaiting_input and s.health.model_calls == calls


async def _chat(
    client: Client, cache_ttl: str, threshold_s: float, waits: int = 4
) -> tuple[SessionResult, list[dict[str, int]]]:
    """A free-form chat: the agent answers, the human takes `HUMAN_WAIT_S` (on the
    cache's clock) to say the next thing, `waits` times; then an abort. The result and
    the usage of every model call, in order."""
    clock = Clock()
    task_queue = f"tq-ttl-{uuid.uuid4()}"
    with FakeAnthropicServer(brain=EchoBrain(max_chars=40)) as fake:
        fake.prompt_cache.clock = clock
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, ProjectState(goal="Answer the human's questions"),
                prefix="ttl", model=MODEL, system_prompt=SYSTEM, max_tokens=256,
                cache_ttl=cache_ttl, cache_wait_threshold_s=threshold_s,
            )
            for i in range(1, waits + 1):
                await wait_status(client, handle.id, _replied(i), f"reply {i}")
                clock.now += HUMAN_WAIT_S
                await handle.execute_update("say", SayArgs(text=f"Question number {i}, please?"))
            await wait_status(client, handle.id, _replied(waits + 1), "the last reply")
            await handle.signal("abort", "done")
            result: SessionResult = await handle.result()
        usages = [r.usage for r in fake.message_requests() if r.status == 200 and r.usage]
    assert result.reason == TerminationReason.USER_ABORT
    assert len(usages) == waits + 1
    return result, usages


def _prompt(u: dict[str, int]) -> int:
    return u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"]


async def test_auto_reads_the_prefix_after_long_human_waits(client: Client) -> None:
    auto, auto_calls = await _chat(client, "auto", threshold_s=0.0)
    fixed, fixed_calls = await _chat(client, "5m", threshold_s=0.0)
    # The same conversation, billed differently.
    assert [_prompt(u) for u in auto_calls] == [_prompt(u) for u in fixed_calls]
    # Four answers and the abort each ended a wait.
    assert auto.ledger.human_waits.long_waits == fixed.ledger.human_waits.long_waits == 5
    # 5 minutes: every call after a 10-minute wait writes the whole prompt again.
    for u in fixed_calls[1:]:
        assert u["cache_read_input_tokens"] == 0, fixed_calls
        assert u["cache_creation_input_tokens"] == _prompt(u), fixed_calls
    assert fixed.ledger.cache_write_1h_tokens == 0
    assert fixed.ledger.cache_ttl_calls == {"5m": 5}
    # auto: p = long waits / (calls + 1) = 2/3 at the third call, which writes with 1 h
    # (the whole prompt was to be written anyway); after the next wait the call reads
    # it and writes only what is new (also with 1 h: most of its prompt is cached).
    for u in auto_calls[3:]:
        assert u["cache_read_input_tokens"] > 0.75 * _prompt(u), auto_calls
        assert u["cache_creation_input_tokens"] < 0.25 * _prompt(u), auto_calls
    saved = 1 - auto.ledger.cost_usd / fixed.ledger.cost_usd
    print(
        f"chat with 4 ten-minute waits: auto ${auto.ledger.cost_usd:.5f} vs 5m "
        f"${fixed.ledger.cost_usd:.5f} ({100 * saved:.1f}% less)"
    )
    assert auto.ledger.cost_usd < fixed.ledger.cost_usd
    assert auto.ledger.cache_ttl_calls == {"5m": 2, "1h": 3}, auto.ledger.cache_ttl_calls
    assert auto.ledger.cache_write_1h_tokens > 0


async def test_auto_is_five_minutes_when_no_wait_is_long(client: Client) -> None:
    """The same chat, the waits measured as short (the default 300 s threshold; the
    test's real waits are far shorter): exactly the 5-minute requests, full re-writes."""
    auto, auto_calls = await _chat(client, "auto", threshold_s=300.0, waits=2)
    assert auto.ledger.human_waits.waits == 3 and auto.ledger.human_waits.long_waits == 0
    assert auto.ledger.cache_ttl_calls == {"5m": 3}
    assert auto.ledger.cache_write_1h_tokens == 0
    for u in auto_calls[1:]:
        assert u["cache_read_input_tokens"] == 0
        assert u["cache_creation_input_tokens"] == _prompt(u)


async def _tasks(client: Client, cache_ttl: str) -> tuple[SessionResult, list[dict[str, int]]]:
    task_queue = f"tq-ttl-{uuid.uuid4()}"
    with FakeAnthropicServer(brain=ScriptedAgentBrain(tasks_per_turn=2)) as fake:
        fake.prompt_cache.clock = Clock()
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(16, 2), prefix="ttl-tasks",
                model=MODEL, system_prompt=SYSTEM, max_tokens=512, cache_ttl=cache_ttl,
            )
            result: SessionResult = await handle.result()
        usages = [r.usage for r in fake.message_requests() if r.status == 200 and r.usage]
    assert result.reason == TerminationReason.TASK_COMPLETED
    return result, usages


async def test_auto_without_human_waits_is_exactly_five_minutes(client: Client) -> None:
    auto, auto_calls = await _tasks(client, "auto")
    fixed, fixed_calls = await _tasks(client, "5m")
    assert auto_calls == fixed_calls
    assert auto.ledger.human_waits.waits == 0
    assert auto.ledger.cache_write_1h_tokens == 0
    assert auto.ledger.cache_ttl_calls == {"5m": auto.ledger.calls}
    assert auto.ledger.cost_usd == pytest.approx(fixed.ledger.cost_usd)
