"""
Delivering alerts without slowing anything else down.

Each notifier has its own bounded queue and task: a hanging webhook delays
neither the guarded calls nor the other notifiers. An attempt is bounded
by a timeout; a failed one is retried with a doubling, capped back-off;
an alert that still failed, or that found its queue full, is dropped with
a WARNING and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import TYPE_CHECKING, Literal, TypeAlias

from .._events import is_async
from .._logs import fields, log

if TYPE_CHECKING:
    import collections
    from collections.abc import Awaitable, Callable

    from ._values import BalanceAlert

__all__ = ["Channel", "Counts", "Notifier", "Outcome"]

Notifier: TypeAlias = "Callable[[BalanceAlert], Awaitable[object] | object]"
"""
What a `guard.BalanceMonitor` tells an alert to: any plain or async
callable taking a `guard.BalanceAlert`, such as `guard.notify.Webhook`.
A plain one runs in a worker thread, so it may block (within the
monitor's timeout).
"""


Outcome: TypeAlias = Literal["delivered", "failed", "dropped"]
Counts: TypeAlias = "collections.Counter[tuple[str, Outcome]]"


def describe(notifier: object) -> str:
    """Name *notifier* in a log line (its repr hides what is secret)."""
    name = getattr(notifier, "__qualname__", None)
    return name if isinstance(name, str) else repr(notifier)


class Channel:
    """
    One notifier's queue and the task that empties it.
    """

    def __init__(
        self,
        notifier: Notifier,
        counts: Counts,
        *,
        size: int,
        retries: int,
        backoff: float,
        max_backoff: float,
        timeout: float,
    ) -> None:
        self.notifier = notifier
        self.counts = counts
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.queue: asyncio.Queue[BalanceAlert] = asyncio.Queue(size)
        self.task: asyncio.Task[None] | None = None
        self._async = is_async(notifier)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _lost(
        self,
        alert: BalanceAlert,
        outcome: Literal["dropped", "failed"],
        why: str,
        *args: object,
    ) -> None:
        # Every alert not delivered is counted and said, with its fields.
        self.counts[alert.level, outcome] += 1
        log.warning(
            f"guard alert {why}",
            *args,
            extra=fields(
                f"alert_{outcome}",
                provider=alert.provider,
                account=alert.account,
                level=alert.level,
            ),
        )

    def put(self, alert: BalanceAlert) -> None:
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._lost(
                alert,
                "dropped",
                "dropped, %s's queue is full (%d waiting): %s",
                describe(self.notifier),
                self.queue.qsize(),
                alert,
            )

    async def stop(self, grace: float) -> None:
        """
        Deliver what is queued, for at most *grace* seconds, then stop.
        """
        task = self.task
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while not self.queue.empty():
            alert = self.queue.get_nowait()
            self._lost(
                alert,
                "dropped",
                "dropped, the monitor stopped before %s took it: %s",
                describe(self.notifier),
                alert,
            )

    async def _run(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await self._deliver(alert)
            except asyncio.CancelledError:
                self._lost(
                    alert,
                    "dropped",
                    "dropped, the monitor stopped while %s had it: %s",
                    describe(self.notifier),
                    alert,
                )
                raise
            finally:
                self.queue.task_done()

    async def _deliver(self, alert: BalanceAlert) -> None:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                await self._once(alert)
            except Exception as exc:  # any notifier's failure
                if attempt + 1 == attempts:
                    self._lost(
                        alert,
                        "failed",
                        "dropped after %d attempts to %s (%s): %s",
                        attempts,
                        describe(self.notifier),
                        _reason(exc),
                        alert,
                    )
                    return
                await asyncio.sleep(min(self.backoff * 2**attempt, self.max_backoff))
            else:
                self.counts[alert.level, "delivered"] += 1
                return

    async def _once(self, alert: BalanceAlert) -> None:
        async with asyncio.timeout(self.timeout):
            if self._async:
                await self.notifier(alert)  # type: ignore[misc]
                return
            # A plain callable may block (smtplib, requests): not on the
            # loop. Past the timeout its thread is abandoned, not awaited.
            result = await asyncio.to_thread(self.notifier, alert)
            if inspect.isawaitable(result):
                await result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    # Errors of guard.notify carry safe messages; others are named only: an
    # HTTP client's message may quote a URL with a token in it.
    if getattr(exc, "safe_message", False):
        return str(exc)
    return type(exc).__name__
