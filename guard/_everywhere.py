"""
What the running calls of every process sharing a guard's store hold, for
the operating views (Prometheus, OpenTelemetry, ``watch``).

A shared store (`guard.stores.RedisStore`, or a `guard.stores.FallbackStore`
over one) tells it with an async ``held_everywhere``, a read of Redis. The
views read synchronously, perhaps from another thread (a scrape, an
OpenTelemetry reader), while the store belongs to the guard's event loop;
so the figures are read there and kept here:

- `refresh` reads them (the ``/metrics`` handler and ``watch`` await it
  before they show anything);
- `held_everywhere` returns them: called from another thread, it first
  waits (at most `LIMIT`) for a read on the guard's loop; on that loop,
  where it can't wait, it returns those of the last read and starts one
  for the next time.

An account Redis did not answer for (it is down), or whose figure is older
than `MAX_AGE`, has none: a view shows nothing rather than 0 or an old
figure.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING

from .errors import BalanceUnavailable

if TYPE_CHECKING:
    from decimal import Decimal

    from ._accounts import Tracked
    from ._guard import BalanceGuard

__all__ = ["LIMIT", "MAX_AGE", "held_everywhere", "refresh"]

LIMIT = 1.0
"""Seconds a read may take: a scrape must not hang on a Redis that is down."""

MAX_AGE = 60.0
"""Seconds a figure is shown for (a scrape interval, at most a minute)."""

FRESH = 1.0
"""Seconds a read serves: the gauges of one collection share it."""

Key = tuple[str, str]  # provider name, account digest


class _Figures:
    __slots__ = ("amounts", "read_at", "task")

    def __init__(self) -> None:
        # Replaced whole by each read: other threads read it meanwhile.
        self.amounts: dict[Key, tuple[Decimal, float]] = {}
        self.read_at = -FRESH
        self.task: asyncio.Task[None] | None = None


_FIGURES: weakref.WeakKeyDictionary[BalanceGuard, _Figures] = (
    weakref.WeakKeyDictionary()
)


def _shared(guard: BalanceGuard) -> bool:
    return callable(getattr(guard.store, "held_everywhere", None))


def _figures(guard: BalanceGuard) -> _Figures:
    figures = _FIGURES.get(guard)
    if figures is None:
        figures = _FIGURES[guard] = _Figures()
    return figures


async def refresh(guard: BalanceGuard) -> None:
    """
    Read what every process holds on each of *guard*'s accounts, on its
    event loop; nothing for a store of this process.
    """
    if not _shared(guard) or guard.closed:
        return
    loops = guard._loops
    if not loops.at_home():
        await loops.call(refresh(guard))
        return
    figures = _figures(guard)
    read = guard.store.held_everywhere  # type: ignore[attr-defined]

    async def one(tracked: Tracked) -> tuple[Key, Decimal | None]:
        key = (tracked.provider.name, tracked.digest)
        try:
            async with asyncio.timeout(LIMIT):
                return key, await read(tracked.account)
        except (BalanceUnavailable, TimeoutError):
            return key, None

    found = await asyncio.gather(*(one(tracked) for tracked in guard._accounts))
    now = time.monotonic()
    amounts = dict(figures.amounts)
    for key, amount in found:
        if amount is None:  # Redis down: no figure, not the last one
            amounts.pop(key, None)
        else:
            amounts[key] = (amount, now)
    figures.amounts = amounts
    figures.read_at = now


def held_everywhere(guard: BalanceGuard) -> dict[Key, Decimal] | None:
    """
    Return what every process holds, by ``(provider, account digest)``, as
    read at most `MAX_AGE` ago (an account without a figure is missing);
    None for a store of this process. From any thread.
    """
    if not _shared(guard):
        return None
    figures = _figures(guard)
    if time.monotonic() - figures.read_at > FRESH:
        _read(guard, figures)
    now = time.monotonic()
    return {
        key: amount
        for key, (amount, at) in list(figures.amounts.items())
        if now - at <= MAX_AGE
    }


def _read(guard: BalanceGuard, figures: _Figures) -> None:
    home = guard._loops.home
    if home is None or home.is_closed() or not home.is_running():
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is home:
        # Can't wait for the loop from inside it: read for the next time.
        if figures.task is None or figures.task.done():
            figures.task = home.create_task(refresh(guard))
        return
    future = asyncio.run_coroutine_threadsafe(refresh(guard), home)
    try:
        future.result(LIMIT + 0.5)
    except Exception:  # pragma: no cover - each read is bounded by LIMIT
        # The loop is stuck or stopping: show what is fresh enough.
        future.cancel()
