"""Prompt caching in the fake Messages API, per Anthropic's documented rules.

Driven through the real `anthropic` client; time is the test's own clock
(`server.prompt_cache.clock`), never a sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from temporal_handoff.testing import EchoBrain, FakeAnthropicServer
from temporal_handoff.testing.brain import filler
from temporal_handoff.testing.fake_server import count_tokens

MODEL = "claude-sonnet-4-5"  # minimum cacheable length 1,024 tokens
DRIFT = 1.15
EPHEMERAL: Any = {"type": "ephemeral"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(brain=EchoBrain(max_chars=40), drift=DRIFT) as srv:
        cache = getattr(srv, "prompt_cache", None)
        if cache is not None:
            cache.clock = clock
        yield srv


@pytest.fixture
def api(server: FakeAnthropicServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)


def text_of(tokens: int, seed: str = "doc") -> str:
    """Filler text the server counts as roughly `tokens` tokens."""
    per_word = count_tokens(filler("probe", 1000), DRIFT) / 1000
    return filler(seed, int(tokens / per_word))


def system(text: str, **marker: Any) -> Any:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", **marker}}]


USER: Any = [{"role": "user", "content": "Summarise the document."}]


def usage_of(msg: Any) -> tuple[int, int, int]:
    u = msg.usage
    return u.input_tokens, u.cache_creation_input_tokens or 0, u.cache_read_input_tokens or 0


def test_below_the_minimum_nothing_is_cached(api: anthropic.Anthropic) -> None:
    short = system(text_of(600))  # well under 1,024 tokens
    for _ in range(2):
        msg = api.messages.create(model=MODEL, max_tokens=50, system=short, messages=USER)
        assert msg.usage.cache_creation_input_tokens == 0
        assert msg.usage.cache_read_input_tokens == 0
        assert msg.usage.cache_creation is not None
        assert msg.usage.cache_creation.ephemeral_5m_input_tokens == 0
    # The same length is cacheable on none of the 4,096-token models either, and a
    # 1,500-token prefix is cacheable on Sonnet 4.5 but not on Haiku 4.5.
    mid = system(text_of(1500))
    sonnet = api.messages.create(model=MODEL, max_tokens=50, system=mid, messages=USER)
    haiku = api.messages.create(model="claude-haiku-4-5", max_tokens=50, system=mid, messages=USER)
    assert sonnet.usage.cache_creation_input_tokens and sonnet.usage.cache_creation_input_tokens >= 1024
    assert haiku.usage.cache_creation_input_tokens == 0
    assert haiku.usage.cache_read_input_tokens == 0


def test_tools_are_part_of_the_cache_key(api: anthropic.Anthropic) -> None:
    sys_blocks = system(text_of(1500))
    tool: Any = {"name": "lookup", "description": "Look a thing up.", "input_schema": {"type": "object"}}
    first = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks, tools=[tool], messages=USER
    )
    again = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks, tools=[tool], messages=USER
    )
    changed = dict(tool, description="Look a thing up, carefully.")
    other = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks, tools=[changed], messages=USER
    )
    _, wrote, _ = usage_of(first)
    assert wrote > 0
    assert usage_of(again)[1:] == (0, wrote)  # same tools + system: read
    _, wrote_other, read_other = usage_of(other)
    assert read_other == 0 and wrote_other > 0  # tools precede system: a changed tool misses


def test_more_than_four_breakpoints_is_rejected(
    api: anthropic.Anthropic, server: FakeAnthropicServer
) -> None:
    blocks: Any = [
        {"type": "text", "text": f"Part {i}. " + text_of(300, f"p{i}"), "cache_control": EPHEMERAL}
        for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError) as info:
        api.messages.create(model=MODEL, max_tokens=50, system=blocks, messages=USER)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    assert "A maximum of 4 blocks with cache_control may be provided. Found 5." in str(info.value)
    # Four explicit ones plus the top-level (automatic) breakpoint is five as well.
    with pytest.raises(anthropic.BadRequestError, match="Found 5"):
        api.messages.create(
            model=MODEL, max_tokens=50, system=blocks[:4], messages=USER, cache_control=EPHEMERAL
        )
    ok = api.messages.create(model=MODEL, max_tokens=50, system=blocks[:4], messages=USER)
    assert ok.usage.cache_creation_input_tokens


def test_ttl_five_minutes_and_one_hour(api: anthropic.Anthropic, clock: Clock) -> None:
    five = system(text_of(1500, "five"))
    hour = system(text_of(1500, "hour"), ttl="1h")

    def call(blocks: Any) -> Any:
        return api.messages.create(model=MODEL, max_tokens=50, system=blocks, messages=USER)

    w5, w1 = call(five), call(hour)
    assert w5.usage.cache_creation.ephemeral_5m_input_tokens == w5.usage.cache_creation_input_tokens
    assert w1.usage.cache_creation.ephemeral_1h_input_tokens == w1.usage.cache_creation_input_tokens
    assert w1.usage.cache_creation.ephemeral_5m_input_tokens == 0

    clock.now += 299  # both live; each read refreshes its own TTL
    assert usage_of(call(five))[2] > 0
    assert usage_of(call(hour))[2] > 0
    clock.now += 301  # 5 min after the last read: the 5-minute entry is gone
    assert usage_of(call(five))[1:] == (w5.usage.cache_creation_input_tokens, 0)
    assert usage_of(call(hour))[2] == w1.usage.cache_creation_input_tokens
    clock.now += 3599  # still within the hour since the last read
    assert usage_of(call(hour))[2] > 0
    clock.now += 3601
    assert usage_of(call(hour))[1:] == (w1.usage.cache_creation_input_tokens, 0)


def test_a_one_hour_breakpoint_after_a_five_minute_one_is_rejected(
    api: anthropic.Anthropic,
) -> None:
    blocks: Any = [
        {"type": "text", "text": text_of(600, "a"), "cache_control": EPHEMERAL},
        {"type": "text", "text": text_of(600, "b"), "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    with pytest.raises(anthropic.BadRequestError, match="ttl"):
        api.messages.create(model=MODEL, max_tokens=50, system=blocks, messages=USER)


def turn_messages(turns: int, marker_on_last: bool = True) -> list[dict[str, Any]]:
    """A conversation of `turns` user messages; the last one's last block is marked."""
    messages: list[dict[str, Any]] = []
    for t in range(turns):
        if t:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"Done {t}."}]})
        messages.append(
            {"role": "user", "content": [{"type": "text", "text": f"Turn {t}: " + text_of(400, f"t{t}")}]}
        )
    if marker_on_last:
        messages[-1]["content"][-1]["cache_control"] = EPHEMERAL
    return messages


def test_message_breakpoint_reads_the_previous_turns_prefix(api: anthropic.Anthropic) -> None:
    sys_blocks = system(text_of(1200, "sys"))
    # The system breakpoint alone: what a session that marks only its system prompt gets.
    system_only = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks, messages=turn_messages(1, marker_on_last=False)
    )
    s = usage_of(system_only)[1]
    assert s > 0
    totals = [s]
    for turns in range(1, 5):
        msg = api.messages.create(
            model=MODEL, max_tokens=50, system=sys_blocks, messages=turn_messages(turns)
        )
        inp, wrote, read = usage_of(msg)
        # Each turn reads the whole previous prompt (the breakpoint moved with the
        # conversation) and writes only what is new; nothing follows the breakpoint.
        assert read == totals[-1], turns
        assert wrote > 0 and inp == 0
        totals.append(inp + wrote + read)
    plain = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks, messages=turn_messages(5, marker_on_last=False)
    )
    inp, wrote, read = usage_of(plain)
    assert (wrote, read) == (0, s)  # only the system prefix is read; the rest is input
    assert inp > totals[-1] - s


def test_automatic_caching_moves_with_the_conversation(api: anthropic.Anthropic) -> None:
    sys_blocks: Any = [{"type": "text", "text": text_of(1200, "auto")}]
    first = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks,
        messages=turn_messages(1, marker_on_last=False), cache_control=EPHEMERAL,
    )
    second = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks,
        messages=turn_messages(2, marker_on_last=False), cache_control=EPHEMERAL,
    )
    assert usage_of(first)[1] == sum(usage_of(first))
    assert usage_of(second)[2] == sum(usage_of(first))


def test_lookback_is_about_twenty_blocks(api: anthropic.Anthropic) -> None:
    sys_blocks = system(text_of(1200, "lb"))
    base: Any = [{"role": "user", "content": [{"type": "text", "text": "start", "cache_control": EPHEMERAL}]}]
    api.messages.create(model=MODEL, max_tokens=50, system=sys_blocks, messages=base)

    def extended(blocks: int) -> Any:
        tail = [{"type": "text", "text": f"note {i}"} for i in range(blocks)]
        tail[-1]["cache_control"] = EPHEMERAL
        return [
            {"role": "user", "content": [{"type": "text", "text": "start"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": tail},
        ]

    near = api.messages.create(model=MODEL, max_tokens=50, system=sys_blocks, messages=extended(10))
    far = api.messages.create(model=MODEL, max_tokens=50, system=sys_blocks, messages=extended(30))
    system_only = api.messages.create(
        model=MODEL, max_tokens=50, system=sys_blocks, messages=[{"role": "user", "content": "x"}]
    )
    s = usage_of(system_only)[2]
    # The previous breakpoint ("start") is 11 blocks back from the new one: found.
    assert usage_of(near)[2] > s > 0
    # 31 blocks back it is out of reach: only the system breakpoint's entry is read.
    assert usage_of(far)[2] == s
