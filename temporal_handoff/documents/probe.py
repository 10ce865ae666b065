"""Probe a rendered continuation prompt for every critical item of its document.

Before a predecessor's context is discarded, the handoff checks that the prompt its
successor will read still holds what must never be lost:

* every open blocker (its id),
* every human decision, with its text and rationale,
* every failed task, with its current error,
* the current phase,
* every next eligible task (in-progress work is among them: a task being worked on
  is not done and its dependencies are),
* every todo about a task still to do (what the predecessor was in the middle of),

A text "is there" when its first :data:`PROBE_TEXT_CHARS` characters are, as the
renderer writes them (:func:`documents.lines.clean`, escaped if a person wrote them):
the minimal level shows that
much of every critical text, and the rest of a longer text is one `recall` away (the
clipped line says so). Pure (stdlib only): `build_handoff` runs the probes on every
render, escalates the level on a miss and records what is still missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from temporal_handoff.documents.lines import clean
from temporal_handoff.human_text import escape
from temporal_handoff.schemas.handoff import HandoffDocument

__all__ = ["PROBE_TEXT_CHARS", "Probe", "derive_probes", "find_misses", "miss_labels"]

PROBE_TEXT_CHARS = 120
"""How much of a critical text (decision, rationale, error) the prompt must hold."""

_TICKED_RE = re.compile(r"`([^`\n]+)`")

MAX_MISS_LABELS = 50
"""Labels kept in a payload; further misses are counted in one last label."""


@dataclass(frozen=True)
class Probe:
    """One critical item: the strings the prompt must contain for it to be there."""

    kind: str
    """``open blocker``, ``human decision``, ``failed task``, ``phase``, ``next eligible``."""
    item: str
    """The item's id."""
    needles: tuple[tuple[str, str], ...]
    """(part, text) pairs: ``id`` → the backticked id, ``text``/``rationale``/``error``
    → the start of that text as rendered."""

    def missing(self, prompt: str, ticked: set[str] | None = None) -> list[str]:
        """The parts of this item the prompt lacks (empty: the item is there).

        `ticked`: the prompt's backticked tokens, to find most ids without a scan each.
        """
        return [
            part
            for part, text in self.needles
            if not ((part == "id" and ticked is not None and text[1:-1] in ticked) or text in prompt)
        ]

    def label(self, parts: list[str]) -> str:
        return f"{self.kind} `{self.item}`: {', '.join(parts)} missing"


def _text(text: str, human: bool = False) -> str:
    """The start of `text` as the renderer writes it: cleaned, and escaped if a person
    wrote it (`human_text`); a clip to at least this many characters keeps it whole."""
    start = clean(text)[:PROBE_TEXT_CHARS].rstrip()
    return escape(start) if human else start


def _probe(kind: str, item: str, human: bool = False, **texts: str) -> Probe:
    needles = [("id", f"`{item}`")]
    needles += [(part, _text(t, human)) for part, t in texts.items() if _text(t)]
    return Probe(kind=kind, item=item, needles=tuple(needles))


def derive_probes(doc: HandoffDocument) -> list[Probe]:
    """Every critical item of `doc`, in the order the prompt lists them."""
    out: list[Probe] = []
    if doc.progress.current_phase:
        out.append(_probe("phase", doc.progress.current_phase))
    out += [_probe("open blocker", b.id) for b in doc.open_blockers]
    out += [
        _probe("human decision", d.id, human=True, text=d.title, rationale=d.rationale)
        for d in doc.human_decisions
    ]
    out += [_probe("failed task", f.id, error=f.error) for f in doc.failed_tasks]
    # Work in progress: the todo naming a task still to do, by its first task id.
    out += [
        _probe("in progress", ids[0], text=todo)
        for todo in doc.in_progress
        if (ids := _TICKED_RE.findall(todo))
    ]
    out += [_probe("next eligible", t.id) for t in doc.next_eligible]
    return out


def find_misses(probes: list[Probe], prompt: str) -> list[tuple[Probe, list[str]]]:
    """The probes whose item is not (wholly) in `prompt`, with the parts missing."""
    ticked = set(_TICKED_RE.findall(prompt))
    out = []
    for p in probes:
        parts = p.missing(prompt, ticked)
        if parts:
            out.append((p, parts))
    return out


def miss_labels(misses: list[tuple[Probe, list[str]]]) -> list[str]:
    """One short label per miss (ids and part names only, never the texts)."""
    labels = [p.label(parts) for p, parts in misses]
    if len(labels) > MAX_MISS_LABELS:
        rest = len(labels) - (MAX_MISS_LABELS - 1)
        labels = labels[: MAX_MISS_LABELS - 1] + [f"… and {rest} more"]
    return labels
