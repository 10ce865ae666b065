"""A Temporal codec server, so the Temporal UI (and CLI) can show the real payloads.

Implements the codec server HTTP protocol: ``POST …/encode``, ``POST …/decode`` and
``POST …/download`` (only the last path segment selects the operation, so the
endpoints can sit under any prefix, e.g. ``/{namespace}/decode``) with a JSON
``Payloads`` body (``{"payloads": [{"metadata": {...}, "data": "<base64>"}]}``,
protobuf JSON form), answering with the same shape.

``/decode`` undoes what the workers' data converter did to each payload:

- an external-storage reference (``{"claimData": {...}, "driverName":
  "handoff-local"}``, see `temporal_handoff.workers.storage`) is replaced by the
  stored payload, read from the content store;
- AES-GCM ciphertext (`temporal_handoff.codec`) is decrypted when keys are set.

So the UI shows the JSON of run inputs and results, handoff documents and query
answers instead of references. The UI (2.x) adds ``?preserveStorageRefs=true`` to
every request; this server resolves references anyway, because reading the
documents is the point. A reference whose blob is missing (collected, other store)
is passed back unchanged, so the rest of the page still decodes.

``/download`` is what the UI's download button on a stored payload calls (the
banner "Payload downloads require a codec server with a /download endpoint"): one
reference in, the resolved and decrypted payload out; an unresolvable one is an
error (410 for a missing blob, 400 otherwise) rather than a silent pass-through.
``/encode`` runs the codec only (payloads the UI sends, e.g. a signal, stay inline).

Access control (every ``POST``; preflight ``OPTIONS`` needs nothing, browsers send
no credentials on it):

- ``Authorization: Bearer <token>`` (compared in constant time), as sent by
  ``temporal --codec-endpoint URL --codec-auth "Bearer <token>"``; or
- an endpoint path prefix ``/<path token>/`` (a second secret, only if configured):
  the Temporal UI cannot send a static token. What the UI forwards is, with
  "Pass the user access token" (https endpoints only), ``Authorization: Bearer
  <the signed-in user's OIDC access token>`` and ``Authorization-Extras: <ID
  token>``, and with "Include cross-origin credentials" its cookies; always
  ``Content-Type`` and ``X-Namespace``. A UI without single sign-on (the dev
  server's) sends none of these, so `handoff dev` points it at
  ``http://127.0.0.1:PORT/<path token>``: whoever can open that UI can read
  decoded payloads through it, as with any codec endpoint configured on a UI. Behind
  SSO, validate the forwarded access token in a proxy in front of this server.

Anything else gets 401 and no payload data. CORS headers go only to the configured
UI origin (e.g. ``http://localhost:8233``), with credentials allowed and the
headers the UI sends (``Authorization, Authorization-Extras, Content-Type,
X-Namespace``).

In the Temporal UI: Settings → Codec Server → endpoint; or start the UI (dev
server) with ``--ui-codec-endpoint``.

Neither payload contents, keys nor tokens are logged: only method, path, status.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import DataConverter, ExternalStorage, PayloadCodec

from temporal_handoff.workers.storage import BlobUnavailableError

__all__ = [
    "ALLOW_HEADERS",
    "TOKEN_ENV",
    "PayloadResolver",
    "UnresolvablePayload",
    "build_codec_app",
    "serve_codec",
]

log = logging.getLogger("temporal_handoff.codec_server")

TOKEN_ENV = "HANDOFF_CODEC_TOKEN"
ALLOW_HEADERS = "Authorization, Authorization-Extras, Content-Type, X-Namespace"
OPERATIONS = ("encode", "decode", "download")
_REFERENCE_TYPE = b"temporal.api.sdk.v1.ExternalStorageReference"
"""``messageType`` of an external-storage reference payload (encoding json/protobuf)."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""A UI page can ask for many payloads at once; each is at most 2 MiB in Temporal."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


class UnresolvablePayload(Exception):
    """A payload `/download` cannot turn into its content (HTTP status attached)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PayloadResolver:
    """The workers' inbound payload pipeline: storage reference → stored payload → codec.

    Args:
        codec: payload codec (AES-GCM) or None.
        storage: the content store the workers write to, or None.
    """

    def __init__(
        self, codec: PayloadCodec | None = None, storage: ExternalStorage | None = None
    ) -> None:
        self.codec = codec
        self.storage = storage
        self._converter = DataConverter(payload_codec=codec, external_storage=storage)

    async def resolve(self, payload: Payload) -> Payload:
        """One payload as the workflow saw it; raises `UnresolvablePayload`.

        Runs the SDK's own inbound pipeline (reference marker, store, codec) through a
        private `DataConverter` method (temporalio 1.35), so it decodes exactly what a
        worker decodes; tests/test_codec_store.py fails if the SDK changes it.
        """
        try:
            return await self._converter._transform_inbound_payload(payload)
        except BlobUnavailableError as err:
            raise UnresolvablePayload(str(err).splitlines()[0], 410) from None
        except Exception as err:  # unknown driver, key id, bad tag, store not configured
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UnresolvablePayload(text, 400) from None

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Each payload resolved; one that cannot be is passed back unchanged."""
        out: list[Payload] = []
        for p in payloads:
            try:
                out.append(await self.resolve(p))
            except UnresolvablePayload as err:
                log.info("payload left as is: %s", err)
                out.append(p)
        return out

    async def download(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = [await self.resolve(p) for p in payloads]
        if any(p.metadata.get("messageType") == _REFERENCE_TYPE for p in out):
            raise UnresolvablePayload("a stored payload, and this server has no content store", 400)
        return out

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads) if self.codec is None else await self.codec.encode(payloads)


def build_codec_app(
    codec: PayloadCodec | None = None,
    *,
    token: str,
    ui_origin: str | None = None,
    storage: ExternalStorage | None = None,
    path_token: str | None = None,
) -> web.Application:
    """The aiohttp application (tests use it with `aiohttp.test_utils` or `AppRunner`).

    Args:
        codec: the codec whose ``encode``/``decode`` the endpoints run (or None).
        token: bearer token every POST must carry (unless it uses the path token).
        ui_origin: the browser origin allowed by CORS, or several separated by commas
            (the same UI as ``http://localhost:8233`` and ``http://127.0.0.1:8233``);
            None: no CORS headers.
        storage: the content store references are resolved from (or None).
        path_token: if set, ``POST /<path_token>/<op>`` is accepted without a bearer
            token (the endpoint given to a Temporal UI without single sign-on).

    Raises:
        ValueError: empty token, or neither codec nor storage.
    """
    if not token:
        raise ValueError("the codec server needs a bearer token")
    if codec is None and storage is None:
        raise ValueError("the codec server needs codec keys or a content store")
    expected = f"Bearer {token}".encode()
    path_prefix = f"/{path_token}/".encode() if path_token else None
    origins = {o.strip().rstrip("/") for o in (ui_origin or "").split(",") if o.strip()}
    resolver = PayloadResolver(codec, storage)

    def authorized(request: web.Request) -> bool:
        sent = request.headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "replace")
        if hmac.compare_digest(sent, expected):
            return True
        if path_prefix is None:
            return False
        given = request.path.encode("utf-8", "replace")[: len(path_prefix)]
        return hmac.compare_digest(given, path_prefix)

    def cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        response.headers[hdrs.VARY] = "Origin"
        if origin in origins:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # Preflight (any path) is answered here, without a token: browsers send none.
            if request.method == hdrs.METH_OPTIONS:
                response: web.StreamResponse = web.Response(status=204)
                if request.headers.get(hdrs.ORIGIN) in origins:
                    response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "POST, OPTIONS"
                    response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOW_HEADERS
                    response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "600"
            else:
                if not authorized(request):
                    response = _json_error(401, "missing or invalid bearer token")
                    response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="handoff-codec"'
                else:
                    response = await handler(request)
        except web.HTTPException as exc:
            response = _json_error(exc.status, exc.reason)
        cors(request, response)
        # The path may hold the path token: log only the operation.
        log.info("%s …/%s -> %d", request.method, request.path.rsplit("/", 1)[-1], response.status)
        return response

    def endpoint(op: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                payloads = json_format.Parse(await request.text(), Payloads())
            except (json_format.ParseError, UnicodeDecodeError, ValueError) as err:
                return _json_error(400, f"body is not a Payloads JSON object: {err}")
            try:
                fn = getattr(resolver, op)
                out = Payloads(payloads=await fn(payloads.payloads))
            except UnresolvablePayload as err:
                return _json_error(err.status, f"{op} failed: {err}")
            except Exception as err:  # a codec error (unknown key id, bad tag) is a 400
                return _json_error(400, f"{op} failed: {err}")
            return web.Response(
                text=json_format.MessageToJson(out), content_type="application/json"
            )

        return handle

    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY_BYTES)
    for op in OPERATIONS:
        app.router.add_post(f"/{op}", endpoint(op))
        app.router.add_post(f"/{{prefix:.+}}/{op}", endpoint(op))
    return app


async def serve_codec(
    codec: PayloadCodec | None,
    *,
    token: str,
    ui_origin: str | None,
    host: str = "127.0.0.1",
    port: int = 8081,
    storage: ExternalStorage | None = None,
    path_token: str | None = None,
) -> web.AppRunner:
    """Start the server; returns the runner (``await runner.cleanup()`` stops it)."""
    app = build_codec_app(
        codec, token=token, ui_origin=ui_origin, storage=storage, path_token=path_token
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
