"""How the fake server counts tokens: like real Claude, not like a ratio of tiktoken.

Real token counts are not ``tiktoken × constant``, so a session calibrated against a
constant ratio learns nothing about real Claude. The fake counts the way the real
API does, with the figures each model family uses (`profile_for`):

* **A model-dependent tokenizer.** Text is split into runs of prose lines and runs
  of code/JSON/markup lines (by their share of symbols and their indentation); each
  run's offline ``cl100k_base`` count is scaled by the family's factor for its kind
  (e.g. newer models: prose ×1.04, code ×1.36). The ratio to tiktoken therefore
  depends on what the text is, not only on the model.
* **Framing.** Every message costs a few tokens for its turn markers, every
  content block a few more (``tool_use`` and ``tool_result`` blocks more, for their
  ids and names), the system prompt and each tool definition have their own frame,
  and every request a small constant.
* **The tool-use system prompt.** With ``tools`` present the API adds a system prompt
  of its own, per model and ``tool_choice`` (Anthropic's tool-use pricing page: 346
  tokens for ``auto``/``none`` and 313 for ``any``/``tool`` on Claude 4 and later
  models; Claude 3.5 Haiku 264 / 340).
* **count_tokens is an estimate.** ``POST /v1/messages/count_tokens`` answers the
  prompt count moved by a deterministic amount of at most ``count_jitter`` (1.5 %)
  either way, derived from a hash of the request: the same request always gets the
  same answer, which is within a few percent of the ``usage`` a create call reports,
  and rarely equal to it (as the API documents: "an estimate").
* **Output tokens** count the reply's blocks with the same tokenizer and block
  framing (no message framing): the reply re-sent as input in the next prompt counts
  a little more than its ``output_tokens``, as on the real API.

Counts are additive over the prompt's blocks in prefix order (tools → system →
messages), so the prompt cache (`fake_cache`) splits a prompt into cache reads,
writes and input exactly: `TokenCounter.blocks` returns the per-block counts it uses.
Block counts are memoized by content, so re-sending a long conversation is cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from temporal_handoff.activities.tokenizer import get_encoder
from temporal_handoff.schemas.model_io import block_text

__all__ = [
    "PROFILES",
    "TokenCounter",
    "TokenizerProfile",
    "is_code_line",
    "profile_for",
]


@dataclass(frozen=True)
class TokenizerProfile:
    """How one model family counts tokens (see the module docstring).

    Attributes:
        name: Family name (shown in docs and errors).
        prose: Tokens per cl100k token on prose.
        code: Tokens per cl100k token on code, JSON and markup.
        request: Tokens every request costs.
        system: Frame of a non-empty system prompt.
        message: Frame of each message (turn markers).
        block: Frame of each content block.
        tool_use: Extra frame of a ``tool_use`` block (id, name).
        tool_result: Extra frame of a ``tool_result`` block (id).
        tool_definition: Frame of each entry of ``tools``.
        tool_system_auto: Tool-use system prompt, ``tool_choice`` auto/none.
        tool_system_any: Tool-use system prompt, ``tool_choice`` any/tool.
        count_jitter: Largest relative gap between ``count_tokens`` and ``usage``.
    """

    name: str
    prose: float
    code: float
    request: int = 3
    system: int = 4
    message: int = 4
    block: int = 2
    tool_use: int = 9
    tool_result: int = 6
    tool_definition: int = 7
    tool_system_auto: int = 346
    tool_system_any: int = 313
    count_jitter: float = 0.015


PROFILES: dict[str, TokenizerProfile] = {
    # Claude 4.5 and later (1M-window 4.6/5.x included): code costs much more than prose.
    "claude-4.5+": TokenizerProfile("claude-4.5+", prose=1.04, code=1.36),
    # Claude 4 / 4.1.
    "claude-4": TokenizerProfile("claude-4", prose=1.12, code=1.27, message=5),
    # Claude 3.5 Haiku: a smaller tool-use system prompt for `auto`.
    "claude-3.5": TokenizerProfile(
        "claude-3.5", prose=1.09, code=1.22, message=5, tool_system_auto=264,
        tool_system_any=340,
    ),
}
"""Tokenizer profiles by family; `profile_for` maps model ids to them."""

_OLDER = ("claude-opus-4-1", "claude-opus-4", "claude-sonnet-4")


def profile_for(model: str) -> TokenizerProfile:
    """The tokenizer profile of a model id (unknown and newer models: ``claude-4.5+``)."""
    if model.startswith("claude-3-5") or model.startswith("claude-3"):
        return PROFILES["claude-3.5"]
    for prefix in _OLDER:
        # `claude-sonnet-4` but not `claude-sonnet-4-5`/`-4-6`; dated ids allowed.
        rest = model.removeprefix(prefix)
        if rest != model and (rest == "" or (rest.startswith("-") and rest[1:].isdigit()
                                             and len(rest) > 3)):
            return PROFILES["claude-4"]
    return PROFILES["claude-4.5+"]


_SYMBOLS = frozenset("{}[]()<>=;:\"'_/\\|#*&%$@^~`+,")


def is_code_line(line: str) -> bool:
    """Whether a line reads as code, JSON or markup rather than prose: indented by
    four or more spaces (or a tab), or at least one character in eight a symbol."""
    stripped = line.strip()
    if not stripped:
        return False
    if line.startswith(("    ", "\t")):
        return True
    symbols = sum(1 for c in stripped if c in _SYMBOLS)
    return symbols * 8 >= len(stripped)


def _runs(text: str) -> list[tuple[bool, str]]:
    """Consecutive lines grouped by kind (code or prose), newlines kept."""
    out: list[tuple[bool, str]] = []
    for line in text.splitlines(keepends=True):
        code = is_code_line(line)
        if out and out[-1][0] == code:
            out[-1] = (code, out[-1][1] + line)
        else:
            out.append((code, line))
    return out


class TokenCounter:
    """Counts prompts and replies for the fake server (thread-safe, memoized).

    Args:
        drift: Extra multiplier on every text count (1.0: the profile alone), for
            tests that want a tokenizer further from tiktoken.
        profiles: Profile per model id (default `profile_for`).
    """

    def __init__(
        self,
        drift: float = 1.0,
        profiles: Callable[[str], TokenizerProfile] = profile_for,
    ) -> None:
        self.drift = drift
        self._profiles = profiles
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str], int] = {}

    def profile(self, model: str) -> TokenizerProfile:
        return self._profiles(model)

    # ---- text -----------------------------------------------------------------
    def text(self, text: str, model: str) -> int:
        """Tokens of plain text for `model` (no framing)."""
        if not text:
            return 0
        p = self.profile(model)
        enc = get_encoder()
        total = 0.0
        for code, run in _runs(text):
            total += len(enc.encode_ordinary(run)) * (p.code if code else p.prose)
        return max(1, math.floor(total * self.drift + 0.5))

    def _memo_text(self, text: str, model: str, salt: str = "") -> int:
        key = (self.profile(model).name + salt,
               hashlib.blake2b(text.encode(), digest_size=16).hexdigest())
        with self._lock:
            found = self._memo.get(key)
        if found is not None:
            return found
        n = self.text(text, model)
        with self._lock:
            if len(self._memo) > 200_000:
                self._memo.clear()
            self._memo[key] = n
        return n

    # ---- blocks ---------------------------------------------------------------
    def content_block(self, block: Mapping[str, Any], model: str) -> int:
        """One content block (input or output): its text plus its frame."""
        p = self.profile(model)
        kind = block.get("type")
        if kind == "tool_use":
            name = str(block.get("name", ""))
            args = json.dumps(block.get("input", {}), separators=(",", ":"))
            return p.block + p.tool_use + self._memo_text(name + "\n" + args, model)
        if kind == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                body = sum(self.content_block(b, model) for b in inner if isinstance(b, dict))
            else:
                body = self._memo_text(str(inner or ""), model)
            return p.block + p.tool_result + body + (2 if block.get("is_error") else 0)
        return p.block + self._memo_text(block_text(dict(block)), model)

    def tool_definition(self, tool: Mapping[str, Any], model: str) -> int:
        p = self.profile(model)
        schema = json.dumps(tool.get("input_schema", {}), sort_keys=True)
        head = f"{tool.get('name', '')}\n{tool.get('description', '')}"
        return p.tool_definition + self._memo_text(head, model) + self._memo_text(schema, model)

    def tool_system_prompt(self, body: Mapping[str, Any]) -> int:
        """The tool-use system prompt the API adds when ``tools`` is non-empty."""
        if not body.get("tools"):
            return 0
        p = self.profile(str(body.get("model", "")))
        choice = body.get("tool_choice")
        kind = choice.get("type") if isinstance(choice, dict) else None
        return p.tool_system_any if kind in ("any", "tool") else p.tool_system_auto

    # ---- prompts --------------------------------------------------------------
    def blocks(self, body: Mapping[str, Any]) -> tuple[int, list[int], int]:
        """The prompt's count split as the prompt cache walks it.

        Returns:
            ``(fixed, per_block, trailing)``: tokens before the first block (request
            frame and tool-use system prompt), each block's tokens in prefix order
            (tools, system blocks, message blocks; a message's frame is in its first
            block, the system frame in the first system block) and tokens after the
            last block (frames of messages without blocks). They sum to the prompt.
        """
        model = str(body.get("model", ""))
        p = self.profile(model)
        fixed = p.request + self.tool_system_prompt(body)
        per_block: list[int] = []
        carry = 0
        for tool in body.get("tools") or []:
            if isinstance(tool, dict):
                per_block.append(self.tool_definition(tool, model))
        system = body.get("system")
        if isinstance(system, str):
            if system:
                per_block.append(p.system + self._memo_text(system, model))
        elif isinstance(system, list):
            for i, block in enumerate(system):
                frame = p.system if i == 0 else 0
                per_block.append(frame + self._memo_text(block_text(block), model))
        for message in body.get("messages") or []:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            carry += p.message
            for block in items or []:
                per_block.append(carry + self.content_block(block, model))
                carry = 0
        return fixed, per_block, carry

    def prompt(self, body: Mapping[str, Any]) -> int:
        """The prompt count a create call reports (``usage``: input + cache tokens)."""
        fixed, per_block, trailing = self.blocks(body)
        return fixed + sum(per_block) + trailing

    def estimate(self, body: Mapping[str, Any], exact: int | None = None) -> int:
        """What ``count_tokens`` answers: the prompt count moved by a deterministic
        fraction of at most the profile's ``count_jitter`` either way."""
        true = self.prompt(body) if exact is None else exact
        p = self.profile(str(body.get("model", "")))
        canonical = json.dumps(
            [body.get(k) for k in ("model", "system", "tools", "tool_choice", "messages")],
            sort_keys=True, default=str,
        )
        digest = hashlib.sha256(canonical.encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64 * 2 - 1  # in [-1, 1)
        return max(1, math.floor(true * (1 + p.count_jitter * u) + 0.5))

    def output(self, content: Sequence[Mapping[str, Any]], model: str) -> int:
        """Output tokens of reply blocks (block frames, no message frame)."""
        return sum(self.content_block(b, model) for b in content)
