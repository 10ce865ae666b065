"""The content-addressed payload store: driver semantics, GC, plugin wiring, and a real
session whose conversation stays out of workflow history."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
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
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import Phase, ProjectState, Task
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.brain import BrainReply, filler
from temporal_handoff.workers import storage
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import (
    BlobUnavailableError,
    LocalStorageDriver,
    StoreFullError,
    external_storage,
    gc_orphans,
    gc_session,
    session_scopes,
    split_points,
    storage_stats,
    verify_store,
)
from tests.conftest import running_worker
from tests.test_operator_actions import (
    PauseOn,
    assert_children_closed,
    assert_each_task_completed_once,
    cleanup,
    session_result,
    start,
    wait_status,
)

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


def blob_path(root: Path, hexdigest: str) -> Path:
    return root / "blobs" / hexdigest[:2] / hexdigest


def chunk_digests(root: Path, claim: Any) -> list[str]:
    """The chunk sha256s of a stored payload (read from its manifest)."""
    manifest = blob_path(root, claim.claim_data["m"]).read_bytes()
    _, _, digests = storage._parse_manifest(manifest)
    return [d.hex() for d in digests]


async def wait_for(predicate: Callable[[], bool], what: str, cap: float = 30.0) -> None:
    """Poll `predicate` until true; fail after `cap` seconds instead of hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cap
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {cap:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def storage_cli(env: WorkflowEnvironment, *args: str) -> tuple[int, str, str]:
    """`python -m temporal_handoff.workers.storage ARGS` as an operator runs it, with
    the test server as TEMPORAL_ADDRESS: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "temporal_handoff.workers.storage", *args,
        env={
            **os.environ,
            "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": "default",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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


async def test_gc_deletes_a_session_but_keeps_shared_blobs(
    tmp_path: Path, env: WorkflowEnvironment
) -> None:
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
        with pytest.raises(BlobUnavailableError, match="garbage-collected") as info:
            await fresh.retrieve(RETRIEVE, [gone])
        assert info.value.reason == "missing" and info.value.sha256 == gone.claim_data["m"]
    # The shared payload still resolves through either claim: same content, same files.
    assert await fresh.retrieve(RETRIEVE, [shared_a]) == [shared]

    # The same through the module's command line. Temporal does not know `sess-b`
    # (these payloads were stored without a workflow): refused unless --force.
    code, out, err = await storage_cli(env, "gc", str(tmp_path), "sess-b", "--grace-s", "0")
    assert code == 2 and "'sess-b' is not known to Temporal" in err and "--force" in err, err
    assert len(err.strip().splitlines()) == 1 and not out, (out, err)
    assert storage_stats(tmp_path)["scopes"] == 1
    code, out, err = await storage_cli(
        env, "gc", str(tmp_path), "sess-b", "--grace-s", "0", "--force"
    )
    assert code == 0, err
    assert json.loads(out)["scopes"] == ["sess-b"]
    assert storage_stats(tmp_path) == {"blobs": 0, "bytes": 0, "scopes": 0, "tmp_files": 0}
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


# ------------------------------------------------------------------ store maintenance
async def test_gc_of_a_live_session_is_refused_and_the_session_completes(
    env: WorkflowEnvironment, client: Client, task_queue: str, tmp_path: Path
) -> None:
    """`gc` on a running session (paused, its handoff child running) is refused in one
    line naming it and deletes nothing: after a worker restart (no cached bytes) the
    session replays and completes. A running workflow under one of the session's child
    ids is refused the same way; once everything is closed, gc collects it all."""
    root = tmp_path / "store"
    store = external_storage(root, threshold_bytes=256, inline_max_bytes=0)
    config = client.config()
    config["plugins"] = [HandoffPlugin(storage=store)]
    client = Client(**config)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120)) as fake:
        async with running_worker(
            client, task_queue, fake.base_url, storage=store, notifier=PauseOn(client)
        ):
            handle = await start(client, task_queue, 20)
            wid = handle.id
            async with cleanup(client, env, wid):
                await wait_status(
                    client, wid,
                    lambda s: s.paused and s.generation == 0 and s.tasks_done >= 1,
                    "paused in WARNING with the handoff child running",
                )
                await wait_for(
                    lambda: f"{wid}-handoff-0" in session_scopes(root, wid),
                    "the handoff child's payloads in the store",
                )
                before = blob_files(root)
                code, out, err = await storage_cli(env, "gc", str(root), wid, "--grace-s", "0")
                assert code == 2, (code, out, err)
                assert f"{wid!r} is RUNNING" in err and len(err.strip().splitlines()) == 1, err
                assert before <= blob_files(root)  # nothing deleted (a live session may add)
        fresh = external_storage(root, threshold_bytes=256, inline_max_bytes=0)  # restarted: no cache
        async with running_worker(client, task_queue, fake.base_url, storage=fresh):
            async with cleanup(client, env, wid):
                await handle.signal("resume")
                result = await session_result(client, wid)
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
    await assert_children_closed(env, wid)

    # A running workflow under a child id of the (closed) session: refused, naming it.
    squatter = await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=SessionConfig(model=MODEL), project=_project(3), paused=True),
        id=f"{wid}-handoff-99", task_queue=f"nobody-{uuid.uuid4()}",
    )
    try:
        assert squatter.id in session_scopes(root, wid)
        before = blob_files(root)
        code, out, err = await storage_cli(env, "gc", str(root), wid, "--grace-s", "0")
        assert code == 2 and f"handoff child {squatter.id!r}" in err and "RUNNING" in err, err
        assert blob_files(root) == before
    finally:
        await squatter.terminate("test")

    code, out, err = await storage_cli(env, "gc", str(root), wid, "--grace-s", "0")
    assert code == 0, err
    gc = json.loads(out)
    assert {wid, f"{wid}-handoff-0", squatter.id} <= set(gc["scopes"]) and gc["deleted"] > 0, gc
    assert session_scopes(root, wid) == []


async def _store_each(root: Path, ids: list[str]) -> dict[str, Any]:
    driver = LocalStorageDriver(root, min_chunk=1024)
    claims = {}
    for wid in ids:
        (claims[wid],) = await driver.store(ctx(wid), [request_payload(6, seed=wid[-40:])])
    return claims


async def test_gc_matches_a_sessions_children_exactly(tmp_path: Path) -> None:
    """`alpha` collects `alpha-handoff-<n>` (and a reset run's `-<run>` child), never a
    sibling session whose id merely starts with `alpha-handoff-`."""
    mine = ["alpha", "alpha-handoff-0", "alpha-handoff-1", "alpha-handoff-2-1a2b3c4d"]
    siblings = ["alpha-handoff-review-session", "alpha-handoff-3-review", "alphabet", "alpha-handoff-"]
    claims = await _store_each(tmp_path, mine + siblings)
    assert session_scopes(tmp_path, "alpha") == sorted(mine)
    result = gc_session(tmp_path, "alpha", grace_s=0)
    assert sorted(result.scopes) == sorted(mine)
    fresh = LocalStorageDriver(tmp_path)
    for wid in siblings:
        assert (await fresh.retrieve(RETRIEVE, [claims[wid]]))[0].data, wid
    for wid in mine:
        with pytest.raises(BlobUnavailableError):
            await fresh.retrieve(RETRIEVE, [claims[wid]])


async def test_gc_collects_the_children_of_a_long_workflow_id(tmp_path: Path) -> None:
    """Ids too long for a file name get a shortened index directory; their children are
    still found (from the directory's scope file, or for a store written before it by
    recomputing each generation's name), and a long sibling is still kept."""
    wid = "session-" + "x" * 230
    mine = [wid, f"{wid}-handoff-0", f"{wid}-handoff-12-deadbeef", f"{wid}-handoff-5"]
    sibling = f"{wid}-handoff-review"
    claims = await _store_each(tmp_path, [*mine, sibling])
    names = {d.name for d in (tmp_path / "index").iterdir()}
    assert all(len(n) < 200 for n in names) and len(names) == 5
    # A directory written before scope files existed: the generation is recomputed.
    legacy = tmp_path / "index" / storage._scope_dir_name(f"{wid}-handoff-5")
    (legacy / "scope").unlink(missing_ok=True)
    assert session_scopes(tmp_path, wid) == sorted(mine)
    result = gc_session(tmp_path, wid, grace_s=0)
    assert sorted(result.scopes) == sorted(mine)
    fresh = LocalStorageDriver(tmp_path)
    assert (await fresh.retrieve(RETRIEVE, [claims[sibling]]))[0].data
    for w in mine:
        with pytest.raises(BlobUnavailableError):
            await fresh.retrieve(RETRIEVE, [claims[w]])
    assert [d.name for d in (tmp_path / "index").iterdir()] == [
        storage._scope_dir_name(sibling)
    ]


def _corrupt(path: Path, *, truncate: bool = False) -> None:
    data = bytearray(path.read_bytes())
    if truncate:
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))


async def test_a_corrupt_blob_is_repaired_by_the_next_writer_with_the_bytes(
    tmp_path: Path,
) -> None:
    """One bad chunk is shared by every session that deduplicated onto it: the next
    writer of that content (another worker, another session) rewrites it."""
    payload = request_payload(12)
    (claim,) = await LocalStorageDriver(tmp_path, min_chunk=1024).store(ctx("sess-a"), [payload])
    flipped, cut = chunk_digests(tmp_path, claim)[1:3]
    _corrupt(blob_path(tmp_path, flipped))
    _corrupt(blob_path(tmp_path, cut), truncate=True)
    with pytest.raises(BlobUnavailableError):
        await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, [claim])

    writer = LocalStorageDriver(tmp_path, min_chunk=1024)  # another worker process
    await writer.store(ctx("sess-b"), [payload])
    assert verify_store(tmp_path).ok
    assert writer.stats.repaired_files == 2
    assert await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, [claim]) == [payload]
    assert not any((tmp_path / "tmp").iterdir())

    # A process that found a blob corrupt checks it again the next time it writes it,
    # even for a session whose content it already made sure of.
    _corrupt(blob_path(tmp_path, flipped))
    reader = LocalStorageDriver(tmp_path, min_chunk=1024)
    await reader.store(ctx("sess-c"), [request_payload(2, seed="other")])
    reader._known_for("sess-b").update(bytes.fromhex(d) for d in chunk_digests(tmp_path, claim))
    with pytest.raises(BlobUnavailableError):
        await reader.retrieve(RETRIEVE, [claim])
    await reader.store(ctx("sess-b"), [payload])
    assert verify_store(tmp_path).ok and reader.stats.repaired_files == 1


async def test_an_unreadable_blob_is_one_line_naming_its_sha256(
    tmp_path: Path, env: WorkflowEnvironment
) -> None:
    """Corrupt or missing blob, or a reference this driver cannot read: one line with
    the sha256, the store and the recovery (restore the blob, then reset); `verify`
    lists the corrupt blob and exits 1."""
    (claim,) = await LocalStorageDriver(tmp_path, min_chunk=1024).store(
        ctx("sess-a"), [request_payload(12)]
    )
    bad = chunk_digests(tmp_path, claim)[2]
    _corrupt(blob_path(tmp_path, bad))
    with pytest.raises(BlobUnavailableError) as info:
        await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, [claim])
    err = info.value
    message = str(err)
    print(message)
    assert err.reason == "corrupt" and err.sha256 == bad
    assert bad in message and str(tmp_path) in message and "\n" not in message
    assert "restore the blob" in message and "temporal workflow reset" in message

    code, out, _ = await storage_cli(env, "verify", str(tmp_path))
    assert code == 1 and f"corrupt {bad} " in out, out
    assert json.loads(out.splitlines()[-1])["corrupt"] == 1

    blob_path(tmp_path, bad).unlink()
    with pytest.raises(BlobUnavailableError, match=f"blob {bad} is missing") as info:
        await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, [claim])
    assert info.value.reason == "missing"
    code, out, _ = await storage_cli(env, "verify", str(tmp_path))
    assert code == 1 and f"missing {bad} (manifest {claim.claim_data['m']})" in out, out

    # References this driver did not make: garbage, and a chunk passed off as a manifest.
    chunk = chunk_digests(tmp_path, claim)[0]
    for claim_data in ({"m": "zz", "size": "x"}, {"m": chunk}, {}):
        forged = dataclasses.replace(claim, claim_data=claim_data)
        with pytest.raises(BlobUnavailableError) as info:
            await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, [forged])
        assert info.value.reason == "bad-reference" and "\n" not in str(info.value)


async def test_partial_temp_files_are_removed_after_a_grace_period(tmp_path: Path) -> None:
    """A killed writer (or a full disk) leaves partial files in tmp/; the next driver to
    start, and gc, remove those older than the grace period, not a concurrent writer's."""
    await LocalStorageDriver(tmp_path).store(ctx("sess-a"), [request_payload(3)])
    tmp = tmp_path / "tmp"
    old = time.time() - 2 * storage.TMP_GRACE_S
    stale = tmp / f"{'ab' * 32}.{uuid.uuid4().hex}"
    stale.write_bytes(b"partial")
    trash = tmp / f"gc-{uuid.uuid4().hex}" / "some-session"
    trash.mkdir(parents=True)
    (trash / "w.idx").write_bytes(b"ab" * 32 + b"\n")
    for p in (stale, trash / "w.idx", trash, trash.parent):
        os.utime(p, (old, old))
    writing = tmp / f"{'cd' * 32}.{uuid.uuid4().hex}"  # a concurrent writer's, just now
    writing.write_bytes(b"in flight")

    LocalStorageDriver(tmp_path)  # a worker starting
    assert sorted(tmp.iterdir()) == [writing]
    assert storage_stats(tmp_path)["tmp_files"] == 1
    os.utime(writing, (old, old))
    gc_orphans(tmp_path)
    assert not any(tmp.iterdir())


async def test_a_full_disk_is_one_retryable_line_and_leaves_no_partial_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the middle of a blob: a one-line `StoreFullError` (an OSError) naming
    the store and its free space; the partial file is gone, no blob is half-written,
    and the same store call succeeds once there is space."""
    real_write = storage._write_all
    calls = 0

    def full_after_two_blobs(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return real_write(fd, data)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "_write_all", full_after_two_blobs)
    driver = LocalStorageDriver(tmp_path, min_chunk=1024)
    payload = request_payload(12)
    with pytest.raises(StoreFullError) as info:
        await driver.store(ctx("sess-a"), [payload])
    message = str(info.value)
    print(message)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert str(tmp_path) in message and "MiB free" in message and "\n" not in message
    assert not any((tmp_path / "tmp").iterdir())
    check = verify_store(tmp_path)
    assert check.ok and check.blobs == 2, check

    monkeypatch.setattr(storage, "_write_all", real_write)
    (claim,) = await driver.store(ctx("sess-a"), [payload])  # the retry
    assert await LocalStorageDriver(tmp_path).retrieve(RETRIEVE, [claim]) == [payload]
    assert verify_store(tmp_path).ok
