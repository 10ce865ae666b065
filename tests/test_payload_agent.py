"""`PayloadAgent` without a server: its next step follows the continuation prompt."""

from __future__ import annotations

from typing import Any

from temporal_handoff.testing import PayloadAgent, fidelity_plan
from temporal_handoff.testing.payload_agent import HANDOFF_HEADER
from temporal_handoff.testing.synthetic import synthetic_project

PLAN = fidelity_plan(synthetic_project(12, 2), seed=5)


def _request(handoff: str) -> dict[str, Any]:
    system = PLAN.system_prompt() + f"\n\n{HANDOFF_HEADER}\n\n{handoff}"
    return {
        "system": [{"type": "text", "text": system}],
        "messages": [{"role": "user", "content": "You are generation 3. Continue."}],
    }


def _calls(agent: PayloadAgent, handoff: str) -> list[tuple[str, dict[str, Any]]]:
    reply = agent.respond(_request(handoff))
    return [(b["name"], b["input"]) for b in reply.content if b["type"] == "tool_use"]


def test_the_successor_acts_on_what_the_handoff_says() -> None:
    ask = next(t for t in PLAN.tasks.values() if t.kind == "ask")
    user = PLAN.consumers[ask.id]
    handoff = (
        f"## Human decisions (1)\n- `HD-B-{ask.id}` (human:lead) (resolves `B-{ask.id}`): "
        f"use postgres\n## Next\nNext eligible tasks: `{user}`\n"
        "- `recall` tool input: ... This handoff is generation 2."
    )
    calls = _calls(PayloadAgent(seed=5, tasks_per_turn=1), handoff)
    assert calls[0][0] == "complete_task" and calls[0][1]["task_id"] == user
    assert calls[0][1]["summary"].startswith(f"{user} uses postgres.")

    # Without the decision in the prompt it looks it up, narrowly...
    gone = handoff.replace("use postgres", "(text left out)")
    calls = _calls(PayloadAgent(seed=5, tasks_per_turn=1), gone)
    assert calls == [
        ("recall", {"generation": 2, "section": "decisions", "ids": [f"HD-B-{ask.id}"]})
    ]

    # ...and blanked, it knows nothing: it starts the plan over (a repeat).
    calls = _calls(PayloadAgent(seed=5, tasks_per_turn=1, blank_handoff=True), handoff)
    first = next(iter(PLAN.tasks))
    assert f"`{first}`" in str(calls[0][1]) or calls[0][1].get("task_id") == first


def test_a_retry_changes_the_approach_the_error_names() -> None:
    flaky = next(t for t in PLAN.tasks.values() if t.kind == "flaky")
    handoff = (
        f"## Failed tasks (1)\n- `{flaky.id}` (attempts 1): `{flaky.id}`: approach "
        f"'{flaky.options[0]}' failed: timeout\nNext eligible tasks: `{flaky.id}`\n"
    )
    name, args = _calls(PayloadAgent(seed=5, tasks_per_turn=1), handoff)[0]
    text = args.get("error") or args.get("summary")
    assert f"approach '{flaky.options[1]}'" in text, (name, args)
