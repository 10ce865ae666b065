"""Payload store maintenance from the command line, safe against live sessions.

``python -m temporal_handoff.workers.storage COMMAND DIR ...``:

* ``gc DIR WORKFLOW_ID``: delete a closed session's payloads (and its handoff
  children's). Temporal is asked first: if the session or one of its children is not
  closed, nothing is deleted and the command exits 2 naming the open workflow. A
  session Temporal does not know (wrong ``--address``/``--namespace``, or its history
  past retention) is refused too, unless ``--force``; ``--force`` never collects an open
  workflow.
* ``orphans DIR``: delete blobs no index references, and stale temporary files.
* ``stats DIR``: files and bytes.
* ``verify DIR``: hash every blob against its name and check every stored payload's
  chunks exist; one line per damaged blob, exit 1 if any.

Exit codes: 0 done; 1 ``verify`` found damage; 2 refused, bad usage or Temporal
unreachable. Errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from temporal_handoff.runtime_scope import command_runtime, run_short_lived
from temporal_handoff.workers.storage import (
    GcResult,
    gc_orphans,
    gc_session,
    session_scopes,
    storage_stats,
    verify_store,
)

__all__ = ["GcRefusedError", "gc_closed_session", "main"]

_CLOSED = {
    WorkflowExecutionStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.CONTINUED_AS_NEW,
}


class GcRefusedError(Exception):
    """`gc` would delete payloads a workflow may still need (one-line message)."""

    def __init__(self, message: str, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


async def _status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The latest run's status; None if Temporal does not know the id."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.status


async def gc_closed_session(
    client: Client,
    directory: str | os.PathLike[str],
    workflow_id: str,
    *,
    include_children: bool = True,
    grace_s: float = 300.0,
    force: bool = False,
) -> GcResult:
    """`gc_session`, after Temporal confirmed the session and its children are closed.

    Args:
        client: Connected to the session's namespace.
        directory: The store's root directory.
        workflow_id: The session's workflow id.
        include_children: Also collect the session's handoff children
            (``<id>-handoff-<n>``, and ``<id>-handoff-<n>-<run>`` after a reset).
        grace_s: Keep blobs touched this recently (see `gc_session`).
        force: Collect even if Temporal does not know `workflow_id` (its history is
            past retention). An open workflow is refused all the same.

    Raises:
        GcRefusedError: the session or a child is not closed, or (without `force`)
            Temporal does not know the session. Nothing was deleted.
    """
    ns = client.namespace
    status = await _status(client, workflow_id)
    if status is None and not force:
        raise GcRefusedError(
            f"gc refused: workflow {workflow_id!r} is not known to Temporal (namespace "
            f"{ns!r}); check --address/--namespace, or pass --force if its history is "
            "past retention",
            workflow_id,
        )
    if status is not None and status not in _CLOSED:
        raise GcRefusedError(
            f"gc refused: workflow {workflow_id!r} is {status.name} (namespace {ns!r}); "
            "its payloads are still needed, gc it once it is closed",
            workflow_id,
        )
    if include_children:
        children = [
            s for s in session_scopes(directory, workflow_id) if s != workflow_id
        ]
        statuses = await asyncio.gather(*(_status(client, c) for c in children))
        for child, st in zip(children, statuses, strict=True):
            # A child Temporal no longer knows (past retention) is not running.
            if st is not None and st not in _CLOSED:
                raise GcRefusedError(
                    f"gc refused: handoff child {child!r} of {workflow_id!r} is "
                    f"{st.name} (namespace {ns!r}); its payloads are still needed",
                    child,
                )
    return gc_session(
        directory, workflow_id, include_children=include_children, grace_s=grace_s
    )


async def _connect(address: str | None, namespace: str | None, profile: str | None) -> Client:
    from temporal_handoff.workers.worker import WorkerConnectError, connect_config

    try:
        config = connect_config(address=address, namespace=namespace, profile=profile)
    except WorkerConnectError as err:
        raise _Usage(str(err)) from None
    try:
        return await asyncio.wait_for(
            Client.connect(**config, runtime=command_runtime()), timeout=10
        )
    except (RuntimeError, RPCError, TimeoutError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _Usage(f"cannot reach Temporal at {config['target_host']}: {first}") from None


class _Usage(Exception):
    """A one-line error, exit code 2."""


def _store_dir(path: str) -> Path:
    root = Path(path)
    if not ((root / "blobs").is_dir() or (root / "index").is_dir()):
        raise _Usage(f"directory: {path} is not a payload store (no blobs/ or index/)")
    return root


async def _gc(args: argparse.Namespace) -> GcResult:
    root = _store_dir(args.directory)
    client = await _connect(args.address, args.namespace, args.profile)
    return await gc_closed_session(
        client, root, args.workflow_id, include_children=not args.no_children,
        grace_s=args.grace_s, force=args.force,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m temporal_handoff.workers.storage",
        description="Maintain the payload store (content-addressed, shared by all workers).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    gc = sub.add_parser(
        "gc", help="delete a closed session's payloads (asks Temporal that it is closed)"
    )
    gc.add_argument("directory")
    gc.add_argument("workflow_id")
    gc.add_argument("--grace-s", type=float, default=300.0,
                    help="keep blobs touched this recently (default 300)")
    gc.add_argument("--no-children", action="store_true",
                    help="leave the session's handoff children's payloads")
    gc.add_argument("--force", action="store_true",
                    help="collect a session Temporal does not know (history past retention); "
                    "an open workflow is still refused")
    gc.add_argument("--address", default=os.environ.get("TEMPORAL_ADDRESS"), help="host:port")
    gc.add_argument("--namespace", default=os.environ.get("TEMPORAL_NAMESPACE"))
    gc.add_argument("--profile", default=os.environ.get("TEMPORAL_PROFILE"),
                    help="envconfig profile (TLS and API key)")
    orphans = sub.add_parser("orphans", help="delete blobs no session references")
    orphans.add_argument("directory")
    orphans.add_argument("--grace-s", type=float, default=3600.0)
    stats = sub.add_parser("stats", help="files and bytes in the store")
    stats.add_argument("directory")
    verify = sub.add_parser(
        "verify", help="hash every blob, list damaged ones (exit 1 if any)"
    )
    verify.add_argument("directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "gc":
            print(json.dumps(run_short_lived(lambda: _gc(args)).__dict__))
        elif args.cmd == "orphans":
            root = _store_dir(args.directory)
            print(json.dumps(gc_orphans(root, grace_s=args.grace_s).__dict__))
        elif args.cmd == "stats":
            print(json.dumps(storage_stats(_store_dir(args.directory))))
        else:
            result = verify_store(_store_dir(args.directory))
            for path in result.corrupt:
                print(f"corrupt {Path(path).name} {path}")
            for item in result.missing:
                print(f"missing {item}")
            print(json.dumps({
                "blobs": result.blobs, "bytes": result.bytes, "corrupt": len(result.corrupt),
                "missing": len(result.missing), "tmp_files": result.tmp_files,
            }))
            return 0 if result.ok else 1
    except (GcRefusedError, _Usage) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RPCError as err:
        print(f"error: Temporal: {err.message}", file=sys.stderr)
        return 2
    return 0
