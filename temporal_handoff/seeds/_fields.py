"""Tolerant readers of hand-written seed files: each names the field it rejects."""

from __future__ import annotations

from typing import Any

from temporal_handoff.schemas.project import Task, TaskStatus


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: expected text, got {type(value).__name__}")
    return str(value)


def _status(value: Any, where: str) -> TaskStatus:
    text = _text(value, where).lower() or "pending"
    return TaskStatus(text) if text in TaskStatus._value2member_map_ else TaskStatus.PENDING


def _hours(value: Any, where: str) -> float:
    if value is None or value == "":
        return 1.0
    try:
        hours = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number of hours, got {value!r}") from None
    if not hours >= 0:  # also rejects NaN
        raise ValueError(f"{where}: hours must be ≥ 0, got {value!r}")
    return hours


def _raw_tasks(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [{**_dict(v, f"{where}[{k!r}]"), "id": k} for k, v in value.items()]
    items = [_dict(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]
    for i, item in enumerate(items):
        if _text(item.get("id"), f"{where}[{i}].id") == "":
            raise ValueError(f"{where}[{i}].id: missing task id")
    return items


def _import_task(raw: dict[str, Any], where: str, phase: str) -> Task:
    deps = raw.get("dependencies") if raw.get("dependencies") is not None else raw.get("depends_on")
    return Task(
        id=_text(raw["id"], f"{where}.id"),
        title=_text(raw.get("title") or raw.get("name") or raw.get("description"), f"{where}.title"),
        phase=_text(raw.get("phase"), f"{where}.phase") or phase,
        status=_status(raw.get("status"), f"{where}.status"),
        depends_on=[_text(d, f"{where}.dependencies") for d in _list(deps, f"{where}.dependencies")],
        estimate_h=_hours(raw.get("estimate_h", raw.get("estimated_hours")), f"{where}.estimate_h"),
    )


def _env(value: Any, where: str) -> dict[str, str]:
    return {str(k): _text(v, f"{where}.{k}") for k, v in _dict(value, where).items()}
