"""A generation whose first model call the pre-flight refused (issue 15).

Before patch `zero-call-guard-1`, such a generation handed off, its successor's prompt
(system prompt, tools, continuation prompt) was as large, its first call was refused the
same way, and generations climbed with zero model calls until `max_generations`.
Sessions from the patch on do this instead:

- the prompt fits under the handoff threshold, only `max_tokens` does not fit beside
  it: the turn's `max_tokens` shrinks to what fits (room up to the threshold when there
  is, never below `min_max_tokens`) and the call is made;
- otherwise no call of this generation can be sent (also when the API itself refuses
  the first call as too long, which the pre-flight let through). One handoff may still
  help (generation 0's successor opens with a continuation prompt instead of the project
  listing; human text flushed into the first call goes into the payload within its
  budget), so the session hands off once; a generation seeded by a handoff from a
  generation that made no call either stops with CONFIG_ERROR whose message names the
  numbers and the fix (its result resumes with `handoff start --resume-from` and a
  fixed config).

Pure arithmetic on the refusal's numbers: deterministic, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from temporal_handoff.schemas.estimator import COUNT_TOKENS_MARGIN
from temporal_handoff.schemas.model_io import ModelResponse

ZERO_CALL_PATCH = "zero-call-guard-1"
FIRST_CALL_CUT_PATCH = "first-call-cut-1"
"""A generation with no reply kept, seeded by a generation that made no progress either,
raises the max_tokens blocker when its reply is cut instead of growing it (refused) and
handing off again (its successor's first prompt would be as large)."""

FIX = (
    "Fix: raise context_window (or use a model with a larger window), lower max_tokens, "
    "raise handoff_threshold, or lower compression_level / level_budgets (or shorten the "
    "system prompt and tools); then `handoff start --resume-from <session id>`."
)


@dataclass(frozen=True)
class FirstCallVerdict:
    max_tokens: int | None = None
    """Send the call again with this `max_tokens` (None: no call fits)."""
    message: str = ""
    """Why no call of this generation fits, with the numbers and the fix."""


def refused_prompt_tokens(resp: ModelResponse) -> int:
    """The refused prompt's size: the exact count (with its margin) if the pre-flight
    asked for one, else its estimate."""
    if resp.counted_prompt_tokens is not None:
        return math.ceil(resp.counted_prompt_tokens * (1 + COUNT_TOKENS_MARGIN))
    return resp.estimated_prompt_tokens


def first_call_verdict(
    prompt: int,
    max_tokens: int,
    window: int,
    threshold: float,
    min_max_tokens: int,
    generation: int,
    configured_max_tokens: int | None = None,
) -> FirstCallVerdict:
    """What to do when the pre-flight refused a generation's first call.

    Args:
        prompt: the refused prompt's tokens (`refused_prompt_tokens`).
        max_tokens: the `max_tokens` the refused call asked for.
        window: the model's context window.
        threshold: the handoff threshold (fraction of the window).
        min_max_tokens: the smallest `max_tokens` worth a call.
        generation: the generation (for the message).
        configured_max_tokens: the config's `max_tokens`, if the call asked for less
            (lowered to the window's room; for the message).
    """
    usable = int(threshold * window)
    asked = f"max_tokens {max_tokens:,}"
    if configured_max_tokens is not None and configured_max_tokens != max_tokens:
        asked += f" (configured {configured_max_tokens:,})"
    room = window - prompt
    numbers = (
        f"generation {generation}'s first call needs a prompt of {prompt:,} tokens (system "
        f"prompt, tools and opening or continuation prompt) + {asked}; the "
        f"window is {window:,} tokens and the handoff threshold {threshold} × {window:,} = "
        f"{usable:,}"
    )
    if prompt > usable:
        return FirstCallVerdict(
            message=f"context_window: {numbers}. The prompt alone is over the threshold, "
            f"as was the previous generation's: another handoff would only repeat it. {FIX}"
        )
    # Room for the conversation to grow up to the threshold, as a generation whose
    # `max_tokens` fits has; at least `min_max_tokens` when the window leaves that.
    fit = min(room, max(window - usable, min_max_tokens))
    if fit < min_max_tokens:
        return FirstCallVerdict(
            message=f"context_window: {numbers}. Beside the prompt the window leaves {room:,} "
            f"tokens for the reply, below min_max_tokens {min_max_tokens:,}. {FIX}"
        )
    if fit >= max_tokens:
        # Already refused with a max_tokens that fits (the exact count came out larger
        # than the estimate, or could not be had): a smaller one would be no better.
        return FirstCallVerdict(
            message=f"context_window: {numbers}. It was refused even with max_tokens lowered "
            f"to what fits beside the prompt. {FIX}"
        )
    return FirstCallVerdict(max_tokens=fit)


def overflow_message(
    api_message: str, max_tokens: int, window: int, threshold: float, generation: int
) -> str:
    """Why a seeded generation stops when the API refused its first call as too long
    although the pre-flight let it through (the CONFIG_ERROR message)."""
    return (
        f"context_window: the API refused generation {generation}'s first call as too long "
        f"({api_message[:300]}) with max_tokens {max_tokens:,}, though the pre-flight took the "
        f"window to be {window:,} tokens (handoff threshold {threshold} × {window:,} = "
        f"{int(threshold * window):,}): is context_window larger than the model's? The "
        f"previous generation ended without a call too: another handoff would only repeat it. {FIX}"
    )
