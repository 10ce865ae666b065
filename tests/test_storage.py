"""The content-addressed payload store: driver semantics, GC, plugin wiring, and a real
session whose conversation stays out of workflow history."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import Phase, ProjectState, Task
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import BrainReply, filler
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import (
    LocalStorageDriver,
    external_storage,
    gc_orphans,
    gc_session,
    split_points,
    storage_stats,
)
from temporal_handoff.workers.storage import (
    main as storage_main,
)
from tests.conftest import running_worker

MODEL = "claude-sonnet-4-6"
RETRIEVE = StorageDriverRetrieveContext()


def ctx(workflow_id: str) -> StorageDriverStoreContext:
    return StorageDriverStoreContext(
        target=StorageDriverWorkflowInfo(namespace="default", id=workflow_id, run_id="r1")
    )


def request_payload(turns: int, seed: str = "s") -> Payload:
    """A Messages-API-shaped JSON payload whose conversation grows with `turns`."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "start " + seed}]
    for t in range(turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": filler(f"{seed}a{t}", 300)}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{t}", "content": filler(f"{seed}u{t}", 150)}]})
    body = {"model": MODEL, "system": [{"type": "text", "text": "sys"}], "messages": messages,
            "tools": [{"name": "x", "description": "d" * 300}], "turn": turns}
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(body, separators=(",", ":")).encode())


def blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").rglob("*") if p.is_file()}


async def test_round_trip_is_exact_and_content_addressed(tmp_path: Path) -> None:
    driver = LocalStorageDriver(tmp_path, min_chunk=1024)
    payloads = [
        request_payload(12),
        Payload(metadata={"encoding": b"binary/plain"}, data=bytes(range(256)) * 2000),  # no cut points
        Payload(metadata={"encoding": b"json/plain"}, data=b"{}"),
    ]
    claims = await driver.store(ctx("wf-a"), payloads)
    assert [c.claim_data["wf"] for c in claims] == ["wf-a"] * 3
    # A fresh driver (another worker, or this one after a restart) reads them back.
    back = await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, claims)
    assert back == payloads
    # Every file is named by the sha256 of its bytes.
    for path in (tmp_path / "blobs").rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert not any((tmp_path / "tmp").iterdir())


def test_cut_points_are_prefix_stable() -> None:
    a = request_payload(10).data
    b = request_payload(14).data  # same first 10 turns, more after
    common = len(a) - 400  # well inside the shared prefix
    cuts_a = [c for c in split_points(a, 1024, 65536) if c < common]
    cuts_b = [c for c in split_points(b, 1024, 65536) if c < common]
    assert cuts_a == cuts_b and len(cuts_a) > 5


async def test_growing_conversation_stores_only_what_is_new(tmp_path: Path) -> None:
    driver = LocalStorageDriver(tmp_path, min_chunk=1024)
    await driver.store(ctx("wf-a"), [request_payload(20)])
    before = driver.stats.written_bytes
    nxt = request_payload(21)
    await driver.store(ctx("wf-a"), [nxt])
    added = driver.stats.written_bytes - before
    assert added < len(nxt.data) / 8, (added, len(nxt.data))
    # Identical content: nothing new, in the same session or another one.
    files = blob_files(tmp_path)
    await driver.store(ctx("wf-a"), [nxt])
    await LocalStorageDriver(tmp_path, min_chunk=1024).store(ctx("wf-b"), [nxt])
    assert blob_files(tmp_path) == files


async def test_concurrent_writers_share_a_directory(tmp_path: Path) -> None:
    drivers = [LocalStorageDriver(tmp_path, min_chunk=1024) for _ in range(4)]
    payload = request_payload(30)
    results = await asyncio.gather(
        *[asyncio.to_thread(d._store_all, f"wf-{i}", [payload]) for i, d in enumerate(drivers)]
    )
    assert len({r[0].claim_data["m"] for r in results}) == 1
    for d, r in zip(drivers, results, strict=True):
        assert await d.retrieve(RETRIEVE, r) == [payload]
    assert not any((tmp_path / "tmp").iterdir())


async def test_gc_deletes_a_session_but_keeps_shared_blobs(tmp_path: Path) -> None:
    driver = LocalStorageDriver(tmp_path, min_chunk=1024)
    shared = request_payload(8, seed="shared")
    (only_a,) = await driver.store(ctx("sess-a"), [request_payload(8, seed="a")])
    (child,) = await driver.store(ctx("sess-a-handoff-0"), [request_payload(3, seed="child")])
    (shared_a,) = await driver.store(ctx("sess-a"), [shared])
    (shared_b,) = await driver.store(ctx("sess-b"), [shared])
    (only_b,) = await driver.store(ctx("sess-b"), [request_payload(8, seed="b")])

    result = gc_session(tmp_path, "sess-a", grace_s=0)
    assert set(result.scopes) == {"sess-a", "sess-a-handoff-0"}
    assert result.deleted > 0 and result.kept_shared > 0

    fresh = LocalStorageDriver(tmp_path)  # no in-process cache
    assert await fresh.retrieve(RETRIEVE, [shared_b, only_b]) == [shared, (await driver.retrieve(RETRIEVE, [only_b]))[0]]
    for gone in (only_a, child):
        with pytest.raises(FileNotFoundError, match="garbage-collected"):
            await fresh.retrieve(RETRIEVE, [gone])
    # The shared payload still resolves through either claim: same content, same files.
    assert await fresh.retrieve(RETRIEVE, [shared_a]) == [shared]

    # The same through the module's command line.
    assert storage_main(["gc", str(tmp_path), "sess-b", "--grace-s", "0"]) == 0
    assert storage_stats(tmp_path) == {"blobs": 0, "bytes": 0, "scopes": 0}
    assert gc_orphans(tmp_path, grace_s=0).deleted == 0


async def test_gc_grace_period_keeps_recent_blobs(tmp_path: Path) -> None:
    driver = LocalStorageDriver(tmp_path, min_chunk=1024)
    await driver.store(ctx("sess-x"), [request_payload(4)])
    result = gc_session(tmp_path, "sess-x")  # default grace: 5 minutes
    assert result.deleted == 0 and result.kept_recent > 0
    assert gc_orphans(tmp_path, grace_s=0).deleted == result.kept_recent


def test_plugin_wiring_keeps_a_users_external_storage(tmp_path: Path, client: Client) -> None:
    mine = external_storage(tmp_path / "mine")
    config = client.config()
    config["plugins"] = [HandoffPlugin(storage=mine)]
    config["data_converter"] = DataConverter.default
    assert Client(**config).data_converter.external_storage is mine

    theirs = ExternalStorage(drivers=[LocalStorageDriver(tmp_path / "theirs", name="theirs")])
    config["data_converter"] = dataclasses.replace(DataConverter.default, external_storage=theirs)
    assert Client(**config).data_converter.external_storage is theirs


class _PaddingBrain:
    """Scripted agent whose first reply also holds a long text (a big conversation)."""

    def __init__(self, words: int) -> None:
        self.inner = ScriptedAgentBrain(tasks_per_turn=1, decision_every=0)
        self.words = words

    def respond(self, request: dict[str, Any]) -> BrainReply:
        reply = self.inner.respond(request)
        if not any(m.get("role") == "assistant" for m in request.get("messages") or []):
            seed = str((request.get("metadata") or {}).get("user_id"))
            reply.content.insert(0, {"type": "text", "text": filler(seed, self.words)})
        return reply


def _project(n: int) -> ProjectState:
    return ProjectState(
        name="storage-test",
        phases=[Phase(id="P1")],
        tasks={f"T{i}": Task(id=f"T{i}", phase="P1") for i in range(n)},
        current_phase="P1",
    )


async def _session_history(client: Client, tq: str, tasks: int) -> tuple[int, int, SessionResult]:
    handle = await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=SessionConfig(model=MODEL), project=_project(tasks)),
        id=f"storage-{uuid.uuid4()}",
        task_queue=tq,
        result_type=SessionResult,
    )
    result = await handle.result()
    hist = await client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id).fetch_history()
    turns = sum(
        1
        for e in hist.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "call_model"
    )
    return sum(e.ByteSize() for e in hist.events), turns, result


async def test_session_history_per_turn_stays_small(client: Client, tmp_path: Path) -> None:
    """~25K-token conversation: history per turn with the store vs without it."""
    store = tmp_path / "store"
    storage = external_storage(store)
    config = client.config()
    config["plugins"] = [HandoffPlugin(storage=storage)]
    stored_client = Client(**config)
    per_turn: dict[str, float] = {}
    with FakeAnthropicServer(brain=_PaddingBrain(words=16_000)) as fake:
        for label, c, kw in (("plain", client, {}), ("stored", stored_client, {"storage": storage})):
            tq = f"tq-{uuid.uuid4()}"
            async with running_worker(c, tq, fake.base_url, **kw):
                small, t_small, res = await _session_history(c, tq, 2)
                big, t_big, _ = await _session_history(c, tq, 6)
            assert res.reason == TerminationReason.TASK_COMPLETED
            per_turn[label] = (big - small) / (t_big - t_small)
    assert per_turn["plain"] > 100_000  # the whole conversation, every turn
    assert per_turn["stored"] < 5_000  # a reference instead
    assert storage_stats(store)["blobs"] > 0
