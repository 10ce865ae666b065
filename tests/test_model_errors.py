"""call_model error mapping against the fake server, through a real worker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError

from temporal_handoff.schemas.model_io import ModelRequest
from temporal_handoff.testing import EchoBrain, FakeAnthropicServer, Fault
from tests.bare_workflows import OneModelCall
from tests.conftest import running_worker

MODEL = "claude-sonnet-4-6"


def request(**kw: Any) -> ModelRequest:
    return ModelRequest(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], **kw
    )


async def call(client: Client, task_queue: str, fake: FakeAnthropicServer, req: ModelRequest):
    async with running_worker(client, task_queue, fake.base_url, extra_workflows=[OneModelCall]):
        handle = await client.start_workflow(
            OneModelCall.run, req, id=f"call-{uuid.uuid4()}", task_queue=task_queue
        )
        return handle, await handle.result()


def attempts(fake: FakeAnthropicServer) -> list:
    return fake.message_requests()


async def test_429_honours_retry_after(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(status=429, retry_after=2, times=1))
        _, resp = await call(client, task_queue, fake, request())
        reqs = attempts(fake)
    assert [r.status for r in reqs] == [429, 200]
    assert reqs[1].t - reqs[0].t >= 2.0
    assert resp.usage.input_tokens > 0 and resp.stop_reason == "end_turn"


@pytest.mark.parametrize("status", [529, 500, 408, 409])
async def test_retryable_statuses(client: Client, task_queue: str, status: int) -> None:
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(status=status, times=2))
        _, resp = await call(client, task_queue, fake, request())
        reqs = attempts(fake)
    assert [r.status for r in reqs] == [status, status, 200]
    assert resp.content[0]["type"] == "text"


async def test_dropped_connection_is_retried(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(drop_connection=True, times=1))
        _, resp = await call(client, task_queue, fake, request())
        reqs = attempts(fake)
    assert len(reqs) == 2 and reqs[-1].status == 200
    assert resp.usage.output_tokens > 0


async def test_should_retry_header_wins(client: Client, task_queue: str) -> None:
    # 500 is normally retried, but the server says not to.
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(status=500, should_retry=False, times=1))
        with pytest.raises(WorkflowFailureError):
            await call(client, task_queue, fake, request())
        assert len(attempts(fake)) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_client_errors_fail_fast_with_api_message(
    client: Client, task_queue: str, status: int
) -> None:
    message = f"the api says {status} because reasons"
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(status=status, message=message))
        with pytest.raises(WorkflowFailureError) as info:
            await call(client, task_queue, fake, request())
        reqs = attempts(fake)
    assert len(reqs) == 1  # no retry
    err = info.value.cause
    assert isinstance(err, ActivityError)
    app = err.cause
    assert isinstance(app, ApplicationError)
    assert app.non_retryable
    assert message in app.message
    assert app.type == f"AnthropicStatus{status}"


async def test_large_max_tokens_streams(client: Client, task_queue: str) -> None:
    # 64K max_tokens would exceed the SDK's 10-minute non-streaming limit.
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        _, resp = await call(client, task_queue, fake, request(max_tokens=64_000))
        reqs = attempts(fake)
    assert resp.streamed and reqs[0].stream
    assert resp.usage.output_tokens > 0 and resp.content[0]["type"] == "text"


async def test_preflight_refuses_an_overflowing_prompt(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        _, resp = await call(
            client, task_queue, fake, request(known_occupancy=9_999, new_from_index=0,
                                              preflight_limit=10_000)
        )
        assert attempts(fake) == []
    assert resp.preflight_refused and resp.estimated_prompt_tokens > 10_000


async def test_mid_stream_overload_after_a_200_is_retried(client: Client, task_queue: str) -> None:
    # The SDK raises APIStatusError(status_code=200, type="overloaded_error"): transient.
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(stream_error="overloaded_error", times=2))
        handle, resp = await call(
            client, task_queue, fake, request(max_tokens=1024, stream_threshold=512)
        )
        reqs = attempts(fake)
        history = await handle.fetch_history()
    assert [r.status for r in reqs] == [200, 200, 200]
    assert [r.error for r in reqs] == ["mid-stream overloaded_error"] * 2 + [None]
    assert resp.streamed and resp.content[0]["type"] == "text"
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert started == [3]  # one activity, its third attempt succeeded


@pytest.mark.parametrize(
    ("error_type", "retried"),
    [("api_error", True), ("rate_limit_error", True), ("invalid_request_error", False),
     ("permission_error", False)],
)
async def test_errors_classified_by_type(
    client: Client, task_queue: str, error_type: str, retried: bool
) -> None:
    # A 400 whose type says transient is retried; a 500 whose type says permanent is not.
    status = 400 if retried else 500
    with FakeAnthropicServer(brain=EchoBrain()) as fake:
        fake.add_fault(Fault(status=status, error_type=error_type, times=1))
        if retried:
            _, resp = await call(client, task_queue, fake, request())
            assert resp.stop_reason == "end_turn"
        else:
            with pytest.raises(WorkflowFailureError):
                await call(client, task_queue, fake, request())
        assert len(attempts(fake)) == (2 if retried else 1)
