"""Human command input exactly as it arrives, from any client (the plain `temporal` CLI too).

The session's signal and update handlers take untyped input and read it here, so a
malformed, missing, undecodable or wrongly-sent command gets a one-line reason naming the
field and the expected JSON — an update is rejected with it, a signal is answered with a
visible rejection — instead of being dropped by the SDK, failing a workflow task, or
answering a Python ``TypeError``. Pure: no Temporal calls.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from temporal_handoff.schemas.session import (
    AbortArgs,
    CommandKind,
    DecideArgs,
    SayArgs,
    TaskCommandArgs,
)
from temporal_handoff.schemas.undecodable import Undecodable

SIGNALS = (CommandKind.PAUSE, CommandKind.RESUME, CommandKind.FLUSH, CommandKind.ABORT)
UPDATES = (CommandKind.DECIDE, CommandKind.SAY, CommandKind.SKIP, CommandKind.RETRY)

_MODELS: dict[CommandKind, type[BaseModel]] = {
    CommandKind.DECIDE: DecideArgs,
    CommandKind.SAY: SayArgs,
    CommandKind.SKIP: TaskCommandArgs,
    CommandKind.RETRY: TaskCommandArgs,
    CommandKind.ABORT: AbortArgs,
}
EXAMPLES: dict[CommandKind, str] = {
    CommandKind.DECIDE: '{"blocker_id": "HD-1", "decision": "use postgres", "rationale": ""}',
    CommandKind.SAY: '{"text": "please also update the docs"}',
    CommandKind.SKIP: '{"task_id": "T-12"}',
    CommandKind.RETRY: '{"task_id": "T-12"}',
    CommandKind.ABORT: '{"reason": "stop for today"}',
}
_SHORTHAND = {CommandKind.SAY: "text", CommandKind.ABORT: "reason"}
"""A bare JSON string is accepted as this field (``--input '"stop now"'``)."""


class BadInput(ValueError):
    """The command's input cannot be read; the message says why, in one line."""


def how_to_send(kind: CommandKind) -> str:
    """The plain `temporal` CLI command for `kind`."""
    if kind in UPDATES:
        return (
            f"temporal workflow update execute --workflow-id ID --name {kind.value} "
            f"--input '{EXAMPLES[kind]}'"
        )
    example = f" --input '{EXAMPLES[kind]}'" if kind in EXAMPLES else ""
    return f"temporal workflow signal --workflow-id ID --name {kind.value}{example}"


def parse(kind: CommandKind, raw: tuple[Any, ...]) -> BaseModel | None:
    """The arguments of `kind` from its raw input (None for pause/resume/flush).

    Raises:
        BadInput: undecodable, missing, extra, malformed or unknown-field input.
    """
    for value in raw:
        if isinstance(value, Undecodable):
            raise BadInput(f"{kind.value}: input could not be decoded ({value.reason})")
    model = _MODELS.get(kind)
    if model is None:
        if any(v not in (None, {}) for v in raw):
            raise BadInput(f"{kind.value} takes no input; send: {how_to_send(kind)}")
        return None
    if len(raw) > 1:
        raise BadInput(
            f"{kind.value} takes one JSON object, got {len(raw)} inputs; "
            f"send: {how_to_send(kind)}"
        )
    value = raw[0] if raw else None
    if value is None:
        if kind == CommandKind.ABORT:
            return AbortArgs()
        raise BadInput(f"{kind.value} needs input like {EXAMPLES[kind]}")
    if isinstance(value, str) and kind in _SHORTHAND:
        value = {_SHORTHAND[kind]: value}
    if not isinstance(value, dict):
        raise BadInput(
            f"{kind.value} takes a JSON object like {EXAMPLES[kind]}, "
            f"got {type(value).__name__}"
        )
    try:
        return model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "input"
        raise BadInput(
            f"{kind.value}: field '{loc}': {first['msg']} (expected {EXAMPLES[kind]})"
        ) from None


def wrong_kind(name: str) -> str:
    """Why a signal or update named `name` does not exist here, and what to send."""
    try:
        kind = CommandKind(name)
    except ValueError:
        signals = ", ".join(k.value for k in SIGNALS)
        updates = ", ".join(k.value for k in UPDATES)
        shown = name if len(name) <= 80 else name[:80] + "…"
        return f"no command named {shown!r}; signals: {signals}; updates: {updates}"
    if kind in UPDATES:
        return f"{kind.value} is an update: {how_to_send(kind)}"
    return f"{kind.value} is a signal: {how_to_send(kind)}"
