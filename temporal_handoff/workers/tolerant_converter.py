"""A data converter whose decoding never raises: an unreadable payload becomes a marker.

The SDK decodes a workflow activation in three passes (codec-decode of external-storage
references, external retrieval, codec-decode) before any workflow code runs; one bad
payload anywhere fails the whole activation, so a single crafted signal would fail every
workflow task of the session from then on. Each pass here runs as the SDK's; if it raises,
the payloads are retried one by one and each one that still fails is replaced with
:func:`temporal_handoff.schemas.undecodable.marker` naming the cause, which the payload
converter then turns into a value or a clear error (see that module).

These three hooks are private SDK methods (checked against temporalio 1.35); the test
``tests/test_untrusted_input.py`` fails if a new SDK version stops calling them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter

from temporal_handoff.schemas.model_io import ModelRequest
from temporal_handoff.schemas.undecodable import (
    Undecodable,
    UndecodablePayloadConverter,
    in_workflow_code,
    is_marker,
    marker,
)
from temporal_handoff.workers.storage import CONTENT_METADATA, CONVERSATION

log = logging.getLogger(__name__)

_Pass = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


class HandoffPayloadConverter(PydanticPayloadConverter):
    """Pydantic JSON conversion plus the undecodable marker (read-only), and the
    conversation mark the content store selects on.

    Inside a workflow, untyped input (the session's command handlers) that no converter
    can read — an unknown encoding, bytes that are not JSON — becomes an
    :class:`Undecodable` too, so the handler can answer it visibly.
    """

    def __init__(self) -> None:
        super().__init__()
        converters = [*self.converters.values(), UndecodablePayloadConverter()]
        super(PydanticPayloadConverter, self).__init__(*converters)

    def to_payloads(self, values: Sequence[Any]) -> list[Payload]:
        """Pydantic JSON; a conversation (a `call_model` request) is marked so the
        content store takes it and leaves the rest inline (see `workers.storage`)."""
        payloads = super().to_payloads(values)
        for value, payload in zip(values, payloads, strict=True):
            if isinstance(value, ModelRequest):
                payload.metadata[CONTENT_METADATA] = CONVERSATION
        return payloads

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: list[type] | None = None
    ) -> list[Any]:
        try:
            return super().from_payloads(payloads, type_hints)
        except Exception:
            if not in_workflow_code():
                raise
        hints = list(type_hints or [])
        hints += [None] * (len(payloads) - len(hints))  # type: ignore[list-item]
        out: list[Any] = []
        for payload, hint in zip(payloads, hints, strict=False):
            try:
                out.extend(super().from_payloads([payload], [hint] if hint else None))
            except Exception as err:
                if hint is not None and hint is not Any:
                    raise
                encoding = payload.metadata.get("encoding", b"?").decode("utf-8", "replace")
                out.append(Undecodable(f"{encoding[:80]}: {type(err).__name__}: {err}"))
        return out


async def _one_by_one(step: _Pass, payloads: Sequence[Payload], what: str) -> list[Payload]:
    try:
        return await step(payloads)
    except Exception:
        if not payloads:
            raise
    out: list[Payload] = []
    for payload in payloads:
        if is_marker(payload):
            out.append(payload)
            continue
        try:
            out.extend(await step([payload]))
        except Exception as err:
            reason = f"{what}: {type(err).__name__}: {err}"
            log.warning("payload could not be decoded (%s)", reason)
            out.append(marker(reason))
    return out


@dataclasses.dataclass(frozen=True)
class TolerantDataConverter(DataConverter):
    """:class:`DataConverter` whose decode passes replace unreadable payloads with markers."""

    @classmethod
    def from_converter(cls, base: DataConverter) -> TolerantDataConverter:
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
        return cls(**fields)

    async def _decode_reference_payload_sequence(
        self, payloads: Sequence[Payload]
    ) -> list[Payload]:
        step = super()._decode_reference_payload_sequence
        return await _one_by_one(step, payloads, "storage reference")

    async def _external_retrieve_payload_sequence(
        self, payloads: Sequence[Payload]
    ) -> list[Payload]:
        step = super()._external_retrieve_payload_sequence
        return await _one_by_one(step, payloads, "external storage")

    async def _decode_payload_sequence(self, payloads: Sequence[Payload]) -> list[Payload]:
        step = super()._decode_payload_sequence
        return await _one_by_one(step, payloads, "codec")
