"""Opt-in payload encryption: an AES-256-GCM `PayloadCodec` with key ids and rotation.

Every payload the SDK writes (workflow input, activity input and results, signals,
updates, queries, memo values, failure messages and stack traces) is encrypted
before it leaves the process, so what Temporal stores is ciphertext:

    codec = codec_from_env()   # HANDOFF_CODEC_KEYS="k2:<base64 key>,k1:<base64 key>"
    client = await Client.connect(addr, plugins=[HandoffPlugin(codec=codec)])

An encrypted payload has metadata ``encoding: binary/encrypted`` and
``encryption-key-id: <id>``; its data is a 12-byte random nonce followed by the
AES-GCM ciphertext (with tag) of the serialized original payload, authenticated
together with the key id. The first key is the active one (used to encrypt); the
others only decrypt, so a key is rotated by putting a new one first and keeping
the old ones until nothing encrypted with them is needed any more. Payloads that
are not encrypted pass through decode unchanged.

Key material never appears in ``repr``, errors or logs: only key ids do.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from temporal_handoff.workers.storage import CONTENT_METADATA, CONVERSATION, is_conversation

__all__ = [
    "ENCODING",
    "KEY_ID_METADATA",
    "KEYS_ENV",
    "AesGcmCodec",
    "CodecKeyError",
    "codec_from_env",
    "generate_key",
    "parse_keys",
]

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEYS_ENV = "HANDOFF_CODEC_KEYS"
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CodecKeyError(ValueError):
    """A key is malformed, unknown, or does not decrypt a payload (never shows key bytes)."""


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded for `HANDOFF_CODEC_KEYS`."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _decode_key(key_id: str, text: str) -> bytes:
    text = text.strip()
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise CodecKeyError(f"codec key {key_id!r} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise CodecKeyError(
            f"codec key {key_id!r} is {len(raw)} bytes; AES-256-GCM needs {KEY_BYTES}"
        )
    return raw


def parse_keys(spec: str) -> tuple[dict[str, bytes], str]:
    """Parse ``"k2:<base64>,k1:<base64>"`` into (keys by id, active key id = first).

    Raises:
        CodecKeyError: empty spec, a malformed entry, a bad id, a duplicate id, or a
            key that is not 32 bytes of base64. Messages name the id, never the key.
    """
    keys: dict[str, bytes] = {}
    active: str | None = None
    for n, entry in enumerate(e.strip() for e in spec.split(",")):
        if not entry:
            continue
        key_id, sep, material = entry.partition(":")
        key_id = key_id.strip()
        if not sep:
            raise CodecKeyError(f"{KEYS_ENV} entry {n + 1} is not '<key id>:<base64 key>'")
        if not _KEY_ID_RE.match(key_id):
            raise CodecKeyError(
                f"{KEYS_ENV} entry {n + 1}: key id must be 1-64 of [A-Za-z0-9._-]"
            )
        if key_id in keys:
            raise CodecKeyError(f"{KEYS_ENV}: duplicate key id {key_id!r}")
        keys[key_id] = _decode_key(key_id, material)
        active = active or key_id
    if active is None:
        raise CodecKeyError(f"{KEYS_ENV} has no keys")
    return keys, active


class AesGcmCodec(PayloadCodec):
    """AES-256-GCM payload codec with key ids (rotation: old ids still decrypt).

    Args:
        keys: key id → 32-byte key.
        active_key_id: the id whose key encrypts; defaults to the first key.
    """

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str | None = None) -> None:
        if not keys:
            raise CodecKeyError("AesGcmCodec needs at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not _KEY_ID_RE.match(key_id):
                raise CodecKeyError(f"key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]")
            if len(key) != KEY_BYTES:
                raise CodecKeyError(
                    f"codec key {key_id!r} is {len(key)} bytes; AES-256-GCM needs {KEY_BYTES}"
                )
            self._ciphers[key_id] = AESGCM(bytes(key))
        self.active_key_id = active_key_id or next(iter(keys))
        if self.active_key_id not in self._ciphers:
            raise CodecKeyError(f"active key id {self.active_key_id!r} is not among the keys")

    @property
    def key_ids(self) -> list[str]:
        """Ids of all keys this codec can decrypt with (active first)."""
        return [self.active_key_id] + [k for k in self._ciphers if k != self.active_key_id]

    def __repr__(self) -> str:
        return f"AesGcmCodec(active_key_id={self.active_key_id!r}, key_ids={self.key_ids!r})"

    def encrypt(self, payload: Payload) -> Payload:
        """One payload → its encrypted form under the active key."""
        key_id = self.active_key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(), key_id.encode("ascii")
        )
        metadata = {"encoding": ENCODING, KEY_ID_METADATA: key_id.encode("ascii")}
        if is_conversation(payload):
            # What the payload is (not what it holds) stays readable, so the content
            # store can take conversations and leave the rest inline.
            metadata[CONTENT_METADATA] = CONVERSATION
        return Payload(metadata=metadata, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        """One payload → the original; payloads that are not encrypted pass through."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("ascii", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CodecKeyError(
                f"payload is encrypted with key id {key_id!r}, which this codec does not "
                f"have (known: {', '.join(self.key_ids)})"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + 16:
            raise CodecKeyError(f"encrypted payload (key id {key_id!r}) is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode("ascii"))
        except InvalidTag:
            raise CodecKeyError(
                f"payload encrypted with key id {key_id!r} failed authentication "
                "(wrong key material or tampered data)"
            ) from None
        out = Payload()
        out.ParseFromString(plain)
        return out

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


def codec_from_env(env: Mapping[str, str] | None = None) -> AesGcmCodec | None:
    """The codec configured by ``HANDOFF_CODEC_KEYS`` (first key active), or None if unset.

    Raises:
        CodecKeyError: the variable is set but malformed.
    """
    spec = (os.environ if env is None else env).get(KEYS_ENV, "").strip()
    if not spec:
        return None
    keys, active = parse_keys(spec)
    return AesGcmCodec(keys, active)
