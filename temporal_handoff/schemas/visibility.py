"""Custom search attributes: keys, registration list, and the upsert set.

Search attributes are not encoded by a payload codec: only numbers, states and
names go here, never prompt text or secrets.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributeUpdate

GENERATION = SearchAttributeKey.for_int("HandoffGeneration")
CONTEXT_PCT = SearchAttributeKey.for_float("ContextUsagePct")
LIFECYCLE = SearchAttributeKey.for_keyword("AgentLifecycle")
PROJECT = SearchAttributeKey.for_keyword("AgentProject")
USER = SearchAttributeKey.for_keyword("AgentUser")
AGENT_TYPE = SearchAttributeKey.for_keyword("AgentType")
TOTAL_TOKENS = SearchAttributeKey.for_int("AgentTotalTokens")
COST_USD = SearchAttributeKey.for_float("AgentCostUsd")
NEEDS_HUMAN = SearchAttributeKey.for_bool("NeedsHuman")
"""True while the session waits for a human decision (an open HUMAN_DECISION blocker)."""
PROBE_MISSES = SearchAttributeKey.for_int("HandoffProbeMisses")
"""Critical items missing from the last handoff's continuation prompt (its probe, after
escalating to the top level); unset until the session's first handoff."""

ALL_KEYS: list[SearchAttributeKey] = [
    GENERATION, CONTEXT_PCT, LIFECYCLE, PROJECT, USER, AGENT_TYPE, TOTAL_TOKENS, COST_USD,
    NEEDS_HUMAN, PROBE_MISSES,
]

def cli_type(key: SearchAttributeKey) -> str:
    """The type name the `temporal` CLI uses for a key (Int, Double, Keyword)."""
    kind = key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_").title()
    return {"Float": "Double"}.get(kind, kind)


def cli_flags() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    out: list[str] = []
    for key in ALL_KEYS:
        out += ["--search-attribute", f"{key.name}={cli_type(key)}"]
    return out


def search_attribute_updates(
    *,
    generation: int,
    context_pct: float,
    lifecycle: str,
    project: str,
    user: str,
    agent_type: str,
    total_tokens: int,
    cost_usd: float,
    needs_human: bool | None = None,
    probe_misses: int | None = None,
) -> list[SearchAttributeUpdate]:
    extra: list[SearchAttributeUpdate] = (
        [] if needs_human is None else [NEEDS_HUMAN.value_set(needs_human)]
    )
    if probe_misses is not None:
        extra.append(PROBE_MISSES.value_set(probe_misses))
    return extra + [
        GENERATION.value_set(generation),
        CONTEXT_PCT.value_set(round(context_pct, 2)),
        LIFECYCLE.value_set(lifecycle),
        PROJECT.value_set(project[:200]),
        USER.value_set(user[:200] or "unknown"),
        AGENT_TYPE.value_set(agent_type[:200]),
        TOTAL_TOKENS.value_set(total_tokens),
        COST_USD.value_set(round(cost_usd, 6)),
    ]
