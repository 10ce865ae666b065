"""Where the model call puts its prompt-cache breakpoints on the conversation.

The session's prompt is tools → system (base prompt + handoff prompt, marked by the
workflow) → messages. Without a breakpoint on the messages, every turn pays full
price for the whole conversation. So each call adds a **moving breakpoint** on the
last content block of the latest message: the call writes the prompt up to there,
and the next call (whose breakpoint has moved on) reads it back from the cache and
pays full price only for what is new.

The real cache looks for an earlier entry at most ~20 blocks back from a breakpoint;
a turn with many parallel tool calls adds more blocks than that (each `tool_use` and
each `tool_result` is a block). So a second breakpoint stays on the previous call's
last message (the message before the latest assistant reply), whose entry the
previous call wrote: the read never depends on the lookback. At most 4 breakpoints
per request: conversation breakpoints are added only while slots are free.

TTL: every breakpoint of a request gets the TTL the workflow chose for the call
(`schemas.cache_ttl`); "1h" also upgrades the system breakpoints, because the API
refuses a 1-hour breakpoint after a 5-minute one (longer TTLs first: tools, system,
messages). A read refreshes an entry with its own TTL, so a 1-hour entry written
before a human wait is still read by the call after it, whatever that call's TTL.

Pure (no I/O): called by the `call_model` activity on a copy of the request's
messages; the workflow's own messages (and history) are unchanged.
"""

from __future__ import annotations

from typing import Any

MAX_BREAKPOINTS = 4
"""The Messages API's limit on blocks with ``cache_control`` per request."""
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})


def _markers(block: Any) -> int:
    if not isinstance(block, dict):
        return 0
    n = 1 if block.get("cache_control") is not None else 0
    inner = block.get("content")
    if isinstance(inner, list):
        n += sum(1 for b in inner if isinstance(b, dict) and b.get("cache_control") is not None)
    return n


def count_breakpoints(
    system: list[dict[str, Any]] | str | None,
    tools: list[dict[str, Any]] | None,
    messages: list[dict[str, Any]],
) -> int:
    """Blocks carrying ``cache_control`` in a request (nested ones included)."""
    n = sum(_markers(t) for t in tools or [])
    if isinstance(system, list):
        n += sum(_markers(b) for b in system)
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(_markers(b) for b in content)
    return n


def _markable(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") in _UNMARKABLE:
        return False
    return not (block.get("type") == "text" and not block.get("text"))


def _mark(message: dict[str, Any], ttl: str | None) -> dict[str, Any] | None:
    """A copy of ``message`` with its last markable block marked, or None if none is."""
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return None
        blocks: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        blocks = list(content)
    else:
        return None
    marker = _marker(ttl)
    for i in range(len(blocks) - 1, -1, -1):
        block = blocks[i]
        if not _markable(block):
            continue
        if block.get("cache_control") is not None:
            return None  # already a breakpoint
        blocks[i] = {**block, "cache_control": marker}
        return {**message, "content": blocks}
    return None


def _marker(ttl: str | None) -> dict[str, Any]:
    """A breakpoint marker; 5 minutes is the API's default, so it is left implicit."""
    return {"type": "ephemeral", "ttl": ttl} if ttl not in (None, "5m") else {"type": "ephemeral"}


def system_with_ttl(system: list[dict[str, Any]], ttl: str | None) -> list[dict[str, Any]]:
    """``system`` with every breakpoint set to ``ttl`` (a new list; input untouched).

    Only "1h" changes anything: the system breakpoints then come first with the same
    TTL as the conversation's, as the API requires."""
    if ttl != "1h":
        return system
    return [
        {**b, "cache_control": _marker(ttl)}
        if isinstance(b, dict) and b.get("cache_control") is not None
        else b
        for b in system
    ]


def with_conversation_breakpoints(
    messages: list[dict[str, Any]],
    system: list[dict[str, Any]] | str | None = None,
    tools: list[dict[str, Any]] | None = None,
    ttl: str | None = None,
) -> list[dict[str, Any]]:
    """``messages`` with the moving breakpoint(s) added (a new list; inputs untouched).

    Marks the last block of the latest message, then the last block of the message
    before the latest assistant reply (the previous call's last message), as long as
    the request stays within `MAX_BREAKPOINTS`.
    """
    free = MAX_BREAKPOINTS - count_breakpoints(system, tools, messages)
    if free <= 0 or not messages:
        return messages
    targets = [len(messages) - 1]
    last_reply = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"),
        None,
    )
    if last_reply is not None and last_reply >= 1 and last_reply - 1 != targets[0]:
        targets.append(last_reply - 1)
    out = list(messages)
    for index in targets:
        if free <= 0:
            break
        marked = _mark(out[index], ttl)
        if marked is not None:
            out[index] = marked
            free -= 1
    return out
