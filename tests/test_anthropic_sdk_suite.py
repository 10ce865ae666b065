"""Anthropic's own SDK tests against the strict fake.

The sdist of the installed ``anthropic`` version ships ``tests/api_resources/``, written
by Anthropic (Stainless) against the API schema. We run ``test_messages.py`` and
``test_models.py`` (create / stream / count_tokens, models retrieve / list; sync and
async; loose and strict response validation) with ``TEST_API_BASE_URL`` pointing at a
running `FakeAnthropicServer`: every request must pass the fake's validation and every
answer must parse. ``pip download`` works offline here (the local index has the sdist).

The suite uses two ids that are not real models: ``model_id`` (a placeholder, written
for a mock that accepts any id) and ``claude-mythos-preview`` (in the SDK's deprecation
warning test, retired in 2026). The fake serves them as extra models, declared below;
every other id the suite sends is in the fake's catalogue.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

from temporal_handoff.testing import EchoBrain, FakeAnthropicServer

SUITE = ("tests/api_resources/test_messages.py", "tests/api_resources/test_models.py")
PLACEHOLDER_MODELS = {"model_id": 200_000, "claude-mythos-preview": 200_000}


@pytest.fixture(scope="module")
def sdk_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked sdist of the installed anthropic version."""
    wanted = version("anthropic")
    where = tmp_path_factory.mktemp("anthropic-sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", f"anthropic=={wanted}", "-d", str(where)],
        check=True, timeout=300,
    )
    (archive,) = where.glob("anthropic-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    root = where / f"anthropic-{wanted}"
    assert all((root / f).is_file() for f in SUITE), list(root.glob("tests/api_resources/*"))
    return root


def test_anthropic_sdk_api_resources_pass_against_strict_fake(sdk_tests: Path) -> None:
    with FakeAnthropicServer(brain=EchoBrain(), context_windows=PLACEHOLDER_MODELS) as fake:
        env = dict(os.environ, TEST_API_BASE_URL=fake.base_url)
        run = subprocess.run(
            # The sdist's addopts need pytest-xdist and respx's httpx alias; neither is
            # used by these two files.
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-o", "addopts=--tb=short", *SUITE],
            cwd=sdk_tests, env=env, capture_output=True, text=True, timeout=600,
        )
        seen = fake.requests
        rejected = [r for r in seen if r.status is not None and r.status >= 400]
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 100, summary
    assert not re.search(r"failed|error|skipped", summary), summary
    assert not rejected, [(r.path, r.status, r.error) for r in rejected]
    # Every endpoint was exercised, streaming included.
    assert {r.path for r in seen} >= {
        "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/v1/models/model_id",
    }
    assert any(r.stream for r in seen)
