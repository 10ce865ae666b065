"""A loopback fake of the Anthropic Messages API, speaking the real wire format.

`FakeAnthropicServer` is a real HTTP server (aiohttp) on 127.0.0.1 that the real
``anthropic`` client talks to via ``base_url``. It runs in its own thread with its
own event loop, so sync code, pytest-asyncio tests and Temporal workers can all
use it without sharing a loop with it.

Endpoints:

* ``POST /v1/messages`` — JSON, or server-sent events when ``"stream": true``.
* ``POST /v1/messages/count_tokens`` — ``{"input_tokens": N}``.
* ``GET /v1/models/{id}`` and ``GET /v1/models`` — ModelInfo objects whose
  ``max_input_tokens`` is the server's context window for that model.

Token accounting (what tests assert against): like real Claude, not a ratio of
tiktoken (`fake_tokens`; ``server.counter`` counts any body as the server does):

* A prompt's count adds a model-dependent tokenizer (separate factors on cl100k
  counts of prose and of code/JSON), per-message and per-block framing, tool
  definitions, and the tool-use system prompt (346 tokens on Claude 4+ with
  ``tool_choice`` auto) whenever ``tools`` is sent.
* ``POST /v1/messages/count_tokens`` is an estimate: deterministic, within 1.5 % of
  the count a create call reports for the same prompt, usually not equal to it.
* ``output_tokens`` counts the reply's blocks with the same tokenizer and block frames.
* Prompt caching per Anthropic's documented rules, in `fake_cache.PromptCache`
  (``server.prompt_cache``; set its ``clock`` to control TTLs in tests): prefix
  order tools → system → messages, explicit breakpoints on tools, system and
  message blocks, the top-level automatic ``cache_control``, at most 4 breakpoints
  (else 400), the minimum cacheable length per model, 5-minute and 1-hour TTLs,
  the ~20-block lookback, and the ``cache_creation`` TTL breakdown. ``input_tokens
  + cache_creation_input_tokens + cache_read_input_tokens`` always equals the
  prompt count.
* A prompt count above the model's context window is rejected with 400
  ``invalid_request_error`` ``prompt is too long: N tokens > M maximum``.
* Replies are cut at ``max_tokens`` (``stop_reason: "max_tokens"``, possibly inside a
  tool input) and at a full context window (``model_context_window_exceeded``, or a
  400 for older models); streams can end with a mid-stream ``event: error``
  (`Fault.stream_error`, ``stream_error_rate``). See `fake_responses`.

Strict like the real API: every messages / count_tokens request is validated by
`fake_validation` (roles, non-empty content and text, tool_use/tool_result pairing,
``max_tokens`` against the model's output limit, unknown models → 404, the
``anthropic-version`` header) and rejected with the real status, error type and
message. Models, windows and output limits come from `fake_models`.

Faults (`Fault`) inject errors, delays and dropped connections; every request is
logged as a `RequestRecord` in `FakeAnthropicServer.requests`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from temporal_handoff.activities.tokenizer import get_encoder
from temporal_handoff.testing import fake_responses
from temporal_handoff.testing.brain import Brain, BrainReply, ScriptedAgentBrain
from temporal_handoff.testing.fake_cache import CacheRequestError, PromptCache
from temporal_handoff.testing.fake_models import MODELS, FakeModel, find_model
from temporal_handoff.testing.fake_tokens import TokenCounter
from temporal_handoff.testing.fake_validation import check_window, validate_request

__all__ = [
    "DEFAULT_ERROR_TYPES",
    "FakeAnthropicServer",
    "Fault",
    "RequestRecord",
    "count_tokens",
]

_log = logging.getLogger(__name__)

from temporal_handoff.activities.tokenizer import ENCODING_NAME  # noqa: E402,F401  (re-exported)

DEFAULT_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Error ``type`` the real API uses for each HTTP status (others: ``api_error``)."""

_DEFAULT_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "api_error": "Internal server error.",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}

_STATUS_OF_TYPE: dict[str, int] = {t: s for s, t in DEFAULT_ERROR_TYPES.items()}


def _encoding() -> Any:
    """The offline cl100k encoding, shared with the activities' tokenizer."""
    return get_encoder()


DEFAULT_MODEL = "claude-sonnet-4-6"


def count_tokens(text: str, drift: float = 1.0, *, model: str = DEFAULT_MODEL) -> int:
    """Tokens of plain text (no framing) as the server counts it for ``model``
    (`fake_tokens.TokenCounter.text`), times ``drift``.

    Special-token strings (e.g. ``<|endoftext|>``) count as plain text.
    """
    return TokenCounter(drift).text(text, model)


@dataclass
class Fault:
    """One injected failure; faults are consulted in order, the first match applies.

    A fault matches a request when ``path`` matches (``None`` = any path), ``match``
    is a substring of the raw JSON body, ``times`` is not used up, and the seeded
    ``rate`` roll succeeds. When it applies: wait ``delay_s``, then drop the
    connection, or answer ``status`` with an error body, or (neither set) carry on
    and answer normally — optionally with ``stop_reason`` overridden.

    Attributes:
        status: HTTP status of the error response (None: no error response).
        retry_after: ``retry-after`` header value in seconds.
        retry_after_ms: ``retry-after-ms`` header value.
        should_retry: Sets ``x-should-retry: true|false`` (the SDK obeys it).
        delay_s: Seconds to wait before responding (e.g. to exceed a timeout).
        drop_connection: Close the TCP connection without any response; the
            client raises ``APIConnectionError``.
        message: Error message (default derived from the error type).
        error_type: Error ``type`` (default derived from ``status``, see
            `DEFAULT_ERROR_TYPES`).
        times: How many requests this fault applies to (None = unlimited).
        rate: Probability of applying per matching request (None = always), rolled
            with the server's seeded RNG.
        path: Request path this fault applies to (None = every path).
        match: Substring that must occur in the raw request body.
        stop_reason: For non-error faults, override the reply's ``stop_reason``
            (e.g. ``"model_context_window_exceeded"`` or ``"max_tokens"``).
        headers: Extra response headers.
        stream_error: Error ``type`` (e.g. ``"overloaded_error"``) sent as a
            mid-stream ``event: error`` after a 200 and ``stream_error_after`` events;
            a non-streaming request gets that error's HTTP status instead (529).
        stream_error_after: SSE events sent before the error (at least
            ``message_start``).
        hold_s: For non-error faults on streamed requests: once the whole reply
            (through ``message_stop``) is sent, keep the response open this long.
            The client has the answer and its usage (billed) but its call does not
            return yet, e.g. past an activity's start-to-close timeout.
        applied: How many times the fault has applied (maintained by the server).
    """

    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    delay_s: float = 0.0
    drop_connection: bool = False
    message: str | None = None
    error_type: str | None = None
    times: int | None = None
    rate: float | None = None
    path: str | None = "/v1/messages"
    match: str | None = None
    stop_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream_error: str | None = None
    stream_error_after: int = 3
    hold_s: float = 0.0
    applied: int = 0

    def describe(self) -> str:
        """Short description for the request log."""
        if self.drop_connection:
            return "drop_connection"
        if self.stream_error is not None:
            return f"mid-stream {self.stream_error}"
        if self.status is not None:
            return f"{self.status} {self.resolved_error_type()}"
        if self.stop_reason is not None:
            return f"stop_reason={self.stop_reason}"
        if self.hold_s:
            return f"hold {self.hold_s:g}s after the reply"
        return f"delay {self.delay_s:g}s"

    def resolved_error_type(self) -> str:
        """The error ``type`` sent in the body."""
        if self.error_type:
            return self.error_type
        return DEFAULT_ERROR_TYPES.get(self.status or 500, "api_error")

    def error_headers(self) -> dict[str, str]:
        """Response headers for an error response from this fault."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["retry-after"] = f"{self.retry_after:g}"
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = str(self.retry_after_ms)
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers


@dataclass
class RequestRecord:
    """One request as the server saw it (appended on arrival, completed in place).

    Attributes:
        t: ``time.time()`` at arrival.
        method: HTTP method.
        path: Request path, e.g. ``/v1/messages``.
        request_id: The ``request-id`` header returned (``req_fake_<n>``).
        model: ``model`` from the body (or the path for ``/v1/models/{id}``).
        input_tokens: Prompt token count computed by the server (messages and
            count_tokens requests whose body was valid), else None.
        status: HTTP status sent; None while in flight or if the connection was
            dropped.
        fault: None, or the description of the fault that applied.
        metadata: The request's ``metadata`` dict (e.g. ``{"user_id": ...}``).
        stream: Whether the client asked for SSE.
        usage: The usage object returned (successful messages requests).
        duration_s: Seconds from arrival to response (None while in flight).
        error: Error message sent, if any.
        answered: The whole reply was written to the client (JSON body, or SSE
            through ``message_stop``): an answer the API bills, with ``usage``.
    """

    t: float
    method: str
    path: str
    request_id: str
    model: str | None = None
    input_tokens: int | None = None
    status: int | None = None
    fault: str | None = None
    metadata: dict[str, Any] | None = None
    stream: bool = False
    usage: dict[str, int] | None = None
    duration_s: float | None = None
    error: str | None = None
    answered: bool = False


class _ApiError(Exception):
    """An error response in the API's shape, raised inside handlers."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or DEFAULT_ERROR_TYPES.get(status, "api_error")
        self.headers = dict(headers or {})


class FakeAnthropicServer:
    """A loopback Anthropic Messages API server driven by a scripted brain.

    Example:
        >>> with FakeAnthropicServer(brain=ScriptedAgentBrain()) as server:
        ...     client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="test")

    Also usable as ``async with``; ``start()``/``stop()`` for explicit control.
    """

    def __init__(
        self,
        brain: Brain | None = None,
        *,
        drift: float = 1.0,
        latency_s: float = 0.0,
        context_windows: Mapping[str, int] | None = None,
        default_context_window: int | None = None,
        max_output_tokens: int | None = None,
        faults: Sequence[Fault] = (),
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 2048,
        api_key: str | None = None,
        workers: int | None = None,
        stream_error_rate: float = 0.0,
        max_request_bytes: int = fake_responses.MAX_REQUEST_BYTES,
    ) -> None:
        """Configure the server (nothing listens until `start`).

        Args:
            brain: Chooses reply content; default `ScriptedAgentBrain()`.
            drift: Extra multiplier on the tokenizer's text counts (1.0: each
                model's own profile, see `fake_tokens`), for a tokenizer further
                from tiktoken.
            latency_s: Non-blocking delay before answering each messages request.
            context_windows: Context window per model id. A key matches the model
                id exactly or as a prefix followed by ``-`` (ids carry date
                suffixes); the longest key wins. Keys that are not in the built-in
                catalogue (`fake_models.MODELS`) become extra models; the Models API
                serves both. Other ids are unknown models (404).
            default_context_window: Window for catalogue models not in
                ``context_windows`` (None: each model's published window).
            max_output_tokens: Largest accepted ``max_tokens``, as the Models API
                reports it (None: each model's published limit; 64,000 for extra
                models).
            faults: Initial faults (see `add_fault`).
            seed: Seed of the RNG used for `Fault.rate` rolls.
            host: Interface to bind.
            port: Port to bind (0 = a free random port).
            backlog: Listen backlog; large so that bursts of ~1,000 concurrent
                connections are not refused.
            api_key: If set, requests must send it as ``x-api-key`` (or bearer
                token) or get 401 ``authentication_error``.
            workers: Threads for token counting and the brain (default: CPU
                count, max 8), so big prompts do not stall the event loop.
            stream_error_rate: Probability (seeded RNG) that a streamed reply ends
                with a mid-stream ``overloaded_error`` event, as under real load.
            max_request_bytes: Larger request bodies get 413 ``request_too_large``.
        """
        self.brain: Brain = brain if brain is not None else ScriptedAgentBrain()
        self.drift = drift
        self.counter = TokenCounter(drift)
        """Counts prompts, ``count_tokens`` estimates and replies (`fake_tokens`)."""
        self.latency_s = latency_s
        self.context_windows: dict[str, int] = dict(context_windows or {})
        self.default_context_window = default_context_window
        self.max_output_tokens = max_output_tokens
        self.host = host
        self.port = port
        self.backlog = backlog
        self.api_key = api_key
        self._workers = workers or min(8, os.cpu_count() or 2)
        self.stream_error_rate = stream_error_rate
        self.max_request_bytes = max_request_bytes

        self._lock = threading.Lock()
        self._faults: list[Fault] = list(faults)
        self._rng = random.Random(seed)
        self._requests: list[RequestRecord] = []
        self.prompt_cache = PromptCache()
        """The prompt cache (`fake_cache.PromptCache`); tests may replace its ``clock``."""
        self._ids = itertools.count(1)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._bound_port: int | None = None

    # ---- lifecycle -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` for ``anthropic.Anthropic(base_url=...)``."""
        if self._bound_port is None:
            raise RuntimeError("FakeAnthropicServer is not started")
        return f"http://{self.host}:{self._bound_port}"

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._bound_port is not None

    def start(self) -> Self:
        """Start listening; blocks until the socket is bound. Returns ``self``."""
        if self._thread is not None:
            return self
        _encoding()  # load the tokenizer up front: first requests stay fast
        ready = threading.Event()
        failure: list[BaseException] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="fake-anthropic-worker"
        )

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-anthropic-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._executor.shutdown(wait=False)
            raise failure[0]
        return self

    async def _serve(self) -> None:
        # A generous body limit: a 200K-token prompt is ~1 MB of JSON, aiohttp's
        # default client_max_size is 1 MiB.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._handle_messages)
        app.router.add_post("/v1/messages/count_tokens", self._handle_count_tokens)
        app.router.add_get("/v1/models", self._handle_models_list)
        app.router.add_get("/v1/models/{model_id}", self._handle_model)
        # shutdown_timeout is short so stop() does not wait on requests parked in
        # a long `delay_s` fault.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=self.backlog)
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self._bound_port = int(sockets[0].getsockname()[1])
        else:  # pragma: no cover - aiohttp internals changed; fall back to addresses
            self._bound_port = int(runner.addresses[0][1])

    def stop(self) -> None:
        """Stop listening and join the server thread. Safe to call twice."""
        thread, loop, runner = self._thread, self._loop, self._runner
        if thread is None or loop is None:
            return
        if runner is not None:
            fut = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            try:
                fut.result(timeout=10)
            except Exception as exc:
                _log.warning("fake Anthropic server cleanup failed: %r", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._thread = self._loop = self._runner = self._executor = None
        self._bound_port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # start() blocks briefly (thread start + bind); keep the caller's loop free.
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ---- faults and log ----------------------------------------------------------
    def add_fault(self, fault: Fault) -> Fault:
        """Append a fault (consulted after those already added). Returns it."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove all faults."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """A snapshot of the configured faults."""
        with self._lock:
            return list(self._faults)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log (records of in-flight requests still change)."""
        with self._lock:
            return list(self._requests)

    def message_requests(self) -> list[RequestRecord]:
        """Log records of ``POST /v1/messages`` requests, successful or not."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def reset_log(self) -> None:
        """Clear the request log."""
        with self._lock:
            self._requests.clear()

    def reset_cache(self) -> None:
        """Forget every cached prompt prefix (next sighting is a cache write again)."""
        self.prompt_cache.clear()

    def model(self, model_id: str) -> FakeModel | None:
        """The model ``model_id`` names (with this server's windows and limits), or None."""
        best: str | None = None
        for key in self.context_windows:
            if (model_id == key or model_id.startswith(key + "-")) and (
                best is None or len(key) > len(best)
            ):
                best = key
        base = find_model(model_id)
        if base is None and best is None:
            return None
        if base is None:
            assert best is not None
            base = FakeModel(best, f"Fake {best}", 0, 64_000, True, "2025-01-01T00:00:00Z")
        window = (
            self.context_windows[best]
            if best is not None
            else self.default_context_window or base.context_window
        )
        return FakeModel(
            model_id,
            base.display_name,
            window,
            self.max_output_tokens or base.max_output_tokens,
            base.stops_on_overflow,
            base.created_at,
        )

    def get(self, model_id: str) -> FakeModel | None:
        """Alias of `model` (the lookup `fake_validation` expects)."""
        return self.model(model_id)

    def context_window(self, model: str) -> int:
        """The context window the server enforces for ``model`` (200K if unknown)."""
        found = self.model(model)
        return found.context_window if found is not None else (
            self.default_context_window or 200_000
        )

    # ---- accounting --------------------------------------------------------------
    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """Prompt count of a Messages API body, exactly as a create call reports it."""
        return self.counter.prompt(body)

    def count_tokens_estimate(self, body: Mapping[str, Any]) -> int:
        """What ``count_tokens`` answers for a body (within 1.5 % of `prompt_tokens`)."""
        return self.counter.estimate(body)

    def output_tokens(
        self, content: Sequence[Mapping[str, Any]], model: str = DEFAULT_MODEL
    ) -> int:
        """Output count of reply content blocks, exactly as the server reports it."""
        return self.counter.output(content, model)

    def _usage(self, body: Mapping[str, Any], total: int) -> dict[str, Any]:
        """Split the prompt count into input / cache write / cache read (`fake_cache`)."""
        try:
            fixed, per_block, _ = self.counter.blocks(body)
            split = self.prompt_cache.account(body, total, block_tokens=(fixed, per_block))
            return split.usage(total)
        except CacheRequestError as err:
            raise _ApiError(400, str(err)) from None

    # ---- request plumbing --------------------------------------------------------
    def _new_record(self, request: web.Request) -> RequestRecord:
        record = RequestRecord(
            t=time.time(),
            method=request.method,
            path=request.path,
            request_id=f"req_fake_{next(self._ids):06d}",
        )
        with self._lock:
            self._requests.append(record)
        return record

    def _pick_fault(self, path: str, raw: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path is not None and fault.path != path:
                    continue
                if fault.match is not None and fault.match not in raw:
                    continue
                if fault.times is not None and fault.applied >= fault.times:
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                fault.applied += 1
                return fault
        return None

    def _check_auth(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        sent = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if sent != self.api_key and auth != f"Bearer {self.api_key}":
            raise _ApiError(401, "invalid x-api-key")

    def _error_response(self, record: RequestRecord, err: _ApiError) -> web.StreamResponse:
        body = {
            "type": "error",
            "error": {"type": err.error_type, "message": err.message},
            "request_id": record.request_id,
        }
        record.error = err.message
        return self._finish(record, web.json_response(body, status=err.status, headers=err.headers))

    def _finish(self, record: RequestRecord, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["request-id"] = record.request_id
        record.status = response.status
        record.duration_s = time.time() - record.t
        return response

    async def _read_json(self, request: web.Request) -> tuple[dict[str, Any], str]:
        raw = await request.text()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise _ApiError(400, f"Invalid JSON in request body: {exc}") from exc
        if not isinstance(body, dict):
            raise _ApiError(400, "Request body must be a JSON object.")
        return body, raw

    async def _apply_fault(
        self, request: web.Request, record: RequestRecord, raw: str
    ) -> Fault | None:
        """Run the matching fault's delay and drop/error; return it if the reply proceeds."""
        fault = self._pick_fault(request.path, raw)
        if fault is None:
            return None
        record.fault = fault.describe()
        if fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)
        if fault.drop_connection:
            raise _DropConnection()
        if fault.status is not None:
            raise _ApiError(
                fault.status,
                fault.message or _DEFAULT_ERROR_MESSAGES.get(fault.resolved_error_type(), "Error"),
                fault.resolved_error_type(),
                fault.error_headers(),
            )
        return fault

    async def _guarded(
        self,
        request: web.Request,
        handler: Callable[[web.Request, RequestRecord], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Log the request, run the handler, map errors to API-shaped responses."""
        record = self._new_record(request)
        try:
            return await handler(request, record)
        except _ApiError as err:
            return self._error_response(record, err)
        except _DropConnection:
            # Close the socket with nothing written: the client sees "server
            # disconnected without sending a response" -> APIConnectionError.
            record.duration_s = time.time() - record.t
            transport = request.transport
            if transport is not None:
                transport.close()
            raise web.HTTPInternalServerError() from None  # never reaches the client
        except Exception as exc:
            return self._error_response(record, _ApiError(500, f"fake server error: {exc!r}"))

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # ---- handlers ----------------------------------------------------------------
    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._messages)

    async def _messages(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        body, raw = await self._read_json(request)
        record.model = body.get("model") if isinstance(body.get("model"), str) else None
        record.stream = bool(body.get("stream"))
        if isinstance(body.get("metadata"), dict):
            record.metadata = dict(body["metadata"])
        self._check_auth(request)
        fault = await self._apply_fault(request, record, raw)
        if fault is not None and fault.stream_error is not None and not record.stream:
            raise _ApiError(
                _STATUS_OF_TYPE.get(fault.stream_error, 500),
                _DEFAULT_ERROR_MESSAGES.get(fault.stream_error, "Error"),
                fault.stream_error,
            )
        too_large = fake_responses.check_request_size(raw, self.max_request_bytes)
        if too_large:
            raise _ApiError(413, too_large)
        self._validate(request, body)
        model = str(body["model"])

        prompt, reply, content, output = await self._in_worker(self._compute, body)
        record.input_tokens = prompt
        found = self.model(model)
        assert found is not None  # validated
        rejected = check_window(prompt, int(body["max_tokens"]), found)
        if rejected is not None:
            raise _ApiError(rejected.status, rejected.message, rejected.error_type)
        limit = fake_responses.context_limit(
            model, prompt, int(body["max_tokens"]), found.context_window,
            stops=found.stops_on_overflow,
        )
        if isinstance(limit, str):
            raise _ApiError(400, limit)
        cut = fake_responses.limit_reply(
            content, output, *limit, count=lambda b: self.counter.output([b], model)
        )
        content, output = cut.content, cut.output_tokens

        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)

        usage = await self._in_worker(self._usage, body, prompt)  # hashing + counting: off the loop
        usage["output_tokens"] = output
        stop_reason = (
            (fault.stop_reason if fault is not None else None)
            or cut.stop_reason
            or (reply.stop_reason if reply is not None else None)
            or ("tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn")
        )
        message = {
            "id": f"msg_fake_{record.request_id.removeprefix('req_fake_')}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        record.usage = {k: v for k, v in usage.items() if isinstance(v, int)}
        if record.stream:
            interrupt = fault.stream_error if fault is not None else None
            if interrupt is None and self.stream_error_rate > 0:
                with self._lock:
                    if self._rng.random() < self.stream_error_rate:
                        interrupt = "overloaded_error"
                        record.fault = "mid-stream overloaded_error (rate)"
            after = fault.stream_error_after if fault is not None else 3
            hold = fault.hold_s if fault is not None else 0.0
            return await self._stream(
                request, record, message, cut.partial_json, interrupt, after, hold
            )
        response = self._finish(record, web.json_response(message))
        try:
            await response.prepare(request)
            await response.write_eof()
            record.answered = True
        except ConnectionError:
            record.error = "client disconnected before the reply"
        return response

    def _compute(
        self, body: dict[str, Any]
    ) -> tuple[int, BrainReply | None, list[dict[str, Any]], int]:
        """Prompt count, brain reply, its content and output count, in one worker hop.

        The brain is skipped when the prompt overflows (the request will be
        rejected); it is stateless, so answering before the latency sleep is fine.
        """
        prompt = self.prompt_tokens(body)
        if prompt > self.context_window(str(body["model"])):
            return prompt, None, [], 0
        reply = self.brain.respond(body)
        content = [dict(b) for b in reply.content]
        return prompt, reply, content, self.output_tokens(content, str(body["model"]))

    def _validate(
        self, request: web.Request, body: Mapping[str, Any], count_tokens: bool = False
    ) -> None:
        """Reject the request as the real API would (see `fake_validation`)."""
        rejected = validate_request(
            body,
            self,
            anthropic_version=request.headers.get("anthropic-version"),
            count_tokens=count_tokens,
        )
        if rejected is not None:
            raise _ApiError(rejected.status, rejected.message, rejected.error_type)

    async def _stream(
        self,
        request: web.Request,
        record: RequestRecord,
        message: dict[str, Any],
        partial_json: Mapping[int, str] | None = None,
        interrupt: str | None = None,
        interrupt_after: int = 3,
        hold_s: float = 0.0,
    ) -> web.StreamResponse:
        """Send ``message`` as the real API's SSE event sequence (cut tool inputs as
        ``partial_json``; ``interrupt``: an error type sent mid-stream instead of the
        rest; ``hold_s``: keep the response open that long after the whole reply)."""
        response = web.StreamResponse(
            status=200,
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
        )
        self._finish(record, response)
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            payload = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            await response.write(payload.encode("utf-8"))

        emit: Callable[[str, dict[str, Any]], Awaitable[None]] = send
        if interrupt is not None:
            emit = fake_responses.interrupting_send(
                send, interrupt_after, interrupt, _DEFAULT_ERROR_MESSAGES.get(interrupt, "Error")
            )
        try:
            try:
                await self._send_events(emit, message, partial_json)
                record.answered = True
                if hold_s > 0:
                    await asyncio.sleep(hold_s)
            except fake_responses.StreamInterrupted:
                record.error = f"mid-stream {interrupt}"
            await response.write_eof()
        except ConnectionError:
            # The client went away mid-stream (e.g. its timeout fired); nothing to do.
            record.error = "client disconnected during stream"
        record.duration_s = time.time() - record.t
        return response

    @staticmethod
    async def _send_events(
        send: Callable[[str, dict[str, Any]], Awaitable[None]],
        message: dict[str, Any],
        partial_json: Mapping[int, str] | None = None,
    ) -> None:
        """The real API's event sequence for one message."""
        usage = message["usage"]
        # Like the real API: message_start carries the input usage and a tiny
        # output count; the final counts arrive in message_delta.
        start = dict(message, content=[], stop_reason=None, stop_sequence=None)
        start["usage"] = dict(usage, output_tokens=1)
        await send("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(message["content"]):
            kind = block.get("type")
            if kind == "text":
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                if index == 0:
                    await send("ping", {"type": "ping"})
                for piece in _chunks(str(block.get("text", "")), 24):
                    await send(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
            elif kind == "tool_use":
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block.get("id"),
                            "name": block.get("name"),
                            "input": {},
                        },
                    },
                )
                # The real API sends an empty first delta, then JSON fragments.
                partial = (partial_json or {}).get(index)
                if partial is None:
                    partial = json.dumps(block.get("input", {}), separators=(",", ":"))
                for piece in ["", *_chunks(partial, 32)]:
                    await send(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
            else:
                # Other block kinds are sent whole in content_block_start.
                await send(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": dict(usage),
            },
        )
        await send("message_stop", {"type": "message_stop"})

    async def _handle_count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._count_tokens)

    async def _count_tokens(
        self, request: web.Request, record: RequestRecord
    ) -> web.StreamResponse:
        body, raw = await self._read_json(request)
        record.model = body.get("model") if isinstance(body.get("model"), str) else None
        self._check_auth(request)
        await self._apply_fault(request, record, raw)
        self._validate(request, body, count_tokens=True)
        tokens = await self._in_worker(self.counter.estimate, body)
        record.input_tokens = tokens
        return self._finish(record, web.json_response({"input_tokens": tokens}))

    def model_ids(self) -> list[str]:
        """Ids the Models API lists: extra models of ``context_windows``, then the catalogue."""
        extra = [k for k in self.context_windows if find_model(k) is None]
        return extra + [k for k in MODELS if k not in extra]

    def _model_info(self, model_id: str) -> dict[str, Any]:
        found = self.model(model_id)
        if found is None:
            raise _ApiError(404, f"model: {model_id}", "not_found_error")
        return {
            "type": "model",
            "id": model_id,
            "display_name": found.display_name,
            "created_at": found.created_at,
            "lifecycle": "active",
            "max_input_tokens": found.context_window,
            "max_tokens": found.max_output_tokens,
        }

    async def _handle_model(self, request: web.Request) -> web.StreamResponse:
        async def handler(req: web.Request, record: RequestRecord) -> web.StreamResponse:
            model_id = req.match_info["model_id"]
            record.model = model_id
            self._check_auth(req)
            await self._apply_fault(req, record, "")
            return self._finish(record, web.json_response(self._model_info(model_id)))

        return await self._guarded(request, handler)

    async def _handle_models_list(self, request: web.Request) -> web.StreamResponse:
        async def handler(req: web.Request, record: RequestRecord) -> web.StreamResponse:
            self._check_auth(req)
            await self._apply_fault(req, record, "")
            ids = self.model_ids()
            data = [self._model_info(i) for i in ids]
            body = {
                "data": data,
                "has_more": False,
                "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None,
            }
            return self._finish(record, web.json_response(body))

        return await self._guarded(request, handler)


class _DropConnection(Exception):
    """Raised inside a handler to close the connection without a response."""


def _chunks(text: str, size: int) -> list[str]:
    """Split text into pieces of at most ``size`` characters (at least one piece)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
