"""Untrusted input never freezes a session; commands sent the wrong way are answered.

Anyone who can signal a workflow can send any payload: a ciphertext under a key id the
workers do not have, a forged external-storage reference, an unknown encoding. Temporal
decodes an activation's payloads before any workflow code runs, so one such signal used
to fail every workflow task of the session from then on (and a reset re-applied it).
These tests send them with the plain `temporal` CLI, as an operator (or an attacker)
would, and assert that the session records a visible rejection (``status`` query, memo,
worker log) and still completes — as do commands sent with the wrong kind or shape.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowHandle,
)
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.codec import AesGcmCodec
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import SessionResult, SessionStatus
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workers.storage import external_storage
from tests.conftest import running_worker
from tests.test_operator_actions import (
    assert_each_task_completed_once,
    assert_no_task_failures_any_run,
    cleanup,
    session_result,
    start,
    temporal_cli,
    wait_status,
)

CRAFTED_SIGNALS: dict[str, list[str]] = {
    "unknown codec key id": [
        "--name", "resume", "--input", '"x"',
        "--input-meta", "encoding=binary/encrypted",
        "--input-meta", "encryption-key-id=nope",
    ],
    "tampered ciphertext under a known key id": [
        "--name", "resume", "--input", '"x"',
        "--input-meta", "encoding=binary/encrypted",
        "--input-meta", "encryption-key-id=k1",
    ],
    "forged storage reference (blob that does not exist)": [
        "--name", "resume",
        "--input", '{"driverName": "handoff-local", "claimData": {"m": "%s", "size": "9"}}'
        % ("ab" * 32),
        "--input-meta", "encoding=json/protobuf",
        "--input-meta", "messageType=temporal.api.sdk.v1.ExternalStorageReference",
    ],
    "forged legacy storage reference": [
        "--name", "resume",
        "--input", '{"driver_name": "handoff-local", "driver_claim": {"claim_data": {"m": "zz"}}}',
        "--input-meta", "encoding=json/external-storage-reference",
    ],
    "storage reference marker": [
        "--name", "pause", "--input", '{"anything": 1}',
        "--input-meta", "__temporal_external_storage_reference=true",
    ],
    "unknown encoding": [
        "--name", "flush", "--input", '"x"', "--input-meta", "encoding=binary/garbage",
    ],
}


async def _signal(env: WorkflowEnvironment, wid: str, *args: str) -> None:
    await temporal_cli(env, "workflow", "signal", "--workflow-id", wid, *args)


async def _update(env: WorkflowEnvironment, wid: str, *args: str) -> str:
    """`temporal workflow update execute`; its output (stderr if it was rejected)."""
    return await temporal_cli(
        env, "workflow", "update", "execute", "--workflow-id", wid, *args, check=False
    )


async def _memo(client: Client, wid: str) -> dict[str, object]:
    return await (await client.get_workflow_handle(wid).describe()).memo()


def _rejected(n: int):  # type: ignore[no-untyped-def]
    return lambda s: len(s.rejected_commands) >= n


async def test_crafted_signals_are_dropped_visibly_and_the_session_completes(
    env: WorkflowEnvironment, client: Client, task_queue: str, tmp_path: Path
) -> None:
    codec = AesGcmCodec({"k1": os.urandom(32)})
    store = external_storage(tmp_path / "store", threshold_bytes=256, inline_max_bytes=0)
    config = client.config()
    config["plugins"] = [HandoffPlugin(codec=codec, storage=store)]
    client = Client(**config)  # reads what the workers write
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url, codec=codec, storage=store):
            handle = await start(client, task_queue, 8, paused=True)
            wid = handle.id
            async with cleanup(client, env, wid):
                await wait_status(client, wid, lambda s: s.paused, "the paused session")
                for args in CRAFTED_SIGNALS.values():
                    await _signal(env, wid, *args)
                st = await wait_status(
                    client, wid, _rejected(len(CRAFTED_SIGNALS)), "every crafted signal answered"
                )
                assert st.paused, "a crafted resume must not resume the session"
                memo = await _memo(client, wid)
                # The real resume, sent by the same CLI, still works.
                await _signal(env, wid, "--name", "resume")
                result = await session_result(client, wid)
    print("\n".join(st.rejected_commands))
    assert len(st.rejected_commands) == len(CRAFTED_SIGNALS), st.rejected_commands
    assert all("could not be decoded" in r for r in st.rejected_commands), st.rejected_commands
    joined = "\n".join(st.rejected_commands)
    assert "nope" in joined, "the unknown key id is named"
    assert "binary/garbage" in joined, "the unknown encoding is named"
    assert memo.get("last_rejected_command") == st.rejected_commands[-1], memo
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
    await assert_no_task_failures_any_run(client, wid)


async def test_commands_sent_the_wrong_way_are_answered(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle: WorkflowHandle[object, SessionResult] = await start(
                client, task_queue, 8, paused=True
            )
            wid = handle.id
            async with cleanup(client, env, wid):
                await wait_status(client, wid, lambda s: s.paused, "the paused session")
                # Signals that are updates, unknown names, wrong shapes: recorded.
                await _signal(env, wid, "--name", "say", "--input", '{"text": "hi"}')
                await _signal(env, wid, "--name", "decide", "--input", '{"blocker_id": "B"}')
                await _signal(env, wid, "--name", "no_such_command")
                await _signal(env, wid, "--name", "pause", "--input", '"now please"')
                await _signal(env, wid, "--name", "abort", "--input", '{"reasn": "typo"}')
                # A forged reference on a worker without external storage.
                await _signal(
                    env, wid, "--name", "resume",
                    "--input", '{"driverName": "x", "claimData": {}}',
                    "--input-meta", "encoding=json/external-storage-reference",
                )
                st = await wait_status(client, wid, _rejected(6), "six rejections")
                # Updates: rejected with a reason naming the field / the right command.
                no_input = await _update(env, wid, "--name", "decide")
                bad_field = await _update(
                    env, wid, "--name", "decide",
                    "--input", '{"blocker_id": "B", "decison": "x"}',
                )
                signal_as_update = await _update(env, wid, "--name", "pause")
                undecodable = await _update(
                    env, wid, "--name", "say", "--input", '"x"',
                    "--input-meta", "encoding=binary/encrypted",
                    "--input-meta", "encryption-key-id=nope",
                )
                # A bare string is accepted where one field is the obvious meaning.
                said = await _update(env, wid, "--name", "say", "--input", '"hello from the CLI"')
                status: SessionStatus = await handle.query("status", result_type=SessionStatus)
                await _signal(env, wid, "--name", "abort", "--input", '"stop now"')
                result = await session_result(client, wid)
    print("\n".join(st.rejected_commands))
    print(no_input, bad_field, signal_as_update, undecodable, said, sep="\n")
    first, second, third, fourth, fifth, sixth = st.rejected_commands[:6]
    assert "say is an update" in first and "update execute" in first, first
    assert "decide is an update" in second, second
    assert "no command named 'no_such_command'" in third, third
    assert "pause takes no input" in fourth, fourth
    assert "'reasn'" in fifth, fifth
    assert "could not be decoded" in sixth, sixth
    assert status.paused, "no rejected command changed the session"
    assert "decide needs input like" in no_input and "blocker_id" in no_input, no_input
    assert "decision" in bad_field, bad_field
    assert "pause is a signal" in signal_as_update, signal_as_update
    assert "could not be decoded" in undecodable and "binary/encrypted" in undecodable, undecodable
    assert "message queued" in said, said
    assert result.reason == TerminationReason.USER_ABORT, (result.reason, result.message)
    assert "stop now" in result.message, result.message
    assert "hello from the CLI" in result.project.human_messages
    assert result.resume_input() is not None
    await assert_no_task_failures_any_run(client, wid)


async def _task_failure(client: Client, wid: str, cap: float = 60.0) -> str:
    """The root cause of the first failed workflow task of the current run (polls)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cap
    while loop.time() < deadline:
        async for e in client.get_workflow_handle(wid).fetch_history_events():
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                failure = e.workflow_task_failed_event_attributes.failure
                messages = [failure.message]
                while failure.HasField("cause"):
                    failure = failure.cause
                    messages.append(failure.message)
                return messages[-1]  # the SDK wraps it in "Failed decoding arguments"
        await asyncio.sleep(0.2)
    raise AssertionError(f"no workflow task failed within {cap:.0f}s")


async def test_own_payload_missing_names_the_blob_and_restoring_it_heals_the_session(
    env: WorkflowEnvironment, client: Client, task_queue: str, tmp_path: Path
) -> None:
    """The session's *own* input is unreadable (its blobs were deleted between worker
    restarts). A replaying run cannot fail without a nondeterminism error, so the
    workflow task fails with a one-line cause naming the missing blob; restoring the
    blobs lets the session continue by itself, with no reset."""
    root = tmp_path / "store"
    store = external_storage(root, threshold_bytes=256, inline_max_bytes=0)
    config = client.config()
    config["plugins"] = [HandoffPlugin(storage=store)]
    client = Client(**config)
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url, storage=store):
            handle = await start(client, task_queue, 8, paused=True)
            wid = handle.id
            await wait_status(client, wid, lambda s: s.paused, "the paused session")
        backup = tmp_path / "backup"
        shutil.copytree(root / "blobs", backup)
        for blob in (root / "blobs").rglob("*"):
            if blob.is_file():
                blob.unlink()
        fresh = external_storage(root, threshold_bytes=256, inline_max_bytes=0)  # no cached bytes
        async with running_worker(client, task_queue, fake.base_url, storage=fresh):
            async with cleanup(client, env, wid):
                await _signal(env, wid, "--name", "resume")  # a new task: replays the run
                message = await _task_failure(client, wid)
                shutil.copytree(backup, root / "blobs", dirs_exist_ok=True)
                result = await handle.result()
    print("task failure:", message)
    assert "could not be decoded" in message and "\n" not in message, message
    assert "external storage" in message, message
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
