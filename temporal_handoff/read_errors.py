"""One-line explanations for a client that cannot read a session's payloads.

Every `handoff` command that reads history decodes it with the content store
(`HANDOFF_STORAGE_DIR`) and codec (`HANDOFF_CODEC_KEYS`) of the environment. When
the history holds store references and no store is configured, or the store lacks a
blob, the SDK's message ("[TMPRL1105] Detected externally stored payload(s) …") does
not say what to do; `explain` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from temporalio.client import WorkflowHistory

from temporal_handoff.workers.worker import CODEC_KEYS_ENV, STORAGE_DIR_ENV

__all__ = ["REFERENCE_TYPE", "explain", "history_needs_store"]

REFERENCE_TYPE = b"temporal.api.sdk.v1.ExternalStorageReference"
"""``messageType`` metadata of a content-store reference payload."""

_NO_STORE = "TMPRL1105"
_DEV_HINT = "after `handoff dev` or `make demo`: source .handoff/dev.env"


def history_needs_store(histories: Iterable[WorkflowHistory]) -> bool:
    """True if any event of these histories holds a content-store reference."""
    return any(
        REFERENCE_TYPE in event.SerializeToString() for h in histories for event in h.events
    )


def no_store_message() -> str:
    return (
        "the history holds content-store references and no store is configured: set "
        f"{STORAGE_DIR_ENV} to the directory the workers use ({_DEV_HINT})"
    )


def explain(err: BaseException) -> str | None:
    """A one-line cause and fix for an unreadable payload, or None if `err` is not one."""
    text = " ".join(str(err).split())
    if _NO_STORE in text:
        return no_store_message()
    if "BlobUnavailableError" in text or type(err).__name__ == "BlobUnavailableError":
        where = os.environ.get(STORAGE_DIR_ENV, "")
        return (
            f"the content store {where or '(none)'} lacks a payload this history references "
            f"(another directory, or collected by gc): {text[:300]}"
        )
    if "encryption-key-id" in text or "encrypted with key id" in text or (
        "binary/encrypted" in text
    ):
        return f"payloads are encrypted: set {CODEC_KEYS_ENV} to the workers' keys ({text[:200]})"
    return None
