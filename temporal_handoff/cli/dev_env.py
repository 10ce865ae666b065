"""Find the `handoff dev` loop by itself: `.handoff/dev.env`.

`handoff dev` (and `make demo`) writes `<state dir>/dev.env` with the `export` lines
that point every other command at its server, namespace, content store and task
queue. A command uses those values for whatever the environment does not set. Which
file, first match wins (flags and environment variables always win over any file):

1. `$HANDOFF_DEV_DIR/dev.env` when the variable is set (`HANDOFF_DEV_DIR=`, empty,
   turns the lookup off);
2. the nearest `.handoff/dev.env` from the current directory up, as git finds `.git`:
   the current directory, its parent, and so on, up to the user's home directory
   (included) or the filesystem root.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DEV_DIR_ENV", "KEYS", "dev_env_file", "discovered", "read_dev_env"]

DEV_DIR_ENV = "HANDOFF_DEV_DIR"
DEFAULT_DEV_DIR = ".handoff"
ENV_FILE = "dev.env"
KEYS = ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "HANDOFF_STORAGE_DIR", "HANDOFF_TASK_QUEUE")
"""What a command takes from the file (not the codec server's token: commands do not
need it)."""


def dev_env_file(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Path | None:
    """The dev loop's `dev.env` to use, or None (no such file, or lookup turned off).

    Args:
        environ: the environment (default `os.environ`): `HANDOFF_DEV_DIR`, `HOME`.
        cwd: where the walk up starts (default the current directory).
    """
    env = os.environ if environ is None else environ
    where = env.get(DEV_DIR_ENV)
    if where is not None:
        if not where.strip():
            return None
        path = Path(where) / ENV_FILE
        return path if path.is_file() else None
    here = Path.cwd() if cwd is None else cwd
    for directory in _upward(here, _home(env)):
        path = directory / DEFAULT_DEV_DIR / ENV_FILE
        if path.is_file():
            # In the current directory the path stays as short as people type it.
            return Path(DEFAULT_DEV_DIR) / ENV_FILE if cwd is None and directory == here else path
    return None


def _home(env: Mapping[str, str]) -> Path | None:
    home = env.get("HOME")
    if home:
        return Path(home)
    try:
        return Path.home()
    except (RuntimeError, KeyError):  # no home directory known
        return None


def _upward(start: Path, home: Path | None) -> list[Path]:
    """`start` and its parents, up to `home` (included) or the filesystem root."""
    start = Path(os.path.abspath(start))
    stop = Path(os.path.abspath(home)) if home is not None else None
    out = [start]
    for parent in start.parents:
        if out[-1] == stop:
            break
        out.append(parent)
    return out


def read_dev_env(path: Path) -> dict[str, str]:
    """The `export KEY=VALUE` lines of `path` for the keys in `KEYS`.

    Anything else (comments, other variables, a line that does not parse) is ignored:
    the file is written by `handoff dev`, and a command must not fail on it.
    """
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return out
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            if key in KEYS and value:
                out[key] = value
    return out


def discovered(environ: Mapping[str, str] | None = None) -> tuple[Path | None, dict[str, str]]:
    """The dev loop's file and the values it gives that the environment leaves unset."""
    env = os.environ if environ is None else environ
    path = dev_env_file(env)
    if path is None:
        return None, {}
    values = read_dev_env(path)
    return path, {k: v for k, v in values.items() if not env.get(k, "").strip()}
