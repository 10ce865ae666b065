"""The embedded Temporal UI shows a session as an operator would look for it.

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) opens the UI of
a dev server started with `ui=True`, finds a finished session by its search
attribute, sees its handoff child workflows and its search attribute values, and
saves screenshots to tests/artifacts/. `make test` installs chromium
(`browser-deps`); without it this test fails, it is not skipped.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import synthetic_project
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.workers.devserver import start_dev_server
from temporal_handoff.workers.plugin import HandoffPlugin
from tests.conftest import running_worker

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
WINDOW = 3_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(loop_scope="session")
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    ui_port = _free_port()
    env = await start_dev_server(ui=True, ui_port=ui_port)
    try:
        yield env, ui_port
    finally:
        await env.shutdown()


async def test_ui_shows_session_children_and_search_attributes(
    ui_env: tuple[WorkflowEnvironment, int],
) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser-deps`"
    from playwright.async_api import async_playwright, expect

    env, ui_port = ui_env
    config = env.client.config()
    config["plugins"] = [HandoffPlugin()]
    client = Client(**config)
    tag = uuid.uuid4().hex[:8]
    project = f"ui-{tag}"
    wid = f"ui-session-{tag}"
    task_queue = f"tq-ui-{tag}"
    with FakeAnthropicServer(
        brain=ScriptedAgentBrain(tasks_per_turn=2), context_windows={"claude-sonnet-4-6": WINDOW}
    ) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(
                    config=SessionConfig(context_window=WINDOW, max_tokens=300, user="ui-tester"),
                    project=synthetic_project(30, 3).model_copy(update={"name": project}),
                ),
                id=wid, task_queue=task_queue, result_type=SessionResult,
                static_summary=f"agent session: {project}",
            )
            result = await handle.result()
    gens = result.generation
    assert gens >= 2

    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{ui_port}/namespaces/default/workflows"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)

            # 1. Find the session by its project search attribute.
            await page.goto(f"{base}?query={quote(f'AgentProject={project!r}')}")
            rows = page.get_by_role("link", name=wid, exact=True)
            # One row per generation (run), all of type AgentSessionWorkflow.
            await expect(rows).to_have_count(gens + 1)
            runs = page.get_by_role("row").filter(has=rows)
            await expect(runs.filter(has_text="CONTINUED AS NEW")).to_have_count(gens)
            await expect(runs.filter(has_text="COMPLETED")).to_have_count(1)
            await page.screenshot(path=str(ARTIFACTS / "ui-1-find-session.png"), full_page=True)

            # 2. Its handoff children: one HandoffWorkflow per generation that handed off.
            query = f"WorkflowId STARTS_WITH {wid + '-handoff-'!r}"
            await page.goto(f"{base}?query={quote(query)}")
            for g in range(gens):
                await expect(page.get_by_role("link", name=f"{wid}-handoff-{g}", exact=True)).to_be_visible()
            children = page.get_by_role("row").filter(has_text="HandoffWorkflow")
            await expect(children).to_have_count(gens)
            await page.screenshot(path=str(ARTIFACTS / "ui-2-handoff-children.png"), full_page=True)

            # ... and the first run's Relationships tab links its child.
            first = result.lineage[0].run_id
            await page.goto(f"{base}/{wid}/{first}/relationships")
            await expect(page.get_by_text(f"{wid}-handoff-0").first).to_be_visible()

            # 3. The latest run (open it from the list) and its search attribute values.
            await page.goto(f"{base}?query={quote(f'AgentProject={project!r}')}")
            await rows.first.click()
            await page.get_by_role("tab", name="Search Attributes").click()
            attrs = page.locator("main")
            for expected in (
                f'"AgentProject": "{project}"',
                '"AgentUser": "ui-tester"',
                '"AgentLifecycle": "TERMINATED"',
                f'"HandoffGeneration": {gens}',
                f'"AgentTotalTokens": {result.ledger.total_tokens}',
            ):
                await expect(attrs).to_contain_text(expected)
            await page.screenshot(path=str(ARTIFACTS / "ui-3-search-attributes.png"), full_page=True)
        finally:
            await browser.close()
    for name in ("ui-1-find-session", "ui-2-handoff-children", "ui-3-search-attributes"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
