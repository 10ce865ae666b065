"""Lifecycle notifications (WARNING, CRITICAL, HANDOFF, TERMINATED).

The default notifier logs one line. Users plug in their own (a webhook, a chat
message) through `HandoffPlugin(notifier=...)`; it runs here, in an activity, so it
may do I/O and is retried by Temporal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from temporalio import activity

from temporal_handoff.schemas.events import LifecycleEvent

Notifier = Callable[[LifecycleEvent], Awaitable[None]]

log = logging.getLogger("temporal_handoff.notify")


async def log_notifier(event: LifecycleEvent) -> None:
    """Default notifier: one log line, no prompt text."""
    log.info(
        "session %s gen %d %s (%s%s) context %.0f%% tasks %d/%d",
        event.session_id,
        event.generation,
        event.event,
        event.lifecycle.value,
        f", {event.reason.value}" if event.reason else "",
        event.context_pct,
        event.tasks_done,
        event.tasks_total,
    )


class NotifyActivities:
    """Holds the configured notifier."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self._notifier = notifier or log_notifier

    @activity.defn(name="notify")
    async def notify(self, event: LifecycleEvent) -> None:
        await self._notifier(event)
