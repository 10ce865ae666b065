"""The seed formats teams keep by hand, imported as a `ProjectState` and exported back.

- :mod:`~temporal_handoff.seeds.orchestrator`: `.orchestrator_state.json` (and
  `context_payload.json` out).
- :mod:`~temporal_handoff.seeds.context_protocol`: the context protocol's `state.json`.
- :mod:`~temporal_handoff.seeds.session_summary`: its session summaries and logs (out).
- :mod:`~temporal_handoff.seeds.preview`: what a file becomes (`handoff import --dry-run`).

Everything here is pure: text or parsed JSON in, a state or file contents out. Reading
and writing files is the CLI's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from temporal_handoff.schemas.base import validate_human
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.seeds import context_protocol, orchestrator
from temporal_handoff.seeds._fields import SeedError, first_error
from temporal_handoff.seeds.context_protocol import from_state_json
from temporal_handoff.seeds.orchestrator import from_orchestrator

__all__ = ["FORMATS", "SeedError", "SeedImport", "from_orchestrator", "from_state_json", "read_seed"]

SeedFormat = Literal["orchestrator", "state-json", "project-state"]
FORMATS = ("orchestrator", "state-json", "auto")


@dataclass
class SeedImport:
    """A seed file read as a state: its format and what was read leniently."""

    state: ProjectState
    format: SeedFormat
    warnings: list[str] = field(default_factory=list)


def read_seed(text: str, fmt: str = "auto") -> SeedImport:
    """Parse a seed file's text as `fmt` (`auto`: by its sections).

    `auto` reads an orchestrator state file, a context-protocol state.json, or else a
    `ProjectState` as JSON (strictly: an unknown field is an error).

    Raises:
        SeedError: bad JSON or a malformed field; the message names the field.
    """
    if fmt not in FORMATS:
        raise SeedError("format", f"unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SeedError("file", f"not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    warnings: list[str] = []
    if fmt == "orchestrator" or (fmt == "auto" and orchestrator.looks_like(data)):
        return SeedImport(from_orchestrator(data, warnings), "orchestrator", warnings)
    if fmt == "state-json" or (fmt == "auto" and context_protocol.looks_like(data)):
        return SeedImport(from_state_json(data, warnings), "state-json", warnings)
    if not isinstance(data, dict):
        raise SeedError("file", f"expected a JSON object, got {type(data).__name__}")
    try:
        return SeedImport(validate_human(ProjectState, data), "project-state")
    except ValidationError as err:
        raise first_error(err) from None
