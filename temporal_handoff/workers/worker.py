"""Worker entry point: `handoff worker`.

Configuration (every option of `handoff worker` also has an environment variable):

* Connection: `temporalio.envconfig` — a profile from the TOML config file
  (`TEMPORAL_CONFIG_FILE`, `TEMPORAL_PROFILE`) and the `TEMPORAL_*` environment
  (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS`,
  `TEMPORAL_TLS_CLIENT_CERT_PATH`, `TEMPORAL_TLS_CLIENT_KEY_PATH`, ...), with
  `--address` / `--namespace` overrides.
* Conversation storage: `HANDOFF_STORAGE_DIR`, a directory shared by every worker
  (see `temporal_handoff.workers.storage`); payload encryption: `HANDOFF_CODEC_KEYS`.
* Task queue and concurrency limits, worker identity, a health file for container
  healthchecks.

SIGTERM/SIGINT start a graceful shutdown: the worker stops polling, lets in-flight
activities finish within `graceful_shutdown_s` and reports their results, then
exits 0. An activity still running when that time is up is cancelled and *handed
back*: it fails with a retryable `WorkerShutdown` error, so Temporal retries it at
once on another worker instead of waiting for its timeout. Workflow state is never
at risk: it lives in Temporal and any worker resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.converter import ExternalStorage
from temporalio.envconfig import ClientConfig
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError
from temporalio.runtime import Runtime
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from temporal_handoff.workers.plugin import HandoffPlugin

log = logging.getLogger("temporal_handoff.worker")

STORAGE_DIR_ENV = "HANDOFF_STORAGE_DIR"
"""Directory of the shared conversation store (a volume mounted into every worker)."""

CODEC_KEYS_ENV = "HANDOFF_CODEC_KEYS"
HEALTH_TOUCH_S = 5.0


class WorkerConnectError(Exception):
    """The Temporal server could not be reached (one line, no traceback)."""


def storage_from_env(
    directory: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ExternalStorage | None:
    """The shared conversation store: `directory`, else `$HANDOFF_STORAGE_DIR`, else None.

    Every worker and every client that starts sessions or reads results must use the
    same directory (with None, conversation content stays inline in history).
    """
    path = directory or (os.environ if env is None else env).get(STORAGE_DIR_ENV, "").strip()
    if not path:
        return None
    from temporal_handoff.workers.storage import external_storage

    return external_storage(path)


def codec_from_env(env: Mapping[str, str] | None = None) -> Any:
    """The AES-GCM codec from `$HANDOFF_CODEC_KEYS`, or None if unset."""
    source = os.environ if env is None else env
    if not source.get(CODEC_KEYS_ENV, "").strip():
        return None
    from temporal_handoff.codec import codec_from_env as load

    return load(source)


def connect_config(
    *,
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
    identity: str | None = None,
) -> dict[str, Any]:
    """`Client.connect` keyword arguments from an envconfig profile + environment.

    TLS (client cert/key, CA, server name) and the Temporal Cloud API key come from
    the profile or `TEMPORAL_TLS_*` / `TEMPORAL_API_KEY`; `address`/`namespace`
    override the profile.
    """
    try:
        config: dict[str, Any] = dict(ClientConfig.load_client_connect_config(profile=profile))
    except RuntimeError as err:  # the bridge's ConfigError: unknown profile, bad TOML
        raise WorkerConnectError(f"client configuration: {err}") from None
    if address:
        config["target_host"] = address
    config.setdefault("target_host", "localhost:7233")
    if namespace:
        config["namespace"] = namespace
    if identity:
        config["identity"] = identity
    return config


async def connect_worker_client(
    *,
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
    identity: str | None = None,
    storage_dir: str | None = None,
    plugin: HandoffPlugin | None = None,
    timeout_s: float = 10.0,
    runtime: Runtime | None = None,
) -> Client:
    """Connect with the `HandoffPlugin` (shared storage and codec from the environment).

    `runtime`: the Temporal runtime to run on (default: the SDK's process-wide one).
    """
    config = connect_config(address=address, namespace=namespace, profile=profile, identity=identity)
    if plugin is None:
        plugin = HandoffPlugin(storage=storage_from_env(storage_dir), codec=codec_from_env())
    try:
        return await asyncio.wait_for(
            Client.connect(**config, plugins=[plugin], runtime=runtime), timeout=timeout_s
        )
    except (RuntimeError, TimeoutError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WorkerConnectError(f"cannot reach Temporal at {config['target_host']}: {first}") from None


class _Drain:
    """Counts in-flight activities so the shutdown can say what it finished and handed back."""

    def __init__(self) -> None:
        self.running = 0
        self.completed = 0
        self.completed_during_shutdown = 0
        self.handed_back = 0
        self.shutting_down = False


class HandBackInterceptor(Interceptor):
    """Turns a worker-shutdown cancellation into a retryable failure ("hand back").

    Without it, an activity cancelled because its worker is stopping would complete as
    *cancelled*, which the workflow sees as a cancellation rather than something to
    retry. With it, Temporal schedules the next attempt right away on another worker.
    """

    def __init__(self, drain: _Drain | None = None) -> None:
        self.drain = drain or _Drain()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HandBackActivity(next, self.drain)


class _HandBackActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, drain: _Drain) -> None:
        super().__init__(next)
        self._drain = drain

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        drain = self._drain
        drain.running += 1
        try:
            result = await super().execute_activity(input)
        except (asyncio.CancelledError, CancelledError):
            details = activity.cancellation_details()
            requested = details is not None and details.cancel_requested
            if activity.is_worker_shutdown() and not requested:
                drain.handed_back += 1
                info = activity.info()
                log.warning(
                    "handing back %s (workflow %s, attempt %d): worker shutting down",
                    info.activity_type, info.workflow_id, info.attempt,
                )
                raise ApplicationError(
                    "worker shut down before the activity finished; retried on another worker",
                    type="WorkerShutdown",
                    # Expected during deploys: logged by us above, not as an SDK error.
                    category=ApplicationErrorCategory.BENIGN,
                ) from None
            raise
        finally:
            drain.running -= 1
        drain.completed += 1
        if drain.shutting_down:
            drain.completed_during_shutdown += 1
        return result


async def _keep_alive(path: Path, stop: asyncio.Event) -> None:
    """Touch `path` every few seconds while the worker runs (container healthcheck)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while not stop.is_set():
        path.touch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=HEALTH_TOUCH_S)


async def run_worker(
    client: Client,
    *,
    task_queue: str = "agent-sessions",
    max_concurrent_activities: int = 100,
    max_concurrent_workflow_tasks: int = 100,
    graceful_shutdown_s: float = 30.0,
    plugin: HandoffPlugin | None = None,
    identity: str | None = None,
    health_file: str | os.PathLike[str] | None = None,
    task_queue_activities_per_second: float | None = None,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain.

    Args:
        client: A connected client; if it carries a `HandoffPlugin` the worker uses it.
        task_queue: Task queue to poll (sessions are started on it).
        max_concurrent_activities: Activity slots (model calls in flight) of this worker.
        max_concurrent_workflow_tasks: Workflow task slots of this worker.
        graceful_shutdown_s: How long in-flight activities may run after SIGTERM before
            they are handed back to Temporal for another worker.
        plugin: The plugin to add when the client has none.
        identity: Worker identity shown in history (default `pid@host`).
        health_file: Touched every few seconds while the worker polls; removed when
            it starts shutting down (for container healthchecks).
        task_queue_activities_per_second: Server-enforced activity rate limit for the
            whole task queue (all workers), e.g. to stay under an API rate limit.
        stop: An event that stops the worker like a signal does (tests, embedding).
        install_signal_handlers: Handle SIGTERM/SIGINT (main thread only).
    """
    has_plugin = any(isinstance(p, HandoffPlugin) for p in client.config().get("plugins", []))
    drain = _Drain()
    worker = Worker(
        client,
        task_queue=task_queue,
        plugins=[] if has_plugin and plugin is None else [plugin or HandoffPlugin()],
        max_concurrent_activities=max_concurrent_activities,
        max_concurrent_workflow_tasks=max_concurrent_workflow_tasks,
        max_task_queue_activities_per_second=task_queue_activities_per_second,
        graceful_shutdown_timeout=timedelta(seconds=graceful_shutdown_s),
        interceptors=[HandBackInterceptor(drain)],
        identity=identity,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        # One INFO line per model request is noise at worker scale; errors still show.
        for name in ("httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    health = Path(health_file) if health_file else None
    alive = asyncio.Event()
    toucher: asyncio.Task[None] | None = None
    try:
        async with worker:
            if health:
                toucher = asyncio.create_task(_keep_alive(health, alive))
            log.info(
                "worker %s polling task queue %s (namespace %s, %d activity / %d workflow "
                "task slots)",
                identity or client.identity, task_queue, client.namespace,
                max_concurrent_activities, max_concurrent_workflow_tasks,
            )
            await stop.wait()
            drain.shutting_down = True
            alive.set()
            if health:
                with contextlib.suppress(FileNotFoundError):
                    health.unlink()
            log.info(
                "shutting down: stopped polling; draining %d in-flight activit%s "
                "(up to %g s, then hand back)",
                drain.running, "y" if drain.running == 1 else "ies", graceful_shutdown_s,
            )
            started = time.monotonic()
        log.info(
            "worker stopped: %d activit%s finished during shutdown, %d handed back, "
            "drain took %.1f s",
            drain.completed_during_shutdown,
            "y" if drain.completed_during_shutdown == 1 else "ies",
            drain.handed_back, time.monotonic() - started,
        )
    finally:
        alive.set()
        if toucher:
            await toucher
        for sig in installed:
            loop.remove_signal_handler(sig)
