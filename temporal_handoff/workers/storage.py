"""Conversation content kept out of workflow history: a content-addressed payload store.

Temporal keeps every activity input in history. A session sends the whole
conversation to `call_model` each turn, so at a 100K-token conversation a naive
worker adds ~440 KB of history per turn and meets the 4 MiB continue-as-new
suggestion within ten turns. With the SDK's `ExternalStorage` a payload is written to
a `StorageDriver` and history keeps only a reference (~250 bytes).

Which payloads go out (`external_storage`): conversations — the payloads the
converter marks with ``handoff-content: conversation`` (a `call_model` request), from
`threshold_bytes` up — and anything else only from `inline_max_bytes` up. Everything
people read in the Temporal UI (run inputs and results, the handoff child's input and
its result, the handoff document) stays inline JSON while it is a size the UI shows
comfortably; only a very large project state goes to the store.

`LocalStorageDriver` is such a driver over a directory:

* **Chunked and content-addressed.** A turn's request repeats the previous one plus
  a few new messages. Storing it whole makes the store grow by the whole
  conversation every turn (quadratic in the session's length). Instead the payload
  bytes are cut at JSON object starts (``[{"`` / ``,{"``, i.e. between messages and
  other list items; no cut point depends on an offset, so the shared prefix of two
  requests is cut identically) into chunks of at least ``min_chunk`` bytes, and each
  chunk is a file named by its sha256. A small manifest (payload header, sha256 of
  the payload, chunk digests) is one more such file. So a turn stores its new
  messages, the chunk at the end of the message list, and a manifest of ~32 bytes
  per chunk; identical content is stored once across turns and sessions.
* **Safe to share.** Files are written to a temporary name and renamed into place
  (atomic on POSIX and NFS), and a blob's name is its content, so any number of
  workers on a shared directory (NFS, a docker volume) can write the same blob at
  once. Every worker of a deployment must see the same directory: a blob written by
  the workflow worker is read by whichever worker runs the activity, and by any
  worker that replays the workflow after a restart.
* **Garbage-collectable per session.** Each claim carries the workflow id it was
  stored for; the driver lists the digests a workflow references in an index
  directory (one append-only file per worker process, so writers never share a
  file). `gc_session` deletes a closed session's index and every blob no other
  index references; a blob shared with another session survives. The command line
  (`python -m temporal_handoff.workers.storage gc`, see `storage_maintenance`) first
  asks Temporal that the session and its handoff children are closed.
* **Verified.** A blob is checked against its name when read (a corrupt or missing one
  raises `BlobUnavailableError`, naming its sha256 and how to recover) and when a
  writer deduplicates onto it: an existing file whose bytes differ from the writer's is
  rewritten atomically, so a corrupt chunk is repaired by any writer that has the
  bytes. Partial temporary files (kill -9, a full disk) are removed after a grace
  period; a full disk is a one-line, retryable `StoreFullError` and leaves nothing
  half-written.

Use `external_storage(directory)` to get an `ExternalStorage`, and give it to
`HandoffPlugin(storage=...)`. On a cluster without a shared filesystem use the SDK's
`temporalio.contrib.aws.s3driver.S3StorageDriver` instead (it stores whole payloads,
and objects expire with a bucket lifecycle rule rather than `gc_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverActivityInfo,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)

__all__ = [
    "CONTENT_METADATA",
    "CONVERSATION",
    "DEFAULT_INLINE_MAX_BYTES",
    "DEFAULT_THRESHOLD_BYTES",
    "DRIVER_NAME",
    "BlobUnavailableError",
    "GcResult",
    "LocalStorageDriver",
    "StorageStats",
    "StoreFullError",
    "VerifyResult",
    "clean_tmp",
    "external_storage",
    "gc_orphans",
    "gc_session",
    "is_conversation",
    "session_scopes",
    "split_points",
    "storage_stats",
    "verify_store",
]

DRIVER_NAME = "handoff-local"
"""Name written into every reference; readers must register a driver of this name."""

DEFAULT_THRESHOLD_BYTES = 4 * 1024
"""Conversations at least this big are stored outside history.

Small enough that every model-call input goes out (a turn then adds ~2-4 KB of
history whatever the conversation size).
"""

DEFAULT_INLINE_MAX_BYTES = 64 * 1024
"""Other payloads (project state, the handoff document) stay inline below this size:
readable JSON in the Temporal UI. A 169-task project's session input is ~35 KB."""

CONTENT_METADATA = "handoff-content"
"""Payload metadata key the converter sets on conversations (not secret: it says what
a payload is, never what it holds; the codec copies it onto the encrypted payload)."""
CONVERSATION = b"conversation"

_MANIFEST_MAGIC = b"thm1"
_DIGEST = 32
_UNSCOPED = "_unscoped"
# The start of a JSON object that is an array element: between messages, content
# blocks, tools, tasks. The cut goes before the `{`.
_CUT = re.compile(rb'[\[,](?=\{")')
_SAFE = "-_.@+="
_SCOPE_FILE = "scope"
"""In an index directory whose name is shortened (a long workflow id): the full id."""
_FULL = (errno.ENOSPC, errno.EDQUOT)
TMP_GRACE_S = 900.0
"""Temporary files older than this are partial writes (kill -9, disk full): removed.

A writer keeps its temporary file for the time of one write and rename; the grace
leaves a concurrent writer's file alone even on a slow shared filesystem."""


class BlobUnavailableError(Exception):
    """A stored payload cannot be read: a blob is missing or corrupt, or the reference
    is not one this driver made or can parse.

    The message is one line: the sha256, the store directory, and how to recover
    (restore the blob, then `temporal workflow reset` the workflow that failed).
    """

    def __init__(self, message: str, *, sha256: str | None, directory: Path, reason: str) -> None:
        super().__init__(message)
        self.sha256 = sha256
        """Hex digest of the blob (None when the reference does not name one)."""
        self.directory = directory
        self.reason = reason
        """``missing``, ``corrupt`` or ``bad-reference``."""


class StoreFullError(OSError):
    """The store's filesystem is full (ENOSPC) or over quota (EDQUOT).

    Nothing was left half-written: the write is retried as a whole (an activity
    attempt, a workflow task) once there is space.
    """

    def __init__(self, message: str, err: OSError) -> None:
        super().__init__(err.errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


_RECOVER = (
    "recover: restore the blob (a writer storing the same content rewrites it; "
    "`python -m temporal_handoff.workers.storage verify DIR` lists damaged ones), then "
    "the next attempt reads it, or `temporal workflow reset` a workflow that already failed"
)


def split_points(data: bytes, min_chunk: int, max_chunk: int) -> list[int]:
    """Chunk boundaries of `data` (cut offsets, excluding 0 and len(data)).

    Cuts are taken greedily at the first JSON object start at least `min_chunk`
    bytes after the previous cut, so two payloads with a common prefix get the same
    cuts inside it. A stretch longer than `max_chunk` without a cut point is cut
    every `max_chunk` bytes from its start (still content-aligned: from the last cut).
    """
    cuts: list[int] = []
    last = 0
    n = len(data)
    for m in _CUT.finditer(data, min_chunk):
        pos = m.start() + 1
        if pos - last < min_chunk:
            continue
        while pos - last > max_chunk:
            last += max_chunk
            cuts.append(last)
        if pos - last >= min_chunk and pos < n:
            cuts.append(pos)
            last = pos
    while n - last > max_chunk:
        last += max_chunk
        cuts.append(last)
    return cuts


def _scope_of(context: StorageDriverStoreContext) -> str:
    """The workflow id a payload is stored for (activity-scoped or unknown otherwise)."""
    target = context.target
    if isinstance(target, StorageDriverWorkflowInfo) and target.id:
        return target.id
    if isinstance(target, StorageDriverActivityInfo) and target.id:
        return f"activity:{target.id}"
    return _UNSCOPED


def _scope_dir_name(scope: str) -> str:
    name = quote(scope, safe=_SAFE)
    if name.startswith("."):  # never ".", ".." or a hidden name
        name = "%2E" + name[1:]
    if len(name) > 200:  # file name limits; keep a readable prefix
        name = name[:120] + "~" + hashlib.sha256(scope.encode()).hexdigest()
    return name


def _is_shortened(name: str) -> bool:
    return len(name) == 185 and name[120] == "~"


def _scope_of_dir(d: Path) -> str:
    """The workflow id an index directory belongs to.

    A shortened name (ids over ~200 characters) cannot be decoded: the driver writes
    the full id into the directory's ``scope`` file. (Directories written before that
    have none; `session_scopes` finds those of a session by recomputing the names.)
    """
    if _is_shortened(d.name):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return (d / _SCOPE_FILE).read_text(encoding="utf-8")
    return unquote(d.name)


def _free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free"


def _full_error(directory: Path, err: OSError) -> StoreFullError:
    what = "over quota" if err.errno == errno.EDQUOT else "full"
    return StoreFullError(
        f"payload store {directory} is {what} ({_free_space(directory)}): nothing was "
        "stored, the write is retried; free space (gc closed sessions: "
        "`python -m temporal_handoff.workers.storage gc`)",
        err,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@dataclass
class StorageStats:
    """What a `LocalStorageDriver` did in this process (for benchmarks and logs)."""

    stores: int = 0
    """Payloads stored (calls from the SDK)."""
    payload_bytes: int = 0
    """Bytes of those payloads (what a whole-payload store would have written)."""
    written_bytes: int = 0
    """Bytes of chunk and manifest files actually written (new content only)."""
    written_files: int = 0
    verified_files: int = 0
    """Existing blobs checked (bytes compared) before deduplicating onto them."""
    repaired_files: int = 0
    """Existing blobs whose bytes were wrong, rewritten from the writer's bytes."""
    retrieves: int = 0
    retrieved_bytes: int = 0
    cache_hits: int = 0


@dataclass
class GcResult:
    """Outcome of `gc_session` / `gc_orphans`."""

    scopes: list[str]
    """Workflow ids whose index was removed."""
    deleted: int = 0
    """Blob files deleted."""
    deleted_bytes: int = 0
    kept_shared: int = 0
    """Blobs of these scopes kept because another index references them."""
    kept_recent: int = 0
    """Blobs kept because they were touched within the grace period."""


class _LruBytes:
    """A byte-bounded LRU of blob contents (chunks are immutable: no invalidation)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: bytes) -> None:
        if len(value) > self.capacity // 4:
            return
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = value
            self.size += len(value)
            while self.size > self.capacity:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


class LocalStorageDriver(StorageDriver):
    """A content-addressed, chunked payload store in a (possibly shared) directory.

    Layout under `directory`::

        blobs/ab/abcd…    chunk and manifest files, named by the sha256 of their bytes
        index/<workflow id>/<host>-<pid>-<n>.idx   digests each workflow references
        tmp/              temporary files (renamed into blobs/)

    Args:
        directory: The store's root; created if missing. Every worker of a
            deployment must use the same directory (a shared volume).
        name: Driver name written in references; keep it stable.
        min_chunk: Minimum chunk size in bytes (cuts are at JSON object starts).
            Smaller chunks store less per turn but make the manifest longer.
        max_chunk: Stretches without a cut point are split at this size.
        fsync: fsync each new file and its directory before the reference is
            returned. Process crashes and worker restarts are safe without it; it
            protects against losing the machine's page cache (power loss).
        cache_bytes: In-process cache of recently read or written chunks, so the
            activity that reads a request does not re-read the unchanged prefix.
        inline_io_bytes: Payloads smaller than this are stored and read on the event
            loop (a few small files); bigger ones in a thread.
        tmp_grace_s: At start, temporary files older than this (partial writes of a
            killed process or a full disk) are removed.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str = DRIVER_NAME,
        min_chunk: int = 4096,
        max_chunk: int = 256 * 1024,
        fsync: bool = False,
        cache_bytes: int = 64 * 1024 * 1024,
        inline_io_bytes: int = 256 * 1024,
        tmp_grace_s: float = TMP_GRACE_S,
    ) -> None:
        if min_chunk < 64 or max_chunk < min_chunk:
            raise ValueError("need 64 <= min_chunk <= max_chunk")
        self.directory = Path(directory).resolve()
        self._name = name
        self.min_chunk = min_chunk
        self.max_chunk = max_chunk
        self.fsync = fsync
        self.inline_io_bytes = inline_io_bytes
        self.stats = StorageStats()
        self._blobs = self.directory / "blobs"
        self._index = self.directory / "index"
        self._tmp = self.directory / "tmp"
        for d in (self._blobs, self._index, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a read-only client must still start
            clean_tmp(self.directory, grace_s=tmp_grace_s)
        self._cache = _LruBytes(cache_bytes)
        # Digests this process has indexed for a scope and made sure exist on disk.
        # A scope's blobs are only deleted by GC of that scope (a closed session),
        # so the memo cannot go stale while the session runs.
        self._known: OrderedDict[str, set[bytes]] = OrderedDict()
        self._known_limit = 4096
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._named_scopes: set[str] = set()
        """Shortened index directories whose ``scope`` file this process wrote."""
        self._writer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ driver API
    def name(self) -> str:
        return self._name

    def type(self) -> str:
        return "temporal_handoff.local"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        scope = _scope_of(context)
        items = list(payloads)
        if sum(len(p.data) for p in items) < self.inline_io_bytes:
            # A few small local files: cheaper than a thread hop (and the GIL contention
            # that comes with it) under load.
            return self._store_all(scope, items)
        return await asyncio.to_thread(self._store_all, scope, items)

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        items = list(claims)
        size = sum(_claimed_size(c) for c in items)
        if size < self.inline_io_bytes:
            return self._retrieve_all(items)
        return await asyncio.to_thread(self._retrieve_all, items)

    # ------------------------------------------------------------------ storing
    def _store_all(self, scope: str, payloads: list[Payload]) -> list[StorageDriverClaim]:
        return [self._store_one(scope, p) for p in payloads]

    def _store_one(self, scope: str, payload: Payload) -> StorageDriverClaim:
        data = payload.data
        header = Payload()
        header.CopyFrom(payload)
        header.ClearField("data")
        head = header.SerializeToString()
        total = hashlib.sha256(data).digest()
        cuts = [0, *split_points(data, self.min_chunk, self.max_chunk), len(data)]
        chunks = [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        digests = [hashlib.sha256(c).digest() for c in chunks]
        manifest = b"".join(
            [
                _MANIFEST_MAGIC,
                len(head).to_bytes(4, "big"),
                head,
                total,
                len(digests).to_bytes(4, "big"),
                *digests,
            ]
        )
        mdigest = hashlib.sha256(manifest).digest()
        items = [*zip(digests, chunks, strict=True), (mdigest, manifest)]
        known = self._known_for(scope)
        new = [(d, c) for d, c in items if d not in known]
        if new:
            # Index first, then the blob: a GC that reads the index after this point
            # keeps the blob; one that read it before sees a fresh mtime (grace).
            self._append_index(scope, [d for d, _ in new])
            for d, c in new:
                self._ensure_blob(d, c)
            with self._lock:
                known.update(d for d, _ in new)
        for d, c in items:
            self._cache.put(d, c)
        self.stats.stores += 1
        self.stats.payload_bytes += payload.ByteSize()
        return StorageDriverClaim(
            claim_data={"m": mdigest.hex(), "wf": scope, "size": str(len(data))}
        )

    def _known_for(self, scope: str) -> set[bytes]:
        with self._lock:
            known = self._known.get(scope)
            if known is None:
                known = self._known[scope] = set()
                while len(self._known) > self._known_limit:
                    self._known.popitem(last=False)
            else:
                self._known.move_to_end(scope)
            return known

    def _blob_path(self, digest: bytes) -> Path:
        h = digest.hex()
        return self._blobs / h[:2] / h

    def _ensure_blob(self, digest: bytes, content: bytes) -> None:
        path = self._blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if st.st_size == len(content) and _same_bytes(path, content):
                self.stats.verified_files += 1
                # Refresh the mtime: a concurrent GC of another session that last
                # referenced this blob leaves recently touched blobs alone.
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
                    return
            else:
                # Not what its name says (a bad disk, a torn copy): every session that
                # deduplicated onto it needs these bytes, and this writer has them.
                self.stats.repaired_files += 1
        tmp = self._tmp / f"{digest.hex()}.{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                _write_all(fd, content)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException as err:
            _remove_quietly(tmp)
            if isinstance(err, OSError) and err.errno in _FULL:
                raise _full_error(self.directory, err) from err
            raise
        if self.fsync:
            _fsync_dir(path.parent)
        self.stats.written_bytes += len(content)
        self.stats.written_files += 1

    def _append_index(self, scope: str, digests: Iterable[bytes]) -> None:
        name = _scope_dir_name(scope)
        d = self._index / name
        lines = "".join(x.hex() + "\n" for x in digests).encode()
        path = d / f"{self._writer_id}.idx"
        # One lock per process: threads of this driver share its index files, and a
        # failed append is cut back to where it started (no torn line joins the next).
        with self._index_lock:
            try:
                d.mkdir(exist_ok=True)
                if _is_shortened(name) and scope not in self._named_scopes:
                    self._name_scope(d, scope)
                with open(path, "ab") as f:
                    start = f.tell()
                    try:
                        f.write(lines)
                        f.flush()
                        if self.fsync:
                            os.fsync(f.fileno())
                    except BaseException:
                        with contextlib.suppress(OSError):
                            f.truncate(start)
                        raise
            except OSError as err:
                if err.errno in _FULL:
                    raise _full_error(self.directory, err) from err
                raise

    def _name_scope(self, d: Path, scope: str) -> None:
        """Write the full workflow id next to a shortened index directory name."""
        target = d / _SCOPE_FILE
        if not target.exists():
            tmp = self._tmp / f"scope.{uuid.uuid4().hex}"
            try:
                tmp.write_text(scope, encoding="utf-8")
                os.replace(tmp, target)
            except BaseException:
                _remove_quietly(tmp)
                raise
        if len(self._named_scopes) > self._known_limit:
            self._named_scopes.clear()
        self._named_scopes.add(scope)

    def _forget(self, digest: bytes) -> None:
        """A blob was found damaged: let this process's next writer of it check it again."""
        with self._lock:
            for known in self._known.values():
                known.discard(digest)

    # ------------------------------------------------------------------ retrieving
    def _retrieve_all(self, claims: list[StorageDriverClaim]) -> list[Payload]:
        return [self._retrieve_one(c) for c in claims]

    def _read_blob(self, digest: bytes) -> bytes:
        cached = self._cache.get(digest)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        path = self._blob_path(digest)
        h = digest.hex()
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise BlobUnavailableError(
                f"payload blob {h} is missing from the store {self.directory} (garbage-"
                f"collected, or a worker using another store directory?); {_RECOVER}",
                sha256=h, directory=self.directory, reason="missing",
            ) from None
        actual = hashlib.sha256(content).hexdigest()
        if actual != h:
            self._forget(digest)
            raise BlobUnavailableError(
                f"payload blob {h} in the store {self.directory} is corrupt (file "
                f"{path.relative_to(self.directory)} hashes to {actual[:16]}…); {_RECOVER}",
                sha256=h, directory=self.directory, reason="corrupt",
            )
        self._cache.put(digest, content)
        return content

    def _bad_reference(self, claim: StorageDriverClaim, why: str) -> BlobUnavailableError:
        m = str(claim.claim_data.get("m", ""))[:80]
        return BlobUnavailableError(
            f"payload reference {m or '(no digest)'} is not one the {self._name!r} store "
            f"{self.directory} can read ({why}); if it is the session's own payload, {_RECOVER}",
            sha256=m or None, directory=self.directory, reason="bad-reference",
        )

    def _retrieve_one(self, claim: StorageDriverClaim) -> Payload:
        m = claim.claim_data.get("m", "")
        try:
            mdigest = bytes.fromhex(m)
        except (TypeError, ValueError):
            mdigest = b""
        if len(mdigest) != _DIGEST:
            raise self._bad_reference(claim, "no sha256 manifest digest")
        manifest = self._read_blob(mdigest)
        try:
            head, total, digests = _parse_manifest(manifest)
            payload = Payload.FromString(head)
        except (ValueError, DecodeError) as err:
            raise self._bad_reference(claim, f"blob is not a payload manifest: {err}") from None
        data = b"".join(self._read_blob(d) for d in digests)
        if hashlib.sha256(data).digest() != total:
            raise BlobUnavailableError(
                f"payload {mdigest.hex()} in the store {self.directory} does not match its "
                f"manifest (sha256 of the chunks differs); {_RECOVER}",
                sha256=mdigest.hex(), directory=self.directory, reason="corrupt",
            )
        payload.data = data
        self.stats.retrieves += 1
        self.stats.retrieved_bytes += len(data)
        return payload


def _claimed_size(claim: StorageDriverClaim) -> int:
    try:
        return max(0, int(claim.claim_data.get("size", "0") or 0))
    except (TypeError, ValueError):
        return 0


def _same_bytes(path: Path, content: bytes) -> bool:
    """Does the file hold exactly `content` (hence hash to its name)?"""
    try:
        with open(path, "rb", buffering=0) as f:
            return f.readall() == content
    except FileNotFoundError:
        return False


def _parse_manifest(manifest: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """Header, payload sha256 and chunk digests; ValueError unless the layout is exact."""
    if manifest[:4] != _MANIFEST_MAGIC:
        raise ValueError("not a temporal-handoff payload manifest")
    pos = 4
    hlen = int.from_bytes(manifest[pos : pos + 4], "big")
    pos += 4
    head = manifest[pos : pos + hlen]
    pos += hlen
    total = manifest[pos : pos + _DIGEST]
    pos += _DIGEST
    count = int.from_bytes(manifest[pos : pos + 4], "big")
    pos += 4
    if len(manifest) != pos + count * _DIGEST or len(head) != hlen:
        raise ValueError("truncated or malformed manifest")
    digests = [manifest[pos + i * _DIGEST : pos + (i + 1) * _DIGEST] for i in range(count)]
    return head, total, digests


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_conversation(payload: Payload) -> bool:
    """Whether the converter marked `payload` as a conversation (see `CONTENT_METADATA`)."""
    return payload.metadata.get(CONTENT_METADATA) == CONVERSATION


def external_storage(
    directory: str | os.PathLike[str],
    threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
    inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
    **driver_options: object,
) -> ExternalStorage:
    """An `ExternalStorage` that keeps conversations ≥ `threshold_bytes`, and any
    payload ≥ max(`threshold_bytes`, `inline_max_bytes`), in `directory`.

    Args:
        directory: Shared by every worker (and client that starts sessions with big
            inputs) of the deployment; must survive worker restarts.
        threshold_bytes: Payloads smaller than this stay inline in history.
        inline_max_bytes: Payloads that are not conversations stay inline below this
            size (0: store every payload from `threshold_bytes` up).
        driver_options: Passed to `LocalStorageDriver` (min_chunk, fsync, ...).
    """
    if inline_max_bytes < 0:
        raise ValueError(f"inline_max_bytes must be >= 0, got {inline_max_bytes}")
    driver = LocalStorageDriver(directory, **driver_options)  # type: ignore[arg-type]

    def select(_ctx: StorageDriverSelectContext, payload: Payload) -> StorageDriver | None:
        # Called only for payloads of at least `threshold_bytes`.
        if is_conversation(payload) or payload.ByteSize() >= inline_max_bytes:
            return driver
        return None

    return ExternalStorage(
        drivers=[driver], driver_selector=select, payload_size_threshold=threshold_bytes
    )


# ---------------------------------------------------------------------- GC
_LEGACY_GENERATIONS = 100_000
"""Generations tried to find a long id's children in directories without a scope file."""


def _index_dirs(root: Path) -> Iterator[Path]:
    index = root / "index"
    if index.is_dir():
        yield from (p for p in index.iterdir() if p.is_dir())


def _read_index(d: Path) -> set[bytes]:
    out: set[bytes] = set()
    for f in d.glob("*.idx"):
        with contextlib.suppress(FileNotFoundError):
            for line in f.read_bytes().split(b"\n"):
                line = line.strip()
                if len(line) == 2 * _DIGEST:
                    with contextlib.suppress(ValueError):
                        out.add(bytes.fromhex(line.decode()))
    return out


def _session_dirs(
    root: Path, workflow_id: str, include_children: bool
) -> tuple[list[tuple[Path, str]], list[Path]]:
    """The index directories of a session (with its scope) and all the others.

    A session's own scopes are its id (every run) and, with `include_children`, the ids
    of its handoff children, exactly: ``<id>-handoff-<generation>`` and the run-scoped
    ``<id>-handoff-<generation>-<run id[:8]>`` a reset run starts. ``alpha`` never
    matches ``alpha-handoff-review``.
    """
    exact = _scope_dir_name(workflow_id)
    child = re.compile(re.escape(workflow_id) + r"-handoff-\d+(?:-[0-9a-f]{8})?")
    long_prefix = _scope_dir_name(f"{workflow_id}-handoff-0")[:120]
    mine: list[tuple[Path, str]] = []
    others: list[Path] = []
    unnamed: dict[str, Path] = {}
    for d in _index_dirs(root):
        if d.name == exact:
            mine.append((d, workflow_id))
        elif not include_children:
            others.append(d)
        elif _is_shortened(d.name) and not (d / _SCOPE_FILE).exists():
            # Written before shortened names got a scope file: only recomputing the
            # name of each generation's child tells whose it is.
            if d.name.startswith(long_prefix):
                unnamed[d.name] = d
            else:
                others.append(d)
        elif child.fullmatch(_scope_of_dir(d)):
            mine.append((d, _scope_of_dir(d)))
        else:
            others.append(d)
    for n in range(_LEGACY_GENERATIONS if unnamed else 0):
        scope = f"{workflow_id}-handoff-{n}"
        found = unnamed.pop(_scope_dir_name(scope), None)
        if found is not None:
            mine.append((found, scope))
        if not unnamed:
            break
    others.extend(unnamed.values())
    return mine, others


def session_scopes(
    directory: str | os.PathLike[str], workflow_id: str, *, include_children: bool = True
) -> list[str]:
    """The workflow ids `gc_session` would collect for `workflow_id` (that have an index)."""
    mine, _ = _session_dirs(Path(directory), workflow_id, include_children)
    return sorted(scope for _, scope in mine)


def _delete_blobs(
    root: Path, digests: Iterable[bytes], keep: set[bytes], grace_s: float, result: GcResult
) -> None:
    now = time.time()
    for d in digests:
        if d in keep:
            result.kept_shared += 1
            continue
        h = d.hex()
        path = root / "blobs" / h[:2] / h
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if now - st.st_mtime < grace_s:
            result.kept_recent += 1
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            result.deleted += 1
            result.deleted_bytes += st.st_size


def gc_session(
    directory: str | os.PathLike[str],
    workflow_id: str,
    *,
    include_children: bool = True,
    grace_s: float = 300.0,
) -> GcResult:
    """Delete a closed session's stored payloads (the filesystem part; no Temporal check).

    Removes the index of `workflow_id` (all its runs: generations share the id) and,
    with `include_children`, of its handoff children (`<id>-handoff-<n>`, and the
    run-scoped `<id>-handoff-<n>-<run>` after a reset; matched exactly), then deletes
    every blob they listed that no other index references. Call it only for a session
    that is closed and whose history you no longer need to replay or decode: the
    references in its history become unreadable.
    `storage_maintenance.gc_closed_session` (the command line) checks with Temporal
    first that the session and its children are closed.

    Args:
        directory: The store's root directory.
        workflow_id: The session's workflow id.
        include_children: Also collect the session's handoff child workflows.
        grace_s: Keep blobs written or re-referenced this recently (a concurrent
            session may have just deduplicated against one).
    """
    root = Path(directory)
    targets, others = _session_dirs(root, workflow_id, include_children)
    result = GcResult(scopes=[scope for _, scope in targets])
    with contextlib.suppress(OSError):
        clean_tmp(root)
    if not targets:
        return result
    # Move the session's index out of the way first: a blob it shares with a live
    # session is then protected by that session's index alone.
    trash = root / "tmp" / f"gc-{uuid.uuid4().hex}"
    trash.mkdir(parents=True)
    mine: set[bytes] = set()
    for d, _ in targets:
        mine |= _read_index(d)
        d.rename(trash / d.name)
    keep: set[bytes] = set()
    for d in others:
        keep |= _read_index(d)
    _delete_blobs(root, mine, keep, grace_s, result)
    _rmtree(trash)
    return result


def _blob_files(root: Path) -> Iterator[Path]:
    blobs = root / "blobs"
    for sub in blobs.iterdir() if blobs.is_dir() else ():
        if sub.is_dir():
            yield from (p for p in sub.iterdir() if len(p.name) == 2 * _DIGEST)


def gc_orphans(directory: str | os.PathLike[str], *, grace_s: float = 3600.0) -> GcResult:
    """Delete blobs that no index references (e.g. left by an interrupted GC), and
    temporary files older than `TMP_GRACE_S`."""
    root = Path(directory)
    keep: set[bytes] = set()
    for d in _index_dirs(root):
        keep |= _read_index(d)
    result = GcResult(scopes=[])
    every = [bytes.fromhex(p.name) for p in _blob_files(root)]
    _delete_blobs(root, every, keep, grace_s, result)
    with contextlib.suppress(OSError):
        clean_tmp(root)
    return result


def clean_tmp(directory: str | os.PathLike[str], *, grace_s: float = TMP_GRACE_S) -> int:
    """Remove temporary files (and interrupted GCs' index trash) older than `grace_s`.

    A writer's temporary file lives for one write and rename; what is older was left by
    a killed process or a failed write. Returns the number of entries removed.
    """
    tmp = Path(directory) / "tmp"
    if not tmp.is_dir():
        return 0
    now = time.time()
    removed = 0
    for p in tmp.iterdir():
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if now - st.st_mtime < grace_s:
            continue
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                _rmtree(p)
            else:
                p.unlink()
            removed += 1
    return removed


@dataclass
class VerifyResult:
    """Outcome of `verify_store`."""

    blobs: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    """Paths of blobs whose bytes do not hash to their name."""
    missing: list[str] = field(default_factory=list)
    """``<chunk sha256> (manifest <sha256>)``: chunks a stored payload needs, not found."""
    tmp_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def verify_store(directory: str | os.PathLike[str]) -> VerifyResult:
    """Hash every blob against its name; check that every manifest's chunks exist."""
    root = Path(directory)
    result = VerifyResult()
    paths = list(_blob_files(root))
    names = {p.name for p in paths}
    for path in paths:
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # collected meanwhile
            continue
        result.blobs += 1
        result.bytes += len(content)
        if hashlib.sha256(content).hexdigest() != path.name:
            result.corrupt.append(str(path))
            continue
        if content[:4] == _MANIFEST_MAGIC:
            try:
                _, _, digests = _parse_manifest(content)
            except ValueError:
                continue  # a chunk that happens to start like a manifest
            result.missing.extend(
                f"{d.hex()} (manifest {path.name})" for d in digests if d.hex() not in names
            )
    tmp = root / "tmp"
    result.tmp_files = sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0
    return result


def storage_stats(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Files and bytes in the store, indexed workflow ids, and temporary files."""
    root = Path(directory)
    files = size = 0
    for p in _blob_files(root):
        with contextlib.suppress(FileNotFoundError):
            size += p.stat().st_size
            files += 1
    tmp = root / "tmp"
    return {
        "blobs": files,
        "bytes": size,
        "scopes": sum(1 for _ in _index_dirs(root)),
        "tmp_files": sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0,
    }


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m temporal_handoff.workers.storage {gc,orphans,stats,verify} DIR ...``.

    See `temporal_handoff.workers.storage_maintenance`.
    """
    from temporal_handoff.workers.storage_maintenance import main as _main

    return _main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
