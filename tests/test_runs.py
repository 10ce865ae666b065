"""The one reader of a session's chain of runs (`temporal_handoff.runs`), on a real
multi-generation session run with the content store on, read back through the store;
and what that history holds inline for people (handoff documents, the memo)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from temporal_handoff.chain import session_chain
from temporal_handoff.export import handoff_payloads
from temporal_handoff.plotting import usage_series
from temporal_handoff.runs import read_chain, read_handoff, read_run_input
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import DEFAULT_THRESHOLD_BYTES, external_storage
from tests.conftest import running_worker
from tests.helpers import call_model_inputs, is_store_reference, start_session

WINDOW = 4_000


@dataclass
class StoredSession:
    client: Client
    """A client with the session's content store (reads what the workers wrote)."""
    workflow_id: str
    result: SessionResult
    store: Path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stored(client: Client, tmp_path_factory: pytest.TempPathFactory) -> StoredSession:
    """A 60-task session over several generations, content store on."""
    store = tmp_path_factory.mktemp("runs") / "payloads"
    storage = external_storage(store)
    reader = Client(**{**client.config(), "plugins": [HandoffPlugin(storage=storage)]})
    task_queue = f"tq-{uuid.uuid4()}"
    brain = ScriptedAgentBrain(tasks_per_turn=3)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": WINDOW}) as fake:
        async with running_worker(client, task_queue, fake.base_url, storage=storage):
            handle = await start_session(
                reader, task_queue, synthetic_project(60, 3), prefix="runs",
                context_window=WINDOW, max_tokens=300,
            )
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED, result.message
    assert result.generation >= 2, result.generation
    return StoredSession(reader, handle.id, result, store)


async def test_reader_reads_every_run_and_handoff_child(stored: StoredSession) -> None:
    client, wid, result = stored.client, stored.workflow_id, stored.result
    chain = await read_chain(client, wid)
    runs = chain.runs
    assert chain.unavailable == []
    assert [r.generation for r in runs] == list(range(result.generation + 1))
    assert [r.status for r in runs] == ["CONTINUED_AS_NEW"] * result.generation + ["COMPLETED"]
    assert runs[0].previous_run_id == "" and runs[0].resumed_from is None
    for prev, run in zip(runs, runs[1:], strict=False):
        # Each continue-as-new input, decoded from the store, is the next run's input.
        assert run.previous_run_id == prev.run_id
        assert prev.next_input is not None
        assert prev.next_input.model_dump() == run.input.model_dump()
        assert prev.ended_by == "CONTEXT_HANDOFF"
        # The handoff child this run started holds the document of that handoff.
        assert prev.handoff_child is not None
        child = await read_handoff(client, prev.handoff_child)
        assert child is not None and child.status == "COMPLETED"
        assert child.input is not None and child.input.generation == prev.generation
        assert child.result is not None and child.result.document is not None
        assert child.result.document.agent.generation == prev.generation
        assert run.input.handoff is not None
        assert child.result.prompt == run.input.handoff.prompt
        # The run's own model calls, with their usage.
        assert prev.turns and prev.model_attempts >= len(prev.turns)
        assert all(c.usage.output_tokens > 0 for c in prev.turns)
    last = runs[-1]
    assert last.result is not None and last.next_input is None
    assert last.result.model_dump() == result.model_dump()
    assert last.ended_by == "TASK_COMPLETED"
    # Only the first event, for `recall`: the same input as the whole-history read.
    for run in runs:
        inp = await read_run_input(client, wid, run.run_id)
        assert inp.model_dump() == run.input.model_dump()


async def test_every_consumer_reads_the_same_chain(stored: StoredSession) -> None:
    """History rows, plot series and export's documents are views of the same runs."""
    client, wid, result = stored.client, stored.workflow_id, stored.result
    runs = (await read_chain(client, wid)).runs
    rows = await session_chain(client, wid)
    assert [(r.run_id, r.generation, r.turns) for r in rows] == [
        (r.run_id, r.generation, len(r.turns)) for r in runs
    ]
    assert rows[-1].termination == "TASK_COMPLETED" and rows[-1].status == "COMPLETED"
    series = await usage_series(client, wid)
    assert [len(s.turns) for s in series] == [len(r.turns) for r in runs]
    assert all(s.context_window == WINDOW for s in series)
    docs = await handoff_payloads(client, runs)
    assert sorted(docs) == list(range(result.generation))
    for gen, payload in docs.items():
        assert payload.document is not None and payload.document.agent.generation == gen


async def test_store_takes_conversations_and_leaves_handoff_documents_inline(
    stored: StoredSession,
) -> None:
    """With the store on, a handoff child's result (the document) is inline JSON in
    history, as is each successor's input; the model calls' conversations are not."""
    client, wid, result = stored.client, stored.workflow_id, stored.result
    runs = (await read_chain(client, wid)).runs
    payloads = {}
    for run, successor in zip(runs, runs[1:], strict=False):
        assert run.handoff_child is not None
        child = await read_handoff(client, run.handoff_child)
        assert child is not None and child.result is not None
        raw = child.history.events[-1].workflow_execution_completed_event_attributes.result
        (payload,) = raw.payloads
        assert not is_store_reference(payload), run.handoff_child
        assert payload.metadata["encoding"] == b"json/plain"
        document = json.loads(payload.data)["document"]
        assert document["agent"]["generation"] == run.generation
        assert document["next_eligible"] or document["open_blockers"] or document["progress"]
        started = successor.history.events[0].workflow_execution_started_event_attributes
        assert not is_store_reference(started.input.payloads[0])
        payloads[child.result.summary()] = child.result
    conversations = [p for run in runs for p in call_model_inputs(run.history)]
    assert any(map(is_store_reference, conversations))
    inline = [p for p in conversations if not is_store_reference(p)]
    assert all(p.ByteSize() < DEFAULT_THRESHOLD_BYTES for p in inline)  # too small to store
    # The memo: the last handoff's summary, its payload's token count, level and probe.
    memo = await (await client.get_workflow_handle(wid).describe()).memo()
    if result.final_handoff is not None:
        payloads[result.final_handoff.summary()] = result.final_handoff
    last = payloads[memo["handoff_summary"]]
    assert memo["handoff_tokens"] == last.prompt_tokens > 0
    assert memo["handoff_level"] == last.level.value
    assert last.probes > 0
    found = last.probes - last.probe_missed
    assert memo["handoff_probe"] == f"{found}/{last.probes} critical items in the prompt"
