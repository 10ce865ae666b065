"""The embedded Temporal UI shows a session as an operator would look for it.

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) opens the UI of
the `handoff dev` loop (`temporal_handoff.devloop`: dev server, UI wired to the codec
server, content store on), finds a finished session by its search attribute, sees
its handoff child workflows and its search attribute values, and reads a handoff
document and a successor's input as rendered text (inline JSON: only conversations go
to the content store, which the codec server resolves), saving screenshots to tests/artifacts/. `make test` installs
chromium (`browser-deps`); without it this test fails, it is not skipped.

Every UI wait is a condition with a generous timeout (`UI_WAIT_MS`): the UI renders
slowly on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_asyncio
from temporalio.client import Client, WorkflowHandle

from temporal_handoff.devloop import DevLoop, dev_loop
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import (
    AbortArgs,
    DecideArgs,
    SessionInput,
    SessionResult,
)
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.storage import external_storage
from tests.conftest import running_worker
from tests.helpers import call_model_inputs, is_store_reference
from tests.waits import wait_status

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
WINDOW = 3_000
UI_WAIT_MS = 120_000
"""Upper bound of every UI condition (page loads, codec decoding); normally ~1 s."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ui_env(tmp_path_factory: object) -> AsyncIterator[DevLoop]:
    """`handoff dev` in-process: dev server + UI + codec server + content store."""
    state = tmp_path_factory.mktemp("handoff-dev")  # type: ignore[attr-defined]
    async with dev_loop(
        state_dir=state, port=_free_port(), ui_port=_free_port(), task_queue=f"dev-{uuid.uuid4().hex[:6]}"
    ) as loop:
        yield loop


_SCROLL_TO_FIND = """(text) => {
  // The Input/Result code blocks (CodeMirror) render only the lines in view: scroll
  // each down by half a screen per poll, from the top again at the end, until the
  // text is among the rendered lines; then bring that line into view.
  const scrollers = [...document.querySelectorAll('main .cm-scroller')]
    .filter((s) => s.clientHeight > 0);
  for (const s of scrollers) {
    const line = [...s.querySelectorAll('.cm-line')].find((l) => l.textContent.includes(text));
    if (line) { line.scrollIntoView({ block: 'center' }); return true; }
  }
  for (const s of scrollers) {
    const end = s.scrollTop + s.clientHeight >= s.scrollHeight - 1;
    s.scrollTop = end ? 0 : s.scrollTop + Math.max(50, s.clientHeight / 2);
  }
  return false;
}"""


async def find_in_payloads(page: object, text: str, *, in_string: bool = False) -> None:
    """Wait until `text` is rendered in one of the page's payload code blocks (with
    `in_string`, text inside a JSON string, escaped as the UI renders it)."""
    rendered = json.dumps(text, ensure_ascii=False)[1:-1] if in_string else text
    await page.wait_for_function(  # type: ignore[attr-defined]
        _SCROLL_TO_FIND, arg=rendered, polling=250, timeout=UI_WAIT_MS
    )


async def start_named(
    client: Client, wid: str, task_queue: str, project: ProjectState, name: str,
    config: SessionConfig,
) -> WorkflowHandle[Any, SessionResult]:
    """A session on `project` renamed `name` (the AgentProject the UI is queried by)."""
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=config, project=project.model_copy(update={"name": name})),
        id=wid, task_queue=task_queue, result_type=SessionResult,
        static_summary=f"agent session: {name}",
    )


def _store(loop: DevLoop) -> dict[str, object]:
    """Worker options: the loop's content store (conversations out of history)."""
    return {"storage": external_storage(loop.storage_dir)}


async def test_ui_shows_session_children_and_search_attributes(ui_env: DevLoop) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser-deps`"
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=UI_WAIT_MS)
    client = ui_env.client
    ui_port = ui_env.ui_port
    tag = uuid.uuid4().hex[:8]
    project = f"ui-{tag}"
    wid = f"ui-session-{tag}"
    task_queue = f"tq-ui-{tag}"
    with FakeAnthropicServer(
        brain=ScriptedAgentBrain(tasks_per_turn=2), context_windows={"claude-sonnet-4-6": WINDOW}
    ) as fake:
        async with running_worker(client, task_queue, fake.base_url, **_store(ui_env)):  # type: ignore[arg-type]
            handle = await start_named(
                client, wid, task_queue, synthetic_project(30, 3), project,
                SessionConfig(context_window=WINDOW, max_tokens=300, user="ui-tester"),
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
            page.set_default_timeout(UI_WAIT_MS)

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
            # (a last generation may also have started one that was not sealed)
            started = [w async for w in client.list_workflows(query)]
            assert len(started) in (gens, gens + 1), len(started)
            children = page.get_by_role("row").filter(has_text="HandoffWorkflow")
            await expect(children).to_have_count(len(started))
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


async def test_ui_reads_handoff_document_and_successor_input_from_store(ui_env: DevLoop) -> None:
    """With the content store on, the UI shows the handoff document's sections and the
    successor's input as text (not `{"claimData": ..., "driverName": "handoff-local"}`)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser-deps`"
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=UI_WAIT_MS)
    client = ui_env.client
    tag = uuid.uuid4().hex[:8]
    wid = f"ui-doc-{tag}"
    task_queue = f"tq-ui-doc-{tag}"
    decision = f"DECISION-{tag}: use sqlite for the cache"
    brain = ScriptedAgentBrain(tasks_per_turn=2, blocker_every=4, decision_every=0)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": 20_000}) as fake:
        async with running_worker(client, task_queue, fake.base_url, **_store(ui_env)):  # type: ignore[arg-type]
            handle = await start_named(
                client, wid, task_queue, synthetic_project(40, 4), f"ui-doc-{tag}",
                SessionConfig(context_window=20_000, user="ui-doc"),
            )
            # A human answers the first blocker; the second stays open; then a handoff.
            st = await wait_status(client, wid, lambda s: bool(s.open_blockers), "a first blocker")
            first = st.open_blockers[0]["id"]
            await handle.execute_update(
                "decide", DecideArgs(blocker_id=first, decision=decision, by="ana"), result_type=str
            )
            st = await wait_status(
                client, wid, lambda s: any(b["id"] != first for b in s.open_blockers),
                "a second blocker",
            )
            gen = st.generation
            await handle.signal("flush")
            await wait_status(client, wid, lambda s: s.generation > gen, "the flushed handoff")
            await handle.signal("abort", AbortArgs(reason="ui test done"))
            result = await handle.result()
    child_id = f"{wid}-handoff-{gen}"
    payload = await client.get_workflow_handle(child_id, result_type=HandoffPayload).result()
    doc = payload.document
    assert doc is not None
    assert any(d.title == decision for d in doc.human_decisions)
    open_ids = [b.id for b in doc.open_blockers]
    next_ids = [t.id for t in doc.next_eligible]
    assert open_ids and next_ids
    continued = result.lineage[gen].run_id  # the run that handed off (continue-as-new)
    successor = result.lineage[gen + 1].run_id
    succ_input = await client.get_workflow_handle(wid, run_id=successor).fetch_history()
    raw = succ_input.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    handed_off = await client.get_workflow_handle(wid, run_id=continued).fetch_history()
    assert any(map(is_store_reference, call_model_inputs(handed_off)))  # store ON
    assert not is_store_reference(raw)  # conversations go out; the successor's input stays
    (inp,) = await client.data_converter.decode([raw], [SessionInput])
    assert inp.handoff is not None
    prompt_line = next(ln for ln in inp.handoff.prompt.splitlines() if open_ids[0] in ln).strip()

    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{ui_env.ui_port}/namespaces/default/workflows"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(UI_WAIT_MS)
            main = page.locator("main")
            codec_calls: list[str] = []

            page.on(
                "response",
                lambda r: codec_calls.append(f"{r.status} {r.url.rsplit('/', 1)[-1]}")
                if "/decode" in r.url or "/download" in r.url else None,
            )
            # The handoff child: its result is the document, inline.
            await page.goto(f"{base}/{child_id}")
            await expect(main).to_contain_text('"document"')
            for blocker in open_ids:
                await find_in_payloads(page, f'"id": "{blocker}"')  # an open blocker id
            for task in next_ids:
                await find_in_payloads(page, f'"id": "{task}"')  # the next eligible tasks
            await find_in_payloads(page, f'"title": "{decision}"')  # a human decision's text
            await expect(main).not_to_contain_text("claimData")
            await page.screenshot(path=str(ARTIFACTS / "ui-4-handoff-document.png"), full_page=True)

            # The continue-as-new run and the successor: the successor's input (its
            # handoff prompt).
            for run, shot in ((continued, "ui-5-continued-run"), (successor, "ui-6-successor-input")):
                await page.goto(f"{base}/{wid}/{run}")
                await expect(main).to_contain_text("Input")
                await find_in_payloads(page, prompt_line, in_string=True)
                await expect(main).not_to_contain_text("claimData")
                await page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        except Exception:
            await page.screenshot(path=str(ARTIFACTS / "ui-failure.png"), full_page=True)
            print("codec server calls:", codec_calls)
            raise
        finally:
            await browser.close()
    for name in ("ui-4-handoff-document", "ui-5-continued-run", "ui-6-successor-input"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


async def test_ui_finds_a_waiting_session_with_the_needs_human_query(ui_env: DevLoop) -> None:
    """An operator's "sessions waiting for a human" query in the UI's list finds a session
    whose agent raised a human-decision blocker (and not a finished one)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser-deps`"
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=UI_WAIT_MS)
    client = ui_env.client
    tag = uuid.uuid4().hex[:8]
    wid = f"ui-wait-{tag}"
    task_queue = f"tq-ui-wait-{tag}"
    brain = ScriptedAgentBrain(tasks_per_turn=1, blocker_every=2, decision_every=0)
    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{ui_env.ui_port}/namespaces/default/workflows"
    query = f"NeedsHuman = true AND ExecutionStatus = 'Running' AND AgentProject = 'ui-wait-{tag}'"
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": 20_000}) as fake:
        async with running_worker(client, task_queue, fake.base_url, **_store(ui_env)):  # type: ignore[arg-type]
            handle = await start_named(
                client, wid, task_queue, synthetic_project(12, 2), f"ui-wait-{tag}",
                SessionConfig(context_window=20_000, user="ui-wait"),
            )
            st = await wait_status(client, wid, lambda s: bool(s.open_blockers), "a blocker")
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.set_default_timeout(UI_WAIT_MS)
                    # Visibility is eventually consistent: reload until the row is listed.
                    link = page.get_by_role("link", name=wid, exact=True)
                    for _ in range(60):
                        await page.goto(f"{base}?query={quote(query)}")
                        try:
                            await expect(link).to_be_visible(timeout=5_000)
                            break
                        except AssertionError:
                            continue
                    await expect(link).to_be_visible()
                    await expect(page.get_by_role("row").filter(has=link)).to_contain_text("Running")
                    await page.screenshot(path=str(ARTIFACTS / "ui-7-needs-human.png"), full_page=True)
                finally:
                    await browser.close()
            await handle.execute_update(
                "decide", DecideArgs(blocker_id=st.open_blockers[0]["id"], decision="go on"),
                result_type=str,
            )
            await handle.signal("abort", AbortArgs(reason="ui test done"))
            await handle.result()
    assert (ARTIFACTS / "ui-7-needs-human.png").stat().st_size > 10_000
