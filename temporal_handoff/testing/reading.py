"""A scripted agent that reads files: context that grows with prose, code and JSON.

Real sessions fill their context with tool results of every kind, and Claude counts
code and JSON very differently from prose (`fake_tokens`). `ReadingBrain` wraps
`ScriptedAgentBrain`: every reply also calls the user tool ``read_file``, whose
activity (`read_file`, registered with ``UserTool(spec=READ_FILE, fn=read_file)``)
returns deterministic text of the asked kind and size. What to read is decided by a
``plan`` callable from the request, so a test can aim a read (e.g. a JSON file just
big enough to cross the window) and a benchmark can draw a random mix.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from temporal_handoff.activities.tokenizer import get_encoder
from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.testing.brain import BrainReply, ScriptedAgentBrain, filler, stable_hash

__all__ = ["KINDS", "READ_FILE", "ReadingBrain", "file_text", "read_file"]

KINDS = ("prose", "code", "json", "markdown")

READ_FILE = ToolSpec(
    name="read_file",
    description="Read a file of the project.",
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "kind": {"type": "string", "enum": list(KINDS)},
            "tokens": {"type": "integer", "minimum": 1},
        },
        "required": ["path", "kind", "tokens"],
    },
)
"""The tool's spec (``SessionConfig(user_tools=[READ_FILE])``)."""

Plan = Callable[[Mapping[str, Any]], tuple[str, int] | None]
"""(kind, cl100k tokens) to read in reply to a request, or None to read nothing."""


def _source(kind: str, rng: random.Random, lines: int) -> str:
    if kind == "code":
        out = []
        for i in range(lines // 4 + 1):
            name = "_".join(rng.choice(("load", "task", "state", "item", "cache", "row"))
                            for _ in range(2))
            out += [
                f"def {name}_{i}(data: dict[str, int], limit: int = {rng.randint(1, 99)}) -> int:",
                f"    total = sum(v for k, v in data.items() if k.startswith('{name[:3]}'))",
                f"    return min(total, limit) if total > {rng.randint(0, 9)} else -1",
                "",
            ]
        return "\n".join(out)
    if kind == "json":
        return "\n".join(
            json.dumps(
                {"id": f"r-{i:05d}", "n": rng.randint(0, 10**6), "ok": rng.random() < 0.5,
                 "tags": [rng.choice(("a", "b", "c", "d")) for _ in range(3)]},
                separators=(",", ":"),
            )
            for i in range(lines)
        )
    if kind == "markdown":
        out = []
        for i in range(lines // 5 + 1):
            out += [
                f"## Section {i}",
                f"- {filler(f'md-{rng.random()}', 8)}",
                f"- **{filler(f'mb-{rng.random()}', 2)}**: `{rng.randint(0, 999)}`",
                f"| {rng.randint(0, 99)} | {filler(f'mt-{rng.random()}', 3)} |",
                "",
            ]
        return "\n".join(out)
    return "\n".join(filler(f"prose-{rng.random()}", 18) + "." for _ in range(lines))


def file_text(kind: str, tokens: int, seed: str) -> str:
    """Deterministic text of `kind` that is exactly `tokens` offline cl100k tokens
    (cut at a token boundary)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    enc = get_encoder()
    rng = random.Random(stable_hash(f"{kind}:{seed}"))
    text = _source(kind, rng, max(8, tokens // 6))
    while len(enc.encode_ordinary(text)) < tokens:
        text += "\n" + _source(kind, rng, max(8, tokens // 6))
    return enc.decode(enc.encode_ordinary(text)[:tokens])


async def read_file(tool_input: dict[str, Any]) -> str:
    """The ``read_file`` tool: the file's text (kind and size from the input)."""
    return file_text(str(tool_input["kind"]), int(tool_input["tokens"]), str(tool_input["path"]))


class ReadingBrain:
    """`ScriptedAgentBrain` whose replies also read a file, as `plan` decides.

    The read's path is derived from the request (stable when a call is retried), so the
    same request always reads the same text.
    """

    def __init__(self, plan: Plan, inner: ScriptedAgentBrain | None = None) -> None:
        self.plan = plan
        self.inner = inner or ScriptedAgentBrain(decision_every=0)

    def respond(self, request: dict[str, Any]) -> BrainReply:
        reply = self.inner.respond(request)
        if not any(b.get("type") == "tool_use" for b in reply.content):
            return reply  # a closing answer reads nothing
        wanted = self.plan(request)
        if wanted is None:
            return reply
        kind, tokens = wanted
        key = stable_hash(json.dumps(request.get("messages"), sort_keys=True, default=str))
        reply.content.append({
            "type": "tool_use",
            "id": f"toolu_read_{key:016x}"[:40],
            "name": READ_FILE.name,
            "input": {"path": f"src/{kind}-{key % 10**8}.txt", "kind": kind, "tokens": tokens},
        })
        return reply
