"""A payload this worker could not read, carried as a value instead of an exception.

Temporal decodes every payload of a workflow activation (codec, external storage) before
any workflow code runs, so one signal or update whose payload cannot be decoded — a
forged storage reference, an unknown codec key id, a tampered ciphertext, garbage bytes —
would fail every workflow task from then on: anyone who can signal a session could freeze
it. :class:`~temporal_handoff.workers.tolerant_converter.TolerantDataConverter` instead
replaces such a payload with an *undecodable marker*, and :class:`UndecodablePayloadConverter`
turns the marker into:

- an :class:`Undecodable` value where the handler takes untyped input (the session's
  signal and update handlers, which answer it with a visible rejection);
- a ``PayloadUndecodableError`` naming the cause everywhere else: where workflow code
  expects a typed value (its own input, an activity or child result — the session's *own*
  payloads), the workflow task fails with that one-line cause. Failing the run instead is
  not possible while history is replayed (it would be a nondeterminism error), and this
  way restoring the blob or key lets the session continue by itself (README "Operating
  sessions"). Outside workflows (clients, the CLI) it is an ordinary error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.converter import EncodingPayloadConverter

ENCODING = "binary/handoff-undecodable"
_REASON_MAX = 500


def in_workflow_code() -> bool:
    """True while workflow code or a workflow activation's jobs (signal, update and
    query arguments) run: the event loop is not running while jobs are applied, so
    ``workflow.in_workflow()`` alone misses them; the sandbox flag does not."""
    return workflow.in_workflow() or workflow.unsafe.in_sandbox()


class PayloadUndecodableError(ValueError):
    """A payload could not be decoded (outside a workflow)."""


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a handler argument whose payload could not be decoded."""

    reason: str


def marker(reason: str) -> Payload:
    """The payload that replaces one that could not be decoded (no original bytes kept)."""
    text = " ".join(reason.split())[:_REASON_MAX] or "unknown error"
    return Payload(metadata={"encoding": ENCODING.encode()}, data=text.encode("utf-8"))


def is_marker(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING.encode()


class UndecodablePayloadConverter(EncodingPayloadConverter):
    """Reads the marker; never writes one (``to_payload`` declines every value)."""

    @property
    def encoding(self) -> str:
        return ENCODING

    def to_payload(self, value: Any) -> Payload | None:
        return None

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        reason = payload.data.decode("utf-8", "replace")
        if in_workflow_code() and (type_hint is None or type_hint is Any):
            return Undecodable(reason)
        raise PayloadUndecodableError(f"payload could not be decoded: {reason}")
