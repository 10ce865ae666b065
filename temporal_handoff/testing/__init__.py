"""Offline testing kit: a loopback fake Anthropic Messages API and scripted agents.

Point the real ``anthropic`` client at `FakeAnthropicServer.base_url` to run agent
sessions without network access or an API key::

    from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain

    with FakeAnthropicServer(brain=ScriptedAgentBrain(tasks_per_turn=2)) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="test")

Token counts are realistic (`TokenCounter`: per-model tokenizer, framing, the tool-use
system prompt; ``count_tokens`` an estimate), and `ReadingBrain` with the `READ_FILE`
tool (`read_file`) fills a context with prose, code or JSON of a chosen size.
"""

from temporal_handoff.testing.brain import (
    ALL_TASKS_COMPLETE,
    AWAITING_DECISION,
    NEXT_ELIGIBLE_RE,
    Brain,
    BrainReply,
    EchoBrain,
    ScriptedAgentBrain,
    stable_hash,
)
from temporal_handoff.testing.conversation import ConversationBrain, Exchange
from temporal_handoff.testing.fake_server import (
    DEFAULT_ERROR_TYPES,
    FakeAnthropicServer,
    Fault,
    RequestRecord,
    count_tokens,
)
from temporal_handoff.testing.fake_tokens import TokenCounter
from temporal_handoff.testing.fidelity_plan import (
    FidelityPlan,
    fidelity_plan,
    human_choice,
    score_fidelity,
)
from temporal_handoff.testing.payload_agent import PayloadAgent
from temporal_handoff.testing.reading import READ_FILE, ReadingBrain, read_file
from temporal_handoff.testing.synthetic import synthetic_project

__all__ = [
    "ALL_TASKS_COMPLETE",
    "AWAITING_DECISION",
    "DEFAULT_ERROR_TYPES",
    "NEXT_ELIGIBLE_RE",
    "READ_FILE",
    "PayloadAgent",
    "Brain",
    "BrainReply",
    "ConversationBrain",
    "EchoBrain",
    "Exchange",
    "FakeAnthropicServer",
    "FidelityPlan",
    "Fault",
    "ReadingBrain",
    "RequestRecord",
    "ScriptedAgentBrain",
    "TokenCounter",
    "count_tokens",
    "read_file",
    "fidelity_plan",
    "human_choice",
    "score_fidelity",
    "stable_hash",
    "synthetic_project",
]
