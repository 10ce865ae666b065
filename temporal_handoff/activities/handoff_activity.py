"""The `build_handoff` activity: build the document and pack its prompt with tiktoken."""

from __future__ import annotations

from pydantic import Field, field_validator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from temporal_handoff.activities.tokenizer import count_tokens
from temporal_handoff.agent_note import without_notes
from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.probe import derive_probes, find_misses, miss_labels
from temporal_handoff.documents.render import LEVEL_ORDER, default_budgets, render_prompt
from temporal_handoff.schemas.base import DurableModel
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import PAYLOAD_TOO_LARGE, HandoffContext, HandoffPayload
from temporal_handoff.schemas.project import ProjectState

__all__ = ["BuildHandoffInput", "build_handoff", "render_payload", "PAYLOAD_TOO_LARGE"]

"""ApplicationError type raised when the serialized payload exceeds the cap."""


class BuildHandoffInput(DurableModel):
    """Input of the `build_handoff` activity."""

    state: ProjectState
    context: HandoffContext
    level: CompressionLevel = CompressionLevel.STANDARD
    budgets: dict[CompressionLevel, int] = Field(default_factory=default_budgets)
    """Token budget per level; levels left out keep their defaults."""
    calibration: float = Field(default=1.0, gt=0)
    """Multiplier from tiktoken counts to the model's tokens."""
    max_payload_bytes: int = Field(default=256 * 1024, ge=1)

    @field_validator("budgets")
    @classmethod
    def _complete_budgets(cls, v: dict[CompressionLevel, int]) -> dict[CompressionLevel, int]:
        out = default_budgets()
        for level, budget in v.items():
            if budget < 50:
                raise ValueError(f"budget for level '{level.value}' must be ≥ 50 tokens")
            out[level] = budget
        return out


def render_payload(inp: BuildHandoffInput) -> HandoffPayload:
    """Build the document, render it within budget and probe the prompt (sync).

    Token counts are tiktoken × calibration. Every critical item of the document is
    probed in the rendered prompt (`documents.probe`); on a miss the next level is
    rendered, up to the top one, and what is still missing there is recorded in the
    payload (`probe_missed`, `probe_misses`, `note`): nothing is dropped silently.
    """
    doc = build_document(inp.state, inp.context)
    probes = derive_probes(doc)
    level = inp.level
    missed_at: list[str] = []
    while True:
        payload = render_prompt(
            doc,
            level=level,
            budgets=inp.budgets,
            count=count_tokens,
            calibration=inp.calibration,
        )
        # What the agent's note says does not count: only the state's own lines do.
        misses = find_misses(probes, without_notes(payload.prompt))
        at = LEVEL_ORDER.index(payload.level)
        if not misses or at == len(LEVEL_ORDER) - 1:
            break
        missed_at.append(f"{payload.level.value} ({len(misses)})")
        level = LEVEL_ORDER[at + 1]
    notes = [payload.note] if payload.note else []
    if missed_at:
        notes.insert(
            0,
            f"probe: critical items incomplete at {', '.join(missed_at)}; rendered at "
            f"{payload.level.value}",
        )
    if misses:
        notes.append(f"probe: {len(misses)} critical item(s) incomplete even at {payload.level.value}")
    return payload.model_copy(
        update={
            "requested_level": inp.level,
            "escalated": payload.escalated or bool(missed_at),
            "note": "; ".join(notes),
            "probes": len(probes),
            "probe_missed": len(misses),
            "probe_misses": miss_labels(misses),
        }
    )


@activity.defn(name="build_handoff")
async def build_handoff(inp: BuildHandoffInput) -> HandoffPayload:
    """Build the handoff payload for a session's successor.

    Args:
        inp: State, context, level, budgets and calibration.

    Returns:
        The payload; ``prompt_tokens`` never exceeds ``budget``.

    Raises:
        ApplicationError: type ``HandoffPayloadTooLarge`` (non-retryable) when the
            serialized payload exceeds ``max_payload_bytes``; retrying cannot help.
    """
    payload = render_payload(inp)
    assert payload.document is not None
    size = len(payload.model_dump_json().encode("utf-8"))
    if size > inp.max_payload_bytes:
        raise ApplicationError(
            f"handoff payload for session {inp.context.session_id!r} generation "
            f"{inp.context.generation} is {size:,} bytes, over max_payload_bytes="
            f"{inp.max_payload_bytes:,} (critical sections: "
            f"{len(payload.document.open_blockers)} open blockers, "
            f"{len(payload.document.failed_tasks)} failed tasks, "
            f"{len(payload.document.next_eligible)} eligible tasks)",
            type=PAYLOAD_TOO_LARGE,
            non_retryable=True,
        )
    activity.logger.info("handoff payload: %s (%d bytes)", payload.summary(), size)
    return payload
