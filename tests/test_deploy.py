"""The deployment files: `docker-compose config` validates the compose file, and the
services, healthchecks, dependencies, shared storage, secrets and the worker image's
command (the project's own CLI) are what the README's Deploy section promises.

Needs the `docker-compose` client only (Debian package, installed by `make test` via
`make compose-deps`); no Docker engine. A missing client is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from temporal_handoff.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SECRET = "sk-ant-test-passthrough-0123456789"
CORE = {"postgresql", "temporal", "temporal-ui", "setup", "worker"}


def _compose_bin() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is not installed: run `make compose-deps` (Debian package)"
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything compose would interpolate from it."""
    prefixes = ("ANTHROPIC_", "TEMPORAL_", "HANDOFF_", "POSTGRES_", "COMPOSE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def _yaml_to_json_python(compose_bin: str) -> str | None:
    """The Python interpreter of a Python `docker-compose` (v1; it ships PyYAML)."""
    try:
        first = Path(compose_bin).read_bytes()[:200].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return None
    if first.startswith("#!") and "python" in first:
        return first[2:].strip().split()[0]
    return None


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose config` (validates and resolves the file) as a dict."""
    binary = _compose_bin()
    env = env if env is not None else _clean_env()
    py = _yaml_to_json_python(binary)
    base = [binary, "-f", str(COMPOSE), *args, "config"]
    cmd = base if py else [*base, "--format", "json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    if not py:
        return json.loads(proc.stdout)
    conv = subprocess.run(
        [py, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=proc.stdout, capture_output=True, text=True, timeout=60,
    )
    assert conv.returncode == 0, conv.stderr
    return json.loads(conv.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def codec_config() -> dict[str, Any]:
    return compose_config("--profile", "codec")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf = f"{buf} {line}" if buf else line
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        op, _, rest = buf.partition(" ")
        lines.append((op.upper(), rest.strip()))
        buf = ""
    return lines


# ---------------------------------------------------------------- the compose file
def test_compose_file_is_valid() -> None:
    proc = subprocess.run(
        [_compose_bin(), "-f", str(COMPOSE), "config", "--quiet"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_services_and_profiles(config: dict[str, Any], codec_config: dict[str, Any]) -> None:
    services = config["services"]
    assert CORE <= set(services)
    # The codec server is optional: only under its profile.
    assert services.get("codec-server", {}).get("profiles") == ["codec"]
    assert set(codec_config["services"]) == CORE | {"codec-server"}
    proc = subprocess.run(
        [_compose_bin(), "-f", str(COMPOSE), "config", "--profiles"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout.split() == ["codec"]

    pg, temporal, ui = services["postgresql"], services["temporal"], services["temporal-ui"]
    assert pg["image"].startswith("postgres:")
    # auto-setup creates the schema in PostgreSQL; it leaves search attributes to setup.
    assert temporal["image"].startswith("temporalio/auto-setup:")
    t_env = temporal["environment"]
    assert t_env["DB"] == "postgres12" and t_env["POSTGRES_SEEDS"] == "postgresql"
    assert t_env["POSTGRES_PWD"] == pg["environment"]["POSTGRES_PASSWORD"]
    assert t_env["SKIP_ADD_CUSTOM_SEARCH_ATTRIBUTES"] == "true"
    assert {p["target"] for p in temporal["ports"]} == {7233}
    assert ui["image"].startswith("temporalio/ui:")
    assert ui["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert {p["target"] for p in ui["ports"]} == {8080}
    assert set(config["volumes"]) >= {"postgres-data", "handoff-store"}


def test_healthchecks_and_start_order(config: dict[str, Any], codec_config: dict[str, Any]) -> None:
    services = {**config["services"], **codec_config["services"]}
    for name in ("postgresql", "temporal", "temporal-ui", "worker", "codec-server"):
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval") and check.get("retries"), name
    assert "pg_isready" in " ".join(services["postgresql"]["healthcheck"]["test"])
    # Temporal is healthy only once its namespace exists (setup needs it).
    assert "namespace describe" in " ".join(services["temporal"]["healthcheck"]["test"])
    # The one-shot job has nothing to check.
    assert services["setup"]["healthcheck"]["test"] == ["NONE"]

    def deps(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name]["depends_on"].items()}

    assert deps("temporal") == {"postgresql": "service_healthy"}
    assert deps("temporal-ui") == {"temporal": "service_healthy"}
    assert deps("setup") == {"temporal": "service_healthy"}
    assert deps("worker") == {
        "temporal": "service_healthy",
        "setup": "service_completed_successfully",
    }
    assert services["setup"]["restart"] == "no"


def test_worker_and_setup_run_the_projects_cli(config: dict[str, Any]) -> None:
    services = config["services"]
    worker, setup = services["worker"], services["setup"]
    for svc in (worker, setup):
        assert Path(svc["build"]["context"]).resolve() == ROOT
        assert svc["image"] == worker["image"]
    assert worker["command"] == ["worker"]
    assert setup["command"] == ["setup", "--address", "temporal:7233"]
    assert worker["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"

    # The image's entry point is the `handoff` console script of this project ...
    instructions = dockerfile_instructions()
    entry = [json.loads(a) for op, a in instructions if op == "ENTRYPOINT"]
    cmd = [json.loads(a) for op, a in instructions if op == "CMD"]
    assert entry[-1] == ["handoff"] and cmd[-1] == ["worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["handoff"] == "temporal_handoff.cli:app"
    # ... and every command the compose file runs is one of its commands.
    runner = CliRunner()
    everything = compose_config("--profile", "codec")["services"]
    for svc in ("worker", "setup", "codec-server"):
        command = everything[svc]["command"]
        result = runner.invoke(app, [command[0], "--help"])
        assert result.exit_code == 0, (svc, result.output)
    help_text = runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--profile", "--identity", "--graceful-shutdown-s", "--storage-dir",
                   "--health-file", "--max-concurrent-activities"):
        assert option in help_text


def test_worker_scales_and_shares_storage(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    # `--scale worker=3`: no fixed container name, no published host port.
    assert "container_name" not in worker and not worker.get("ports")
    env = worker["environment"]
    store = env["HANDOFF_STORAGE_DIR"]
    mounts = {v["target"] if isinstance(v, dict) else v.split(":")[1]: v for v in worker["volumes"]}
    assert store in mounts
    mount = mounts[store]
    source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
    assert source == "handoff-store" and source in config["volumes"]
    # Graceful shutdown: compose waits longer than the worker's drain.
    grace = worker["stop_grace_period"]
    assert worker["stop_signal"] == "SIGTERM"
    assert float(grace.rstrip("s")) > float(env["HANDOFF_GRACEFUL_SHUTDOWN_S"])
    health = " ".join(worker["healthcheck"]["test"])
    assert env["HANDOFF_HEALTH_FILE"] in health


def test_api_key_comes_from_the_environment_only() -> None:
    unset = compose_config()["services"]["worker"]["environment"]
    assert unset.get("ANTHROPIC_API_KEY") is None  # declared, not set: passed through
    given = compose_config(env=_clean_env(ANTHROPIC_API_KEY=SECRET))
    assert given["services"]["worker"]["environment"]["ANTHROPIC_API_KEY"] == SECRET
    # Never written into the compose file, the image or its build context.
    text = COMPOSE.read_text()
    assert not re.search(r"ANTHROPIC_API_KEY[ \t]*[:=][ \t]*[^\s#]", text)
    assert "sk-ant" not in text
    docker_text = DOCKERFILE.read_text()
    for op, args in dockerfile_instructions():
        if op in ("ENV", "ARG"):
            assert "API_KEY" not in args and "CODEC_KEYS" not in args, (op, args)
    assert "sk-ant" not in docker_text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "tests"} <= set(ignored)


def test_dockerfile_slim_non_root_no_dev_deps() -> None:
    instructions = dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in instructions if op == "ARG" and "=" in a}
    froms = [a.split()[0] for op, a in instructions if op == "FROM"]
    resolved = [args.get(f.strip("${}"), f) for f in froms]
    assert resolved and all(f == "python:3.11-slim" for f in resolved)
    users = [a for op, a in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    installs = " ".join(a for op, a in instructions if op == "RUN" and "pip install" in a)
    assert "pip install ." in installs and "[dev]" not in installs
    assert any(op == "HEALTHCHECK" for op, _ in instructions)
