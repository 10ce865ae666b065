"""A Temporal codec server, so the Temporal UI (and CLI) can show decrypted payloads.

Implements the codec server HTTP protocol: ``POST /encode`` and ``POST /decode``
(also under a ``/{namespace}/`` prefix) with a JSON ``Payloads`` body
(``{"payloads": [{"metadata": {...}, "data": "<base64>"}]}``, protobuf JSON form),
answering with the same shape.

Access control:

- every ``POST`` needs ``Authorization: Bearer <token>`` (compared in constant
  time); anything else gets 401 and no payload data;
- CORS headers are sent only to the configured UI origin (e.g.
  ``http://localhost:8233``), with credentials allowed and the headers the UI sends
  (``Authorization, Content-Type, X-Namespace``); preflight ``OPTIONS`` needs no
  token, as browsers send none.

In the Temporal UI: Settings → Codec Server → endpoint ``http://HOST:PORT`` and
"pass access token" as your deployment requires; or a ``temporal`` CLI call with
``--codec-endpoint http://HOST:PORT --codec-auth "Bearer <token>"``.

Neither payload contents, keys nor tokens are logged: only method, path, status.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

__all__ = ["ALLOW_HEADERS", "TOKEN_ENV", "build_codec_app", "serve_codec"]

log = logging.getLogger("temporal_handoff.codec_server")

TOKEN_ENV = "HANDOFF_CODEC_TOKEN"
ALLOW_HEADERS = "Authorization, Content-Type, X-Namespace"
MAX_BODY_BYTES = 16 * 1024 * 1024
"""A UI page can ask for many payloads at once; each is at most 2 MiB in Temporal."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


def build_codec_app(
    codec: PayloadCodec, *, token: str, ui_origin: str | None = None
) -> web.Application:
    """The aiohttp application (tests use it with `aiohttp.test_utils` or `AppRunner`).

    Args:
        codec: the codec whose ``encode``/``decode`` the endpoints run.
        token: bearer token every POST must carry.
        ui_origin: the one browser origin allowed by CORS (None: no CORS headers).

    Raises:
        ValueError: empty token.
    """
    if not token:
        raise ValueError("the codec server needs a bearer token")
    expected = f"Bearer {token}".encode()
    origin_allowed = ui_origin.rstrip("/") if ui_origin else None

    def cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        response.headers[hdrs.VARY] = "Origin"
        if origin_allowed is not None and origin == origin_allowed:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # Preflight (any path) is answered here, without a token: browsers send none.
            if request.method == hdrs.METH_OPTIONS:
                response: web.StreamResponse = web.Response(status=204)
                if origin_allowed is not None and request.headers.get(hdrs.ORIGIN) == origin_allowed:
                    response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "POST, OPTIONS"
                    response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOW_HEADERS
                    response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "600"
            else:
                sent = request.headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "replace")
                if not hmac.compare_digest(sent, expected):
                    response = _json_error(401, "missing or invalid bearer token")
                    response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="handoff-codec"'
                else:
                    response = await handler(request)
        except web.HTTPException as exc:
            response = _json_error(exc.status, exc.reason)
        cors(request, response)
        log.info("%s %s -> %d", request.method, request.path, response.status)
        return response

    def endpoint(op: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                payloads = json_format.Parse(await request.text(), Payloads())
            except (json_format.ParseError, UnicodeDecodeError, ValueError) as err:
                return _json_error(400, f"body is not a Payloads JSON object: {err}")
            try:
                fn = codec.encode if op == "encode" else codec.decode
                out = Payloads(payloads=await fn(payloads.payloads))
            except Exception as err:  # a codec error (unknown key id, bad tag) is a 400
                return _json_error(400, f"{op} failed: {err}")
            return web.Response(
                text=json_format.MessageToJson(out), content_type="application/json"
            )

        return handle

    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY_BYTES)
    for op in ("encode", "decode"):
        app.router.add_post(f"/{op}", endpoint(op))
        app.router.add_post(f"/{{namespace}}/{op}", endpoint(op))
    return app


async def serve_codec(
    codec: PayloadCodec,
    *,
    token: str,
    ui_origin: str | None,
    host: str = "127.0.0.1",
    port: int = 8081,
) -> web.AppRunner:
    """Start the server; returns the runner (``await runner.cleanup()`` stops it)."""
    runner = web.AppRunner(build_codec_app(codec, token=token, ui_origin=ui_origin), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
