"""Prompt caching for the fake Messages API, per Anthropic's documented rules.

Pure bookkeeping (no I/O; the clock is injectable), used by `FakeAnthropicServer`
to split each prompt's token count into ``input_tokens`` /
``cache_creation_input_tokens`` / ``cache_read_input_tokens`` and the
``cache_creation`` breakdown ``{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}``.

The rules modelled (Anthropic docs, "Prompt caching"):

* **Prefix order** tools → system → messages. The prompt is a sequence of blocks:
  each tool definition, each system block (a string system is one block), each
  content block of each message (string content is one text block). A cache entry
  is the hash of every block up to and including one block; the ``cache_control``
  markers themselves are not part of it, so a marker can move without changing the
  prefix. The model id is part of the key; ``tool_choice`` and ``thinking`` are part
  of the key of every message block (changing them invalidates the message cache,
  not the tools/system cache).
* **Breakpoints**: ``cache_control`` on a tool, a system block, a message content
  block (also on a block nested in ``tool_result`` content: the breakpoint is the
  enclosing block). A top-level ``cache_control`` (automatic caching) puts one
  breakpoint on the last block of the prompt, with that TTL; if that block already
  carries its own marker, it is the same breakpoint.
* **At most 4 breakpoints** per request (the automatic one included): more is 400
  ``invalid_request_error`` "A maximum of 4 blocks with cache_control may be
  provided. Found N." ``cache_control.type`` must be ``ephemeral``, ``ttl`` ``5m``
  or ``1h``; a ``1h`` breakpoint after a ``5m`` one is 400 (longer TTLs first).
* **Minimum cacheable length** per model (`min_cacheable_tokens`): a breakpoint
  whose prefix is shorter neither reads nor writes. A request with no breakpoint
  at or over the minimum reports both cache fields as 0.
* **Reads**: from each breakpoint the cache is looked up at that block and at the
  blocks before it, at most `LOOKBACK_BLOCKS` block boundaries in all (the docs'
  ~20-block lookback); the longest unexpired entry found over all breakpoints is
  read (``cache_read_input_tokens`` = its prefix length) and its TTL is refreshed.
* **Writes** happen only at breakpoints: every breakpoint past the read point
  writes its prefix with its TTL; ``cache_creation_input_tokens`` is the prompt from
  the read point to the last breakpoint, each span billed to the TTL of the
  breakpoint that ends it. ``input_tokens`` is the rest (after the last breakpoint).
* **TTL**: 5 minutes by default, ``"ttl": "1h"`` for one hour, counted from the
  last write or read, on the injectable ``clock``.

Token counts of prefixes are the server's per-block counts summed (`fake_tokens`:
request frame and tool-use system prompt first, each block with its frames), capped
at the prompt's count: so ``input_tokens +
cache_creation_input_tokens + cache_read_input_tokens`` always equals the prompt
count the server reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from temporal_handoff.activities.tokenizer import get_encoder
from temporal_handoff.schemas.model_io import block_text

__all__ = [
    "DEFAULT_MIN_CACHEABLE_TOKENS",
    "LOOKBACK_BLOCKS",
    "MAX_BREAKPOINTS",
    "MIN_CACHEABLE_TOKENS",
    "TTL_SECONDS",
    "CacheRequestError",
    "CacheSplit",
    "PromptCache",
    "min_cacheable_tokens",
]

MAX_BREAKPOINTS = 4
"""Blocks with ``cache_control`` per request (the automatic breakpoint uses one)."""
LOOKBACK_BLOCKS = 20
"""Block boundaries checked from each breakpoint backwards (the breakpoint's own included)."""
TTL_SECONDS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}
"""The two documented TTLs."""

MIN_CACHEABLE_TOKENS: dict[str, int] = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}
"""Minimum cacheable prompt length per model (the docs' table); ids match by prefix."""
DEFAULT_MIN_CACHEABLE_TOKENS = 1024
"""For model ids not in the table (e.g. test ids like ``claude-fake``)."""


def min_cacheable_tokens(model: str) -> int:
    """The minimum cacheable length for ``model`` (longest matching table key)."""
    best: str | None = None
    for key in MIN_CACHEABLE_TOKENS:
        if (model == key or model.startswith(key + "-")) and (best is None or len(key) > len(best)):
            best = key
    return MIN_CACHEABLE_TOKENS[best] if best is not None else DEFAULT_MIN_CACHEABLE_TOKENS


class CacheRequestError(ValueError):
    """The request breaks a caching rule: the server answers 400 with this message."""


@dataclass(frozen=True)
class CacheSplit:
    """How one prompt's tokens split between cache reads, writes and plain input."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h

    def usage(self, prompt_tokens: int) -> dict[str, Any]:
        """The Messages API usage fields (``output_tokens`` 0, set by the caller)."""
        return {
            "input_tokens": prompt_tokens - self.read - self.written,
            "cache_creation_input_tokens": self.written,
            "cache_read_input_tokens": self.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.write_5m,
                "ephemeral_1h_input_tokens": self.write_1h,
            },
            "output_tokens": 0,
        }


@dataclass
class _Entry:
    expiry: float  # clock seconds
    ttl: str
    tokens: int  # the prefix's length when written: what a read of it counts


@dataclass
class _Block:
    hash: str
    text: str
    ttl: str | None  # the block's breakpoint TTL, None if not a breakpoint


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _strip_marker(block: Any) -> Any:
    """The block as it is keyed: without ``cache_control`` (nested ones too)."""
    if not isinstance(block, dict):
        return block
    out = {k: v for k, v in block.items() if k != "cache_control"}
    if isinstance(out.get("content"), list):
        out["content"] = [_strip_marker(b) for b in out["content"]]
    return out


def _ttl_of(marker: Any, where: str) -> str:
    if not isinstance(marker, Mapping):
        raise CacheRequestError(f"{where}.cache_control: Input should be an object")
    if marker.get("type") != "ephemeral":
        raise CacheRequestError(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = marker.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise CacheRequestError(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def _marker_ttl(block: Any, where: str) -> tuple[str | None, int]:
    """(TTL of the block's breakpoint or None, number of markers on it and inside it)."""
    if not isinstance(block, dict):
        return None, 0
    ttls: list[str] = []
    if block.get("cache_control") is not None:
        ttls.append(_ttl_of(block["cache_control"], where))
    nested = block.get("content")
    if isinstance(nested, list):
        for j, inner in enumerate(nested):
            if isinstance(inner, dict) and inner.get("cache_control") is not None:
                ttls.append(_ttl_of(inner["cache_control"], f"{where}.content.{j}"))
    if not ttls:
        return None, 0
    # Several markers on one block are one breakpoint; the longest TTL wins.
    return ("1h" if "1h" in ttls else "5m"), len(ttls)


class PromptCache:
    """The server's prompt cache: entries keyed by prefix hash, with expiry times.

    Args:
        clock: Seconds (any epoch); TTLs are measured on it. Tests inject their own.
        count_raw: Raw token count of one block's text (default: the fake server's
            cl100k count); scaled by the ``scale`` given to `account`.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        count_raw: Callable[[str], int] | None = None,
    ) -> None:
        self.clock = clock
        self._count_raw = count_raw or (lambda text: len(get_encoder().encode_ordinary(text)))
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}  # prefix hash -> entry
        self._counts: dict[str, int] = {}  # block text digest -> raw tokens
        self._ops = 0

    def clear(self) -> None:
        """Forget every entry (the next sighting of any prefix is a write again)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        now = self.clock()
        with self._lock:
            return sum(1 for e in self._entries.values() if e.expiry > now)

    # ---- request -> blocks ---------------------------------------------------------
    def _blocks(self, body: Mapping[str, Any]) -> tuple[list[_Block], int]:
        """The prompt's blocks in prefix order, and the number of markers seen."""
        model = str(body.get("model", ""))
        h = hashlib.sha256(f"model\x00{model}".encode()).hexdigest()
        blocks: list[_Block] = []
        markers = 0

        def add(kind: str, payload: Any, text: str, ttl: str | None) -> None:
            nonlocal h
            h = hashlib.sha256(f"{h}\x00{kind}\x00{_canonical(payload)}".encode()).hexdigest()
            blocks.append(_Block(hash=h, text=text, ttl=ttl))

        for i, tool in enumerate(body.get("tools") or []):
            ttl, n = _marker_ttl(tool, f"tools.{i}")
            markers += n
            stripped = _strip_marker(tool)
            add("tool", stripped, json.dumps(stripped, sort_keys=True), ttl)
        system = body.get("system")
        if isinstance(system, str):
            if system:
                add("system", {"type": "text", "text": system}, system, None)
        elif isinstance(system, list):
            for i, block in enumerate(system):
                ttl, n = _marker_ttl(block, f"system.{i}")
                markers += n
                add("system", _strip_marker(block), block_text(block), ttl)
        context = _canonical(
            {"tool_choice": body.get("tool_choice"), "thinking": body.get("thinking")}
        )
        for m, message in enumerate(body.get("messages") or []):
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            content = message.get("content")
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for b, block in enumerate(items or []):
                ttl, n = _marker_ttl(block, f"messages.{m}.content.{b}")
                markers += n
                payload = [context, role, b == 0, _strip_marker(block)]
                add("message", payload, block_text(block), ttl)
        return blocks, markers

    def _tokens(self, text: str) -> int:
        key = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        with self._lock:
            found = self._counts.get(key)
        if found is not None:
            return found
        n = self._count_raw(text)
        with self._lock:
            if len(self._counts) > 200_000:
                self._counts.clear()
            self._counts[key] = n
        return n

    # ---- accounting ------------------------------------------------------------------
    def account(
        self,
        body: Mapping[str, Any],
        prompt_tokens: int,
        scale: float = 1.0,
        block_tokens: tuple[int, list[int]] | None = None,
    ) -> CacheSplit:
        """Apply one request to the cache; how its prompt splits into read/write/input.

        Args:
            body: The request.
            prompt_tokens: Its prompt count.
            scale: Multiplier on ``count_raw`` (when ``block_tokens`` is not given).
            block_tokens: The server's exact split of the prompt (`fake_tokens`):
                tokens before the first block, then each block's tokens in prefix
                order; prefix lengths are their running sums.

        Raises:
            CacheRequestError: a caching rule is broken (the API answers 400).
        """
        blocks, markers = self._blocks(body)
        auto = body.get("cache_control")
        if auto is not None:
            auto_ttl = _ttl_of(auto, "cache_control")
            if blocks and blocks[-1].ttl is None:
                blocks[-1].ttl = auto_ttl
                markers += 1
        if markers > MAX_BREAKPOINTS:
            raise CacheRequestError(
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {markers}."
            )
        points = [i for i, b in enumerate(blocks) if b.ttl is not None]
        seen_5m = False
        for i in points:
            if blocks[i].ttl == "5m":
                seen_5m = True
            elif seen_5m:
                raise CacheRequestError(
                    "cache_control: a breakpoint with ttl='1h' must not come after one with "
                    "ttl='5m' (longer TTLs must come first in the prompt: tools, system, "
                    "messages)"
                )
        if not points:
            return CacheSplit()

        last = points[-1]
        cumulative: list[int] = []
        if block_tokens is not None and len(block_tokens[1]) == len(blocks):
            running = block_tokens[0]
            for n in block_tokens[1][: last + 1]:
                running += n
                cumulative.append(min(prompt_tokens, running))
        else:
            # Prefix lengths up to the last breakpoint: the blocks' raw counts plus one
            # token per block boundary, scaled.
            raw = 0
            for b in blocks[: last + 1]:
                raw += self._tokens(b.text) + (1 if cumulative else 0)
                cumulative.append(min(prompt_tokens, math.ceil(raw * scale)))
        minimum = min_cacheable_tokens(str(body.get("model", "")))
        valid = [i for i in points if cumulative[i] >= minimum]
        if not valid:
            return CacheSplit()

        now = self.clock()
        with self._lock:
            self._ops += 1
            if self._ops % 1000 == 0:
                for key in [k for k, e in self._entries.items() if e.expiry <= now]:
                    del self._entries[key]
            hit: _Entry | None = None
            hit_at = -1
            for p in valid:
                for q in range(p, max(-1, p - LOOKBACK_BLOCKS), -1):
                    if q <= hit_at:
                        break
                    entry = self._entries.get(blocks[q].hash)
                    if entry is not None and entry.expiry > now:
                        hit, hit_at = entry, q
                        break
            read = 0
            if hit is not None:  # a read refreshes the entry's TTL
                read = min(hit.tokens, prompt_tokens)
                hit.expiry = now + TTL_SECONDS[hit.ttl]
            written = {"5m": 0, "1h": 0}
            start = read
            for p in valid:
                key = blocks[p].hash
                if p <= hit_at:
                    # Inside the prefix read: nothing to write; a live entry is refreshed.
                    inner = self._entries.get(key)
                    if inner is not None and inner.expiry > now:
                        inner.expiry = now + TTL_SECONDS[inner.ttl]
                    continue
                ttl = blocks[p].ttl or "5m"
                end = max(start, cumulative[p])
                written[ttl] += end - start
                start = end
                self._entries[key] = _Entry(expiry=now + TTL_SECONDS[ttl], ttl=ttl, tokens=end)
        return CacheSplit(read=read, write_5m=written["5m"], write_1h=written["1h"])
