"""Find the `handoff dev` loop by itself: `.handoff/dev.env`.

`handoff dev` (and `make demo`) writes `<state dir>/dev.env` with the `export` lines
that point every other command at its server, namespace, content store and task
queue. A command run where that directory is (`.handoff` in the current directory,
or `$HANDOFF_DEV_DIR`) uses those values for whatever the environment does not set;
flags and environment variables always win. `HANDOFF_DEV_DIR=` (empty) turns the
lookup off.
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


def dev_env_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The dev loop's `dev.env` to use, or None (no such file, or lookup turned off)."""
    env = os.environ if environ is None else environ
    where = env.get(DEV_DIR_ENV)
    if where is not None and not where.strip():
        return None
    path = Path(where or DEFAULT_DEV_DIR) / ENV_FILE
    return path if path.is_file() else None


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
