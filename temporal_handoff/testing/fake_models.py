"""The fake Anthropic server's model catalogue: ids, context windows, output limits.

Figures are Anthropic's published ones (platform.claude.com model overview pages,
checked December 2026): the 5.x models (Fable 5.1, Opus/Sonnet/Haiku 5.5, Sonnet 5)
have a 1M-token window and 128K max output (release dates approximate); Claude Opus 4.6 and Sonnet 4.6 have a 1M-token context window
and 128K max output; Sonnet 4.5, Haiku 4.5 and Opus 4.5 have 200K and 64K; Opus 4 and
4.1 200K and 32K; Sonnet 4 200K and 64K; Haiku 3.5 200K and 8,192.

``stops_on_overflow`` marks models that, when prompt + ``max_tokens`` exceeds the window,
answer with ``stop_reason: "model_context_window_exceeded"`` (Sonnet 4.5 and later)
instead of the 400 "input length and `max_tokens` exceed context limit" older models
return. Pure data: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MODELS", "FakeModel", "find_model"]


@dataclass(frozen=True)
class FakeModel:
    """One model the fake serves.

    Attributes:
        id: Model id (alias), e.g. ``claude-sonnet-4-6``; dated ids
            (``<id>-YYYYMMDD``) resolve to it.
        display_name: Name shown by the Models API.
        context_window: Input + output tokens of one request (``max_input_tokens``).
        max_output_tokens: Largest accepted ``max_tokens`` (``max_tokens`` in the
            Models API).
        stops_on_overflow: See the module docstring.
        created_at: Release date (Models API ``created_at``).
    """

    id: str
    display_name: str
    context_window: int
    max_output_tokens: int
    stops_on_overflow: bool
    created_at: str


MODELS: dict[str, FakeModel] = {
    m.id: m
    for m in (
        FakeModel("claude-fable-5-1", "Claude Fable 5.1", 1_000_000, 128_000, True,
                  "2026-09-01T00:00:00Z"),
        FakeModel("claude-opus-5-5", "Claude Opus 5.5", 1_000_000, 128_000, True,
                  "2026-09-01T00:00:00Z"),
        FakeModel("claude-sonnet-5-5", "Claude Sonnet 5.5", 1_000_000, 128_000, True,
                  "2026-09-29T00:00:00Z"),
        FakeModel("claude-haiku-5-5", "Claude Haiku 5.5", 1_000_000, 128_000, True,
                  "2026-10-07T00:00:00Z"),
        FakeModel("claude-sonnet-5", "Claude Sonnet 5", 1_000_000, 128_000, True,
                  "2026-06-30T00:00:00Z"),
        FakeModel("claude-opus-4-6", "Claude Opus 4.6", 1_000_000, 128_000, True,
                  "2026-02-05T00:00:00Z"),
        FakeModel("claude-sonnet-4-6", "Claude Sonnet 4.6", 1_000_000, 128_000, True,
                  "2026-02-17T00:00:00Z"),
        FakeModel("claude-opus-4-5", "Claude Opus 4.5", 200_000, 64_000, True,
                  "2025-11-24T00:00:00Z"),
        FakeModel("claude-haiku-4-5", "Claude Haiku 4.5", 200_000, 64_000, True,
                  "2025-10-15T00:00:00Z"),
        FakeModel("claude-sonnet-4-5", "Claude Sonnet 4.5", 200_000, 64_000, True,
                  "2025-09-29T00:00:00Z"),
        FakeModel("claude-opus-4-1", "Claude Opus 4.1", 200_000, 32_000, False,
                  "2025-08-05T00:00:00Z"),
        FakeModel("claude-opus-4", "Claude Opus 4", 200_000, 32_000, False,
                  "2025-05-22T00:00:00Z"),
        FakeModel("claude-sonnet-4", "Claude Sonnet 4", 200_000, 64_000, False,
                  "2025-05-22T00:00:00Z"),
        FakeModel("claude-3-5-haiku", "Claude Haiku 3.5", 200_000, 8_192, False,
                  "2024-10-22T00:00:00Z"),
    )
}
"""The built-in catalogue, newest first (the Models API lists it in this order)."""

_DATED = re.compile(r"-\d{8}$")


def find_model(model_id: str, catalogue: Mapping[str, FakeModel] = MODELS) -> FakeModel | None:
    """The catalogue entry for ``model_id`` (exact, or alias + ``-YYYYMMDD``), else None."""
    found = catalogue.get(model_id)
    if found is None and _DATED.search(model_id):
        found = catalogue.get(_DATED.sub("", model_id))
    return found
