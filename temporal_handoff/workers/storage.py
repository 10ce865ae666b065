"""Conversation content kept out of workflow history: a content-addressed payload store.

Temporal keeps every activity input in history. A session sends the whole
conversation to `call_model` each turn, so at a 100K-token conversation a naive
worker adds ~440 KB of history per turn and meets the 4 MiB continue-as-new
suggestion within ten turns. With the SDK's `ExternalStorage` every payload above a
size threshold is written to a `StorageDriver` and history keeps only a reference
(~250 bytes).

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
  index references; a blob shared with another session survives.

Use `external_storage(directory)` to get an `ExternalStorage`, and give it to
`HandoffPlugin(storage=...)`. On a cluster without a shared filesystem use the SDK's
`temporalio.contrib.aws.s3driver.S3StorageDriver` instead (it stores whole payloads,
and objects expire with a bucket lifecycle rule rather than `gc_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverActivityInfo,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)

__all__ = [
    "DEFAULT_THRESHOLD_BYTES",
    "DRIVER_NAME",
    "GcResult",
    "LocalStorageDriver",
    "StorageStats",
    "external_storage",
    "gc_orphans",
    "gc_session",
    "split_points",
    "storage_stats",
]

DRIVER_NAME = "handoff-local"
"""Name written into every reference; readers must register a driver of this name."""

DEFAULT_THRESHOLD_BYTES = 4 * 1024
"""Payloads at least this big are stored outside history.

Small enough that every model-call input goes out (a turn then adds ~2-4 KB of
history whatever the conversation size), big enough that small results, signals
and commands stay inline and readable in the Temporal UI.
"""

_MANIFEST_MAGIC = b"thm1"
_DIGEST = 32
_UNSCOPED = "_unscoped"
# The start of a JSON object that is an array element: between messages, content
# blocks, tools, tasks. The cut goes before the `{`.
_CUT = re.compile(rb'[\[,](?=\{")')
_SAFE = "-_.@+="


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


def _scope_from_dir_name(name: str) -> str:
    return unquote(name)


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
        self._cache = _LruBytes(cache_bytes)
        # Digests this process has indexed for a scope and made sure exist on disk.
        # A scope's blobs are only deleted by GC of that scope (a closed session),
        # so the memo cannot go stale while the session runs.
        self._known: OrderedDict[str, set[bytes]] = OrderedDict()
        self._known_limit = 4096
        self._lock = threading.Lock()
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
        size = sum(int(c.claim_data.get("size", "0") or 0) for c in items)
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
        if path.exists():
            # Refresh the mtime: a concurrent GC of another session that last
            # referenced this blob leaves recently touched blobs alone.
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
                return
        path.parent.mkdir(exist_ok=True)
        tmp = self._tmp / f"{digest.hex()}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(content)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(path.parent)
        self.stats.written_bytes += len(content)
        self.stats.written_files += 1

    def _append_index(self, scope: str, digests: Iterable[bytes]) -> None:
        d = self._index / _scope_dir_name(scope)
        d.mkdir(exist_ok=True)
        lines = "".join(x.hex() + "\n" for x in digests).encode()
        with open(d / f"{self._writer_id}.idx", "ab") as f:
            f.write(lines)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    # ------------------------------------------------------------------ retrieving
    def _retrieve_all(self, claims: list[StorageDriverClaim]) -> list[Payload]:
        return [self._retrieve_one(c) for c in claims]

    def _read_blob(self, digest: bytes) -> bytes:
        cached = self._cache.get(digest)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        path = self._blob_path(digest)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"payload blob {digest.hex()} is missing from {self.directory} "
                "(every worker must share this directory; was the session garbage-collected?)"
            ) from None
        if hashlib.sha256(content).digest() != digest:
            raise ValueError(f"payload blob {path} is corrupt (sha256 mismatch)")
        self._cache.put(digest, content)
        return content

    def _retrieve_one(self, claim: StorageDriverClaim) -> Payload:
        mdigest = bytes.fromhex(claim.claim_data["m"])
        manifest = self._read_blob(mdigest)
        head, total, digests = _parse_manifest(manifest)
        data = b"".join(self._read_blob(d) for d in digests)
        if hashlib.sha256(data).digest() != total:
            raise ValueError(f"payload {mdigest.hex()} does not match its manifest")
        payload = Payload.FromString(head)
        payload.data = data
        self.stats.retrieves += 1
        self.stats.retrieved_bytes += len(data)
        return payload


def _parse_manifest(manifest: bytes) -> tuple[bytes, bytes, list[bytes]]:
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
    digests = [manifest[pos + i * _DIGEST : pos + (i + 1) * _DIGEST] for i in range(count)]
    return head, total, digests


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def external_storage(
    directory: str | os.PathLike[str],
    threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
    **driver_options: object,
) -> ExternalStorage:
    """An `ExternalStorage` that keeps payloads ≥ `threshold_bytes` in `directory`.

    Args:
        directory: Shared by every worker (and client that starts sessions with big
            inputs) of the deployment; must survive worker restarts.
        threshold_bytes: Payloads smaller than this stay inline in history.
        driver_options: Passed to `LocalStorageDriver` (min_chunk, fsync, ...).
    """
    driver = LocalStorageDriver(directory, **driver_options)  # type: ignore[arg-type]
    return ExternalStorage(drivers=[driver], payload_size_threshold=threshold_bytes)


# ---------------------------------------------------------------------- GC
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
                    out.add(bytes.fromhex(line.decode()))
    return out


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
    """Delete a closed session's stored payloads.

    Removes the index of `workflow_id` (all its runs: generations share the id) and,
    with `include_children`, of its handoff children (`<id>-handoff-<n>`), then
    deletes every blob they listed that no other index references. Call it only
    for a session that is closed and whose history you no longer need to replay or
    decode: the references in its history become unreadable.

    Args:
        directory: The store's root directory.
        workflow_id: The session's workflow id.
        include_children: Also collect the session's handoff child workflows.
        grace_s: Keep blobs written or re-referenced this recently (a concurrent
            session may have just deduplicated against one).
    """
    root = Path(directory)
    prefix = _scope_dir_name(f"{workflow_id}-handoff-")
    exact = _scope_dir_name(workflow_id)
    targets: list[Path] = []
    others: list[Path] = []
    for d in _index_dirs(root):
        if d.name == exact or (include_children and d.name.startswith(prefix)):
            targets.append(d)
        else:
            others.append(d)
    result = GcResult(scopes=[_scope_from_dir_name(d.name) for d in targets])
    if not targets:
        return result
    # Move the session's index out of the way first: a blob it shares with a live
    # session is then protected by that session's index alone.
    trash = root / "tmp" / f"gc-{uuid.uuid4().hex}"
    trash.mkdir(parents=True)
    mine: set[bytes] = set()
    for d in targets:
        mine |= _read_index(d)
        d.rename(trash / d.name)
    keep: set[bytes] = set()
    for d in others:
        keep |= _read_index(d)
    _delete_blobs(root, mine, keep, grace_s, result)
    _rmtree(trash)
    return result


def gc_orphans(directory: str | os.PathLike[str], *, grace_s: float = 3600.0) -> GcResult:
    """Delete blobs that no index references (e.g. left by an interrupted GC)."""
    root = Path(directory)
    keep: set[bytes] = set()
    for d in _index_dirs(root):
        keep |= _read_index(d)
    result = GcResult(scopes=[])
    blobs = root / "blobs"
    every = (
        bytes.fromhex(p.name)
        for sub in (blobs.iterdir() if blobs.is_dir() else ())
        for p in sub.iterdir()
        if len(p.name) == 2 * _DIGEST
    )
    _delete_blobs(root, list(every), keep, grace_s, result)
    return result


def storage_stats(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Files and bytes in the store, and the number of indexed workflow ids."""
    root = Path(directory)
    files = size = 0
    blobs = root / "blobs"
    if blobs.is_dir():
        for sub in blobs.iterdir():
            for p in sub.iterdir():
                files += 1
                size += p.stat().st_size
    return {"blobs": files, "bytes": size, "scopes": sum(1 for _ in _index_dirs(root))}


def _rmtree(path: Path) -> None:
    for p in sorted(path.rglob("*"), key=lambda x: len(x.parts), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    path.rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m temporal_handoff.workers.storage {gc,orphans,stats} DIR [WORKFLOW_ID]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m temporal_handoff.workers.storage")
    sub = p.add_subparsers(dest="cmd", required=True)
    gc = sub.add_parser("gc", help="delete a closed session's payloads")
    gc.add_argument("directory")
    gc.add_argument("workflow_id")
    gc.add_argument("--grace-s", type=float, default=300.0)
    gc.add_argument("--no-children", action="store_true")
    orphans = sub.add_parser("orphans", help="delete blobs no session references")
    orphans.add_argument("directory")
    orphans.add_argument("--grace-s", type=float, default=3600.0)
    stats = sub.add_parser("stats", help="files and bytes in the store")
    stats.add_argument("directory")
    args = p.parse_args(argv)
    if args.cmd == "gc":
        result = gc_session(
            args.directory, args.workflow_id, include_children=not args.no_children,
            grace_s=args.grace_s,
        )
        print(json.dumps(result.__dict__))
    elif args.cmd == "orphans":
        print(json.dumps(gc_orphans(args.directory, grace_s=args.grace_s).__dict__))
    else:
        print(json.dumps(storage_stats(args.directory)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
