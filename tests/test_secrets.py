"""The worker's ANTHROPIC_API_KEY never leaves the worker's environment.

The worker builds its Anthropic client from the environment (no client injected),
and the fake Messages API only accepts the sentinel key, so every successful model
call proves the key was in use. Afterwards the sentinel must appear in no history
event of any run (sessions and handoff children), no memo, no search attribute, no
log record or worker output, and no handoff document or session result.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_handoff.documents.markdown import to_markdown
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import synthetic_project
from temporal_handoff.schemas.session import SayArgs
from temporal_handoff.testing import FakeAnthropicServer, Fault, ScriptedAgentBrain
from temporal_handoff.workers.plugin import HandoffPlugin
from tests.helpers import start_session

LOGGERS = ("", "temporalio", "anthropic", "httpx", "httpcore", "temporal_handoff", "aiohttp")


async def test_api_key_never_reaches_history_logs_or_documents(
    client: Client,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sentinel = f"sk-ant-SENTINEL-{uuid.uuid4().hex}"
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)

    brain = ScriptedAgentBrain(summary_words=120)
    with FakeAnthropicServer(brain=brain, api_key=sentinel) as fake:
        # One transient error, so the retry/failure logging paths run too.
        fake.add_fault(Fault(status=500, times=1))
        monkeypatch.setenv("ANTHROPIC_API_KEY", sentinel)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        config = client.config()
        config["plugins"] = [HandoffPlugin()]  # the model client comes from the env
        async with Worker(Client(**config), task_queue=task_queue, max_concurrent_activities=20):
            handle = await start_session(
                client, task_queue, synthetic_project(24, 2), prefix="secrets",
                context_window=3_500, max_tokens=300,
            )
            await handle.execute_update("say", SayArgs(text="keep going"), result_type=str)
            result = await handle.result()
        requests = fake.message_requests()

    # The key was in use: the fake server rejects any other key with 401.
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 1, "the session must hand off at least once"
    assert [r.status for r in requests].count(500) == 1
    assert all(r.status in (200, 500) for r in requests) and len(requests) > 5

    needle = sentinel.encode()
    texts: dict[str, str | bytes] = {"session result": result.model_dump_json()}
    runs = [(r.workflow_id, r.run_id) for r in result.lineage]
    children = [f"{handle.id}-handoff-{g}" for g in range(result.generation)]
    runs += [(c, None) for c in children]
    for wid, run_id in runs:
        h = client.get_workflow_handle(wid, run_id=run_id)
        history = await h.fetch_history()
        texts[f"history {wid} {run_id}"] = b"".join(e.SerializeToString() for e in history.events)
        texts[f"history json {wid} {run_id}"] = history.to_json()
        desc = await h.describe()
        texts[f"description {wid} {run_id}"] = desc.raw_description.SerializeToString()
        texts[f"memo {wid} {run_id}"] = repr(await desc.memo())
        texts[f"search attributes {wid} {run_id}"] = repr(desc.typed_search_attributes)
    for child in children:
        payload = await client.get_workflow_handle(child, result_type=HandoffPayload).result()
        texts[f"handoff payload {child}"] = payload.model_dump_json()
        texts[f"handoff markdown {child}"] = to_markdown(payload.document)
    assert len([k for k in texts if k.startswith("handoff payload")]) >= 1

    records = caplog.records
    assert records, "no log records captured"
    for rec in records:
        texts[f"log {rec.name}:{rec.lineno}"] = (
            f"{rec.getMessage()} {rec.args!r} {rec.exc_text or ''} {rec.__dict__!r}"
        )
    out, err = capfd.readouterr()
    texts["worker stdout"] = out
    texts["worker stderr"] = err

    leaks = [
        where
        for where, text in texts.items()
        if (needle in text if isinstance(text, bytes) else sentinel in text)
    ]
    assert not leaks, f"API key found in: {leaks}"
