"""The two kinds of model, and where each kind of strictness applies.

Every pydantic model of the project is one of:

* :class:`DurableModel` — crosses worker versions: workflow inputs and results, activity
  inputs and results, internal signals (the session's ``delta``/``seal`` to its handoff
  child), query answers, the handoff payload and everything nested in them. Unknown
  fields are **ignored**, so during a rolling deploy (or a rollback) an older worker
  decodes what a newer one wrote, and a newer worker decodes an older input because
  every field added later has a default. A decoding failure here would be permanent:
  `pydantic.ValidationError` fails the workflow, and the SDK drops a signal it cannot
  decode.
* :class:`HumanInput` — typed by a person: the arguments of the human commands
  (updates and signals such as ``decide``, ``say``, ``abort``). Unknown fields are
  **rejected** with the field named, so a typo is an error, never silently dropped.

Some durable models are also written by hand (`SessionConfig` in ``--config``,
`ProjectState` in ``--project``, a `HandoffDocument` file): read those with
:func:`validate_human`, which rejects an unknown field at any depth and names it, while
the same model decoded from a payload stays tolerant. Durable data re-validated inside
the workflow with a human model (a queued command's arguments carried across
continue-as-new) goes through :func:`validate_durable`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

M = TypeVar("M", bound=BaseModel)


class DurableModel(BaseModel):
    """A model that crosses worker versions: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class HumanInput(BaseModel):
    """A model typed by a person: an unknown field is an error that names it."""

    model_config = ConfigDict(extra="forbid")


def validate_human(model: type[M], data: Any) -> M:
    """Validate hand-written `data` (a dict, or JSON text) as `model`, rejecting an
    unknown field at any depth; the error's location names it (``tasks.t1.color``).

    Raises:
        pydantic.ValidationError: invalid or unknown fields.
    """
    if isinstance(data, str | bytes | bytearray):
        return model.model_validate_json(data, extra="forbid")
    return model.model_validate(data, extra="forbid")


def validate_durable(model: type[M], data: Any) -> M:
    """Validate data written by any worker version as `model`, ignoring unknown fields
    at any depth (also for a :class:`HumanInput` model, whose arguments were checked
    strictly when the command arrived)."""
    return model.model_validate(data, extra="ignore")
