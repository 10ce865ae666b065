"""Opt-in encryption: AES-GCM codec, key rotation, encoded failures, the codec server."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.codec import (
    ENCODING,
    KEY_ID_METADATA,
    AesGcmCodec,
    CodecKeyError,
    codec_from_env,
    parse_keys,
)
from temporal_handoff.codec_server import serve_codec
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin
from tests.conftest import running_worker
from tests.helpers import start_session

UI = "http://localhost:8233"
TOKEN = "codec-token-" + "x" * 20


def payloads_in(msg: Message) -> Iterator[Payload]:
    """Every `Payload` anywhere inside a protobuf message."""
    if isinstance(msg, Payload):
        yield msg
        return
    for field, value in msg.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            items = value.values()
        elif field.is_repeated:
            items = value
        else:
            items = [value]
        for item in items:
            if isinstance(item, Message):
                yield from payloads_in(item)


def is_search_attribute(p: Payload) -> bool:
    return b"type" in p.metadata  # indexed search attribute values carry their type


# ---------------------------------------------------------------- unit
async def test_codec_roundtrip_rotation_and_errors() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    old = AesGcmCodec({"k1": k1})
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"secret": "MARKER"}')
    (enc,) = await old.encode([plain])
    assert enc.metadata["encoding"] == ENCODING
    assert enc.metadata[KEY_ID_METADATA] == b"k1"
    assert b"MARKER" not in enc.SerializeToString()
    (enc_again,) = await old.encode([plain])
    assert enc_again.data[:12] != enc.data[:12]  # fresh nonce each time
    assert (await old.decode([enc]))[0] == plain
    # Not encrypted: passes through.
    assert (await old.decode([plain]))[0] == plain

    # Rotation: k2 is active, k1 still decrypts.
    rotated = AesGcmCodec({"k2": k2, "k1": k1}, "k2")
    assert (await rotated.decode([enc]))[0] == plain
    (enc2,) = await rotated.encode([plain])
    assert enc2.metadata[KEY_ID_METADATA] == b"k2"
    with pytest.raises(CodecKeyError, match="key id 'k2'"):
        await old.decode([enc2])
    # Tampering and key ids swapped are detected.
    bad = Payload()
    bad.CopyFrom(enc)
    bad.data = bad.data[:-1] + bytes([bad.data[-1] ^ 1])
    with pytest.raises(CodecKeyError, match="failed authentication"):
        await old.decode([bad])
    swapped = AesGcmCodec({"k1": k2})
    with pytest.raises(CodecKeyError, match="failed authentication"):
        await swapped.decode([enc])

    # Keys from the environment: first = active; no key material in repr or errors.
    b64 = {k: base64.b64encode(v).decode() for k, v in (("k1", k1), ("k2", k2))}
    env_codec = codec_from_env({"HANDOFF_CODEC_KEYS": f"k2:{b64['k2']}, k1:{b64['k1']}"})
    assert env_codec is not None
    assert env_codec.active_key_id == "k2" and env_codec.key_ids == ["k2", "k1"]
    assert b64["k1"] not in repr(env_codec) and b64["k2"] not in repr(env_codec)
    assert (await env_codec.decode([enc]))[0] == plain
    assert codec_from_env({}) is None
    for spec, msg in [
        ("k1", "is not '<key id>:<base64 key>'"),
        (f"k1:{b64['k1'][:-8]}", "AES-256-GCM needs 32"),
        ("k1:!!notbase64!!", "not valid base64"),
        (f"k1:{b64['k1']},k1:{b64['k2']}", "duplicate key id 'k1'"),
        (f"bad id:{b64['k1']}", "key id must be"),
        (" , ", "has no keys"),
    ]:
        with pytest.raises(CodecKeyError, match=msg) as info:
            parse_keys(spec)
        assert b64["k1"] not in str(info.value) and b64["k2"] not in str(info.value)


async def test_failure_messages_are_encoded(env: WorkflowEnvironment) -> None:
    codec = AesGcmCodec({"k1": os.urandom(32)})
    client = Client(**{**env.client.config(), "plugins": [HandoffPlugin(codec=codec)]})
    conv = client.data_converter
    failure = Failure()
    await conv.encode_failure(ApplicationError("db password is MARKER-FAIL"), failure)
    assert "MARKER-FAIL" not in failure.message
    assert b"MARKER-FAIL" not in failure.SerializeToString()
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    err = await conv.decode_failure(failure)
    assert "MARKER-FAIL" in str(err)
    # A user's own codec wins over the plugin's.
    mine = AesGcmCodec({"mine": os.urandom(32)})
    base = Client(**{**env.client.config(), "data_converter": conv.__class__(payload_codec=mine)})
    cfg = base.config()
    cfg["plugins"] = [HandoffPlugin(codec=codec)]
    assert Client(**cfg).data_converter.payload_codec is mine


# ---------------------------------------------------------------- end to end
async def test_history_is_ciphertext_and_codec_server_decodes_with_token(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    k1 = os.urandom(32)
    codec = AesGcmCodec({"k1": k1})
    enc_client = Client(**{**env.client.config(), "plugins": [HandoffPlugin(codec=codec)]})
    marker = f"PLAINTEXT-TITLE-{uuid.uuid4().hex}"
    project = synthetic_project(24, 2)
    first = next(iter(project.tasks))
    project.tasks[first].title = marker

    brain = ScriptedAgentBrain(summary_words=120)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(enc_client, task_queue, fake.base_url, codec=codec):
            handle = await start_session(
                enc_client, task_queue, project, prefix="codec", context_window=3_500, max_tokens=300,
            )
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 1  # at least one handoff: child workflow + memo
    assert result.project.tasks[first].title == marker

    # Stored history, read with a client WITHOUT the codec: ciphertext only.
    runs = [(r.workflow_id, r.run_id) for r in result.lineage]
    runs += [(f"{handle.id}-handoff-{g}", None) for g in range(result.generation)]
    start_input: Payload | None = None
    for wid, run_id in runs:
        history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        raw = b"".join(e.SerializeToString() for e in history.events)
        assert marker.encode() not in raw, f"plaintext task title in history of {wid}"
        seen = 0
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                # Version markers (`workflow.patched`) hold only the patch id and are
                # written by the SDK core, outside the codec.
                continue
            for p in payloads_in(event):
                if is_search_attribute(p):
                    continue
                assert p.metadata["encoding"] == ENCODING, (wid, event.event_type)
                seen += 1
        assert seen > 0
        if run_id == result.lineage[0].run_id:
            attrs = history.events[0].workflow_execution_started_event_attributes
            start_input = attrs.input.payloads[0]
        desc = await client.get_workflow_handle(wid, run_id=run_id).describe()
        for v in desc.raw_description.workflow_execution_info.memo.fields.values():
            assert v.metadata["encoding"] == ENCODING
    assert start_input is not None
    with pytest.raises(Exception):  # noqa: B017 - the plain client cannot read it
        await client.data_converter.decode([start_input], [SessionInput])
    (inp,) = await enc_client.data_converter.decode([start_input], [SessionInput])
    assert inp.project.tasks[first].title == marker

    # Rotation: after k2 becomes active, data written under k1 still decodes.
    rotated = AesGcmCodec({"k2": os.urandom(32), "k1": k1}, "k2")
    rot_client = Client(**{**env.client.config(), "plugins": [HandoffPlugin(codec=rotated)]})
    again = await rot_client.get_workflow_handle(handle.id, result_type=SessionResult).result()
    assert again.project.tasks[first].title == marker

    # The codec server decodes for the UI only with the token.
    body = json_format.MessageToDict(Payloads(payloads=[start_input]))
    runner = await serve_codec(rotated, token=TOKEN, ui_origin=UI, host="127.0.0.1", port=0)
    try:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                async with http.post(f"{base}/decode", json=body, headers=headers) as r:
                    assert r.status == 401
                    assert marker not in await r.text()
            auth = {"Authorization": f"Bearer {TOKEN}", "Origin": UI, "X-Namespace": "default"}
            for path in ("/decode", "/default/decode"):
                async with http.post(base + path, json=body, headers=auth) as r:
                    assert r.status == 200, await r.text()
                    assert r.headers["Access-Control-Allow-Origin"] == UI
                    assert r.headers["Access-Control-Allow-Credentials"] == "true"
                    out = json_format.ParseDict(await r.json(), Payloads())
                (decoded,) = out.payloads
                assert decoded.metadata["encoding"] == b"json/plain"
                assert marker.encode() in decoded.data
            # encode → decode round trip under the active key.
            async with http.post(f"{base}/encode", json=await r.json(), headers=auth) as r2:
                assert r2.status == 200
                enc = json_format.ParseDict(await r2.json(), Payloads()).payloads[0]
            assert enc.metadata[KEY_ID_METADATA] == b"k2"
            assert (await rotated.decode([enc]))[0] == decoded
            # Garbage in: a 400 with a reason, not a crash.
            async with http.post(f"{base}/decode", data=b"{nope", headers=auth) as r:
                assert r.status == 400
            # CORS: only the configured origin gets the header.
            evil = {**auth, "Origin": "http://evil.example"}
            async with http.post(f"{base}/decode", json=body, headers=evil) as r:
                assert r.status == 200
                assert "Access-Control-Allow-Origin" not in r.headers
            pre = {
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            }
            async with http.options(f"{base}/decode", headers=pre) as r:
                assert r.status in (200, 204)
                assert r.headers["Access-Control-Allow-Origin"] == UI
                assert r.headers["Access-Control-Allow-Credentials"] == "true"
                allowed = r.headers["Access-Control-Allow-Headers"].lower()
                assert {"authorization", "content-type", "x-namespace"} <= {
                    h.strip() for h in allowed.split(",")
                }
            async with http.options(
                f"{base}/decode", headers={**pre, "Origin": "http://evil.example"}
            ) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
            # A 401 to the UI still carries CORS, so the browser can show the error.
            async with http.post(f"{base}/decode", json=body, headers={"Origin": UI}) as r:
                assert r.status == 401
                assert r.headers["Access-Control-Allow-Origin"] == UI
    finally:
        await runner.cleanup()
