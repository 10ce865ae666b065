"""Token counts like real Claude's, and the one occupancy estimator that has to cope.

The fake counts with per-message framing, the tool-use system prompt and a tokenizer
whose ratio to tiktoken depends on the model and on the text (`fake_tokens`);
`count_tokens` is an estimate close to `usage`, not equal to it. The session's
estimator (`schemas/estimator.py`) fits offsets as well as a ratio and asks for the
exact count when the limit is near, so it hands off before the window, where a
ratio-only calibration sends a request over it.
"""

from __future__ import annotations

from typing import Any

import anthropic
from temporalio.client import Client
from temporalio.worker import Replayer

from temporal_handoff.activities.tokenizer import count_tokens as tiktoken_count
from temporal_handoff.schemas.estimator import NewContent, TokenFit, preflight
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.testing import FakeAnthropicServer
from temporal_handoff.testing.fake_tokens import TokenCounter
from temporal_handoff.testing.reading import READ_FILE, ReadingBrain, file_text, read_file
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin, UserTool
from tests.conftest import running_worker
from tests.helpers import start_session

NEW = "claude-sonnet-4-5"
TOOLS: Any = [{
    "name": "complete_task",
    "description": "Mark a task complete.",
    "input_schema": {"type": "object", "properties": {"task_id": {"type": "string"}}},
}]


def _body(model: str, messages: list[Any], tools: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, **extra}
    if tools is not None:
        body["tools"] = tools
    return body


def test_fake_counts_frames_and_the_tool_use_system_prompt() -> None:
    counter = TokenCounter()
    text = file_text("prose", 600, "frames")
    lines = text.split("\n")
    one = [{"role": "user", "content": text}]
    three = [
        {"role": "user", "content": "\n".join(lines[: len(lines) // 3])},
        {"role": "assistant", "content": "\n".join(lines[len(lines) // 3 : 2 * len(lines) // 3])},
        {"role": "user", "content": "\n".join(lines[2 * len(lines) // 3 :])},
    ]
    # Same text, more messages: more tokens (each message has its frame).
    framing = counter.prompt(_body(NEW, three)) - counter.prompt(_body(NEW, one))
    assert framing >= 2 * counter.profile(NEW).message
    # Tools add their definitions and the API's tool-use system prompt (per model).
    for model, system_prompt in ((NEW, 346), ("claude-3-5-haiku", 264)):
        plain = counter.prompt(_body(model, one))
        with_tools = counter.prompt(_body(model, one, TOOLS))
        definitions = with_tools - plain - system_prompt
        assert 10 < definitions < 60, (model, definitions)
        forced = counter.prompt(_body(model, one, TOOLS, tool_choice={"type": "any"}))
        assert forced != with_tools  # `any` has its own system prompt size


def test_fake_tokenizer_is_not_a_constant_ratio() -> None:
    counter = TokenCounter()
    ratios: dict[tuple[str, str], float] = {}
    for model in (NEW, "claude-sonnet-4", "claude-3-5-haiku"):
        for kind in ("prose", "code", "json"):
            text = file_text(kind, 2_000, "ratio")
            ratios[model, kind] = counter.text(text, model) / tiktoken_count(text)
    for model in (NEW, "claude-sonnet-4", "claude-3-5-haiku"):
        # Code and JSON cost more than prose, by a different factor per model.
        assert ratios[model, "code"] > ratios[model, "prose"] * 1.1
        assert ratios[model, "json"] > ratios[model, "prose"] * 1.1
    assert abs(ratios[NEW, "code"] - ratios["claude-sonnet-4", "code"]) > 0.05
    assert abs(ratios[NEW, "prose"] - ratios["claude-sonnet-4", "prose"]) > 0.05


def test_count_tokens_is_an_estimate_close_to_usage() -> None:
    """Through the real SDK: `count_tokens` within 1.5 % of the usage a create call
    reports for the same prompt, deterministic, and (mostly) not equal to it."""
    with FakeAnthropicServer() as fake:
        client = anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0)
        gaps = []
        for i in range(12):
            kind = ("prose", "code", "json")[i % 3]
            msgs: Any = [{"role": "user", "content": file_text(kind, 300 + 150 * i, f"c{i}")}]
            counted = client.messages.count_tokens(model=NEW, messages=msgs, tools=TOOLS)
            again = client.messages.count_tokens(model=NEW, messages=msgs, tools=TOOLS)
            used = client.messages.create(model=NEW, max_tokens=64, messages=msgs, tools=TOOLS)
            prompt = used.usage.input_tokens
            assert counted.input_tokens == again.input_tokens
            assert abs(counted.input_tokens - prompt) <= 0.015 * prompt + 1
            gaps.append(counted.input_tokens - prompt)
        client.close()
    assert sum(1 for g in gaps if g != 0) >= 9, gaps
    assert any(g > 0 for g in gaps) and any(g < 0 for g in gaps), gaps


def test_fit_learns_offsets_that_a_ratio_cannot() -> None:
    """Calls whose new content costs 1.05 tokens per plain tiktoken token, 1.35 per
    dense one, 9 per message, and 400 more on a context's first call: the fit recovers
    all four; a ratio misestimates a first call by the offsets it cannot represent."""
    fit = TokenFit()
    est_sum = obs_sum = 0
    for i in range(30):
        whole = i % 10 == 0
        units = 3_000 + 97 * i if whole else 200 + 37 * (i % 7)
        dense = units // (2 + i % 3)
        messages = 1 + i % 3
        observed = round(1.05 * (units - dense) + 1.35 * dense + 9 * messages
                         + (400 if whole else 0))
        new = NewContent(tokens=units, dense_tokens=dense, messages=messages, whole=whole)
        fit.add(new, observed)
        est_sum, obs_sum = est_sum + units, obs_sum + observed
    plain, dense_rate, per_message, first = fit.coefficients()
    assert abs(plain - 1.05) < 0.06 and abs(dense_rate - 1.35) < 0.06
    assert abs(per_message - 9) < 2 and abs(first - 400) < 20
    cases = [(4_000, 0, 1, True), (300, 300, 1, False), (200, 0, 3, False)]
    fit_errors, ratio_errors = [], []
    for units, dense, messages, whole in cases:
        true = 1.05 * (units - dense) + 1.35 * dense + 9 * messages + (400 if whole else 0)
        new = NewContent(tokens=units, dense_tokens=dense, messages=messages, whole=whole)
        fit_errors.append(abs(fit.tokens(new) - true) / true)
        # The ratio-only calibration: observed / estimated over the same calls.
        ratio_errors.append(abs(units * obs_sum / est_sum - true) / true)
    assert max(fit_errors) < 0.01, fit_errors
    assert max(ratio_errors) > 0.05, ratio_errors


def test_preflight_counts_only_when_the_limit_is_within_the_estimates_uncertainty() -> None:
    assert preflight(50_000, 2_000, 180_000).decision == "send"
    assert preflight(170_000, 20_000, 180_000).decision == "refuse"
    # 176,000 + 2,000: the limit is within 35 % of the new content's estimate.
    assert preflight(176_000, 2_000, 180_000).decision == "count"
    # A small addition near the limit: within 2 % of it.
    assert preflight(177_000, 100, 180_000).decision == "count"
    assert NewContent(tokens=5).whole is False


WINDOW = 16_000
MAX_TOKENS = 1_024
THRESHOLD = 0.95
LIMIT = min(int(THRESHOLD * WINDOW), WINDOW - MAX_TOKENS)


async def test_preflight_hands_off_before_the_window(client: Client, task_queue: str) -> None:
    """The agent reads prose files, then (past 9,000 tokens) one JSON file sized so
    that the next prompt plus `max_tokens` crosses the window. JSON costs far more per
    tiktoken token than the prose the calibration learned from: the estimate comes in
    under the limit, but within its uncertainty, so the exact count is asked for and
    the session hands off instead of sending the request. `count_tokens` is used only
    near the limit."""
    counter = TokenCounter()
    probe = file_text("json", 2_000, "probe")
    json_factor = counter.text(probe, NEW) / 2_000

    def plan(request: dict[str, Any]) -> tuple[str, int]:
        prompt = counter.prompt(request)
        if prompt < 9_000:
            return "prose", 500
        # This reply and the tool results around the file add ~250 tokens.
        want = WINDOW - MAX_TOKENS + 400 - prompt - 250
        return "json", max(100, int(want / json_factor))

    with FakeAnthropicServer(
        brain=ReadingBrain(plan), context_windows={NEW: WINDOW}
    ) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, tools=[UserTool(spec=READ_FILE, fn=read_file)]
        ):
            handle = await start_session(
                client, task_queue, synthetic_project(14, 2), prefix="preflight", model=NEW,
                max_tokens=MAX_TOKENS, handoff_threshold=THRESHOLD, warn_threshold=0.7,
                user_tools=[READ_FILE],
            )
            result = await handle.result()
            first = await client.get_workflow_handle(
                handle.id, run_id=handle.first_execution_run_id
            ).fetch_history()
        sent = fake.message_requests()
        counts = [r for r in fake.requests if r.path == "/v1/messages/count_tokens"]
    assert result.reason == TerminationReason.TASK_COMPLETED and result.generation >= 1
    over = [
        (r.input_tokens, r.status, r.error) for r in sent
        if r.input_tokens is None or r.input_tokens + MAX_TOKENS > WINDOW or r.status != 200
    ]
    assert not over, f"requests over the window: {over}"
    # The exact count was asked for near the limit only, and not on every call.
    assert counts and len(counts) < len(sent) / 4
    assert all(r.input_tokens is not None and r.input_tokens >= 0.9 * LIMIT for r in counts)
    assert result.ledger.exact_counts >= 1
    # The new path (patch occupancy-fit-1, the refusal, the handoff) replays.
    replay = await Replayer(workflows=[], plugins=[HandoffPlugin()]).replay_workflow(
        first, raise_on_replay_failure=False
    )
    assert replay.replay_failure is None, replay.replay_failure
    patches = [
        p.data for e in first.events if e.HasField("marker_recorded_event_attributes")
        for p in e.marker_recorded_event_attributes.details["patch-data"].payloads
    ]
    assert any(b'"occupancy-fit-1"' in p for p in patches), patches
