"""Tolerant readers of hand-written seed files: each names the field it rejects.

A reader takes the value found at a field path (`tasks.task_001.dependencies`) and
returns it typed, or raises :class:`SeedError` naming that path. Values written as
`a|b|c` are the context protocol's way of listing the allowed values: a reader of a
closed set takes the first and records a warning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class SeedError(ValueError):
    """A seed file that cannot be imported; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def join(where: str, key: object) -> str:
    """`where.key`, or `key` at the top level."""
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


class Reader:
    """Reads fields and collects warnings (shown by `handoff import --dry-run`)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SeedError(where, f"expected an object, got {_kind(value)}")
        return value

    def items(self, value: Any, where: str, key: str = "id") -> list[tuple[str, Any, str]]:
        """A section written either as an object keyed by id or as a list of objects
        carrying `key` (or, failing that, `name`): `(id, item, path)` in file order."""
        if value is None:
            return []
        if isinstance(value, dict):
            return [(str(k), v, join(where, k)) for k, v in value.items()]
        out: list[tuple[str, Any, str]] = []
        for i, item in enumerate(self.seq(value, where)):
            path = f"{where}[{i}]"
            raw = self.obj(item, path)
            ident = self.text(raw.get(key), join(path, key)) or self.text(
                raw.get("name"), join(path, "name")
            )
            if not ident:
                raise SeedError(join(path, key), "missing (required)")
            out.append((ident, raw, path))
        return out

    def seq(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise SeedError(where, f"expected a list, got {_kind(value)}")
        return value

    def text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise SeedError(where, f"expected text, got {_kind(value)}")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def required_text(self, value: Any, where: str) -> str:
        text = self.text(value, where)
        if not text.strip():
            raise SeedError(where, "missing (required)")
        return text

    def ids(self, value: Any, where: str) -> list[str]:
        out = []
        for i, item in enumerate(self.seq(value, where)):
            ident = self.text(item, f"{where}[{i}]")
            if not ident:
                raise SeedError(f"{where}[{i}]", "empty id")
            out.append(ident)
        return out

    def choice(self, value: Any, where: str, allowed: dict[str, str], default: str) -> str:
        """A closed set: `allowed` maps each accepted spelling to its value.

        `a|b|c` (the protocol's list of allowed values) takes the first, with a warning.
        """
        text = self.text(value, where).strip().lower()
        if not text:
            return default
        if "|" in text:
            first = text.split("|", 1)[0].strip()
            if first in allowed:
                self.warnings.append(
                    f"{where}: {value!r} lists the allowed values; took {first!r}"
                )
                return allowed[first]
        if text not in allowed:
            names = ", ".join(sorted(set(allowed)))
            raise SeedError(where, f"unknown value {value!r} (expected one of: {names})")
        return allowed[text]

    def placeholder_text(self, value: Any, where: str) -> str:
        """Free text that may be written as `a|b` (e.g. `last_agent`): the first, warned."""
        text = self.text(value, where)
        if "|" in text and " " not in text:
            first = text.split("|", 1)[0]
            self.warnings.append(f"{where}: {text!r} lists the allowed values; took {first!r}")
            return first
        return text

    def when(self, value: Any, where: str) -> datetime | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise SeedError(where, f"expected an ISO 8601 time, got {_kind(value)}")
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SeedError(where, f"expected an ISO 8601 time, got {value!r}") from None

    def number(self, value: Any, where: str, default: float | None = None) -> float | None:
        if value is None or value == "":
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SeedError(where, f"expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except ValueError:
            raise SeedError(where, f"expected a number, got {value!r}") from None
        if math.isnan(number) or number < 0 or math.isinf(number):
            raise SeedError(where, f"expected a number ≥ 0, got {value!r}")
        return number

    def count(self, value: Any, where: str) -> int | None:
        number = self.number(value, where)
        if number is None:
            return None
        if number != int(number):
            raise SeedError(where, f"expected a whole number, got {value!r}")
        return int(number)

    def environment(self, value: Any, where: str) -> tuple[dict[str, str], dict[str, Any]]:
        """Environment values as text (what the agent reads and edits) and the structured
        originals (lists, objects, numbers), which an export writes back unchanged."""
        text: dict[str, str] = {}
        structured: dict[str, Any] = {}
        for key, raw in self.obj(value, where).items():
            if isinstance(raw, str):
                text[str(key)] = raw
            else:
                text[str(key)] = env_text(raw)
                structured[str(key)] = raw
        return text, structured


def env_text(value: Any) -> str:
    """How a structured environment value reads as text (compact JSON)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def first_error(err: ValidationError, prefix: str = "") -> SeedError:
    """A pydantic error as a SeedError naming its field (the first one)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    if loc:
        return SeedError(join(prefix, loc), msg)
    field, sep, problem = msg.partition(": ")  # a model check names its own field
    return SeedError(join(prefix, field), problem) if sep else SeedError(prefix or "file", msg)


def make(model: type[M], where: str, **fields: Any) -> M:
    """`model(**fields)`, its own checks (lengths, ids) as a SeedError under `where`."""
    try:
        return model(**fields)
    except ValidationError as err:
        raise first_error(err, where) from None


def read_with(
    read: Callable[[Reader, dict[str, Any]], T], data: Any, warnings: list[str] | None
) -> T:
    """Run an importer's reader on a JSON object, adding what it read leniently to
    `warnings`."""
    if not isinstance(data, dict):
        raise SeedError("file", f"expected a JSON object, got {type(data).__name__}")
    r = Reader()
    try:
        return read(r, data)
    except ValidationError as err:  # a model's own check not wrapped by `make`
        raise first_error(err) from None
    finally:
        if warnings is not None:
            warnings.extend(r.warnings)
