"""
The fastest path of a guarded call: a warm balance kept in this process,
checked, held and settled with no await, no I/O and nothing allocated.

A `Lane` is one account of one guard whose store keeps balances in process
(`guard.stores.MemoryStore`). It says no (`enter` returns None) whenever the
general path of ``_guard.py`` has work to do: a miss, a shortage, a call from
another event loop than the guard's, or a settle that forgets the balance.
What a call that takes the lane counts and settles, and tells the hooks and
a history that want each call's end, is what the general path would have:
the two share `BalanceGuard._end` and `Hooks.tell_settled`; a call is timed
only when someone listens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

from ._balance import Balance, new_balance

if TYPE_CHECKING:
    from decimal import Decimal
    from types import TracebackType

    from ._accounts import Tracked
    from ._guard import BalanceGuard, Settle
    from .stores import Entry
    from .stores._memory import Lane as StoreLane

__all__ = ["Entered", "Lane"]

_running_loop = asyncio.get_running_loop
_monotonic = time.monotonic
_get_ident = threading.get_ident


class Lane:
    """
    One account of one guard, for guarded calls that need no I/O.

    Args:
        guard: The guard.
        tracked: The account, as the guard tracks it.
        store: The store's own lane on that account; None when the store
            has none (every call takes the general path).
    """

    __slots__ = ("_loops", "_stats", "_store", "guard", "hooks", "tracked")

    def __init__(
        self, guard: BalanceGuard, tracked: Tracked, store: StoreLane | None
    ) -> None:
        self.guard = guard
        self.tracked = tracked
        self._store = store
        # Read on every call: one attribute away rather than two.
        self._loops = guard._loops
        self.hooks = guard._hooks
        self._stats = tracked.stats

    def at_home(self) -> bool:
        """Whether this runs on the guard's event loop, which owns the state."""
        return self._loops.here()

    def enter(self, amount: Decimal, settle: Settle | None) -> Entry | None:
        """
        Check and hold *amount* without awaiting; return the entry as
        fetched, for `exit`. None: nothing held, the general path must run.
        """
        store = self._store
        loops = self._loops
        if (
            store is None
            # loops.here(), inline for asyncio's own loops
            or (
                loops.home._thread_id != _get_ident()  # type: ignore[union-attr]
                if loops.native
                else not loops.here()
            )
            or (settle or self.guard.settle_mode) == "invalidate"
        ):
            return None
        fetched = store.hold(amount)
        if fetched is not None:
            self._stats.allowed += 1
        return fetched

    def started(self) -> float:
        """When a call entered now began, if a hook wants its duration; else 0."""
        return _monotonic() if self.hooks.settled else 0.0

    def exit(
        self,
        amount: Decimal,
        fetched: Entry,
        ok: bool,
        settle: Settle | None,
        started: float = 0.0,
    ) -> bool:
        """
        Release what `enter` held and settle the balance as the call ended
        (*ok*: it spent), and tell the hooks that want it, with the time
        since *started* (`started`). False: `forget_copy` must be awaited.
        """
        guard = self.guard
        assert self._store is not None
        done = self._store.release(
            amount, guard._end(self.tracked, amount, ok, settle), fetched.fetch_id
        )
        hooks = self.hooks
        if hooks.settled:
            # After the store settled: a hook reading the balance sees it.
            hooks.tell_settled(
                self.tracked,
                amount,
                ok,
                _monotonic() - started if started else None,
            )
        return done

    def amount(self) -> Decimal:
        """The balance now, right after `enter` held an amount on it."""
        assert self._store is not None
        return self._store.balance

    def balance(self, fetched: Entry) -> Balance:
        """The balance now, right after `enter` returned *fetched*."""
        tracked = self.tracked
        provider = tracked.provider
        assert self._store is not None
        return new_balance(
            provider.name,
            self._store.balance,
            provider.currency,
            fetched.fetched_at,
            tracked.key_type == "SANDBOX",
        )

    async def forget_copy(self) -> None:
        """Delete the cache's copy of a balance `exit` forgot."""
        assert self._store is not None
        await self._store.forget_copy(self.tracked.account)

    async def leave(
        self,
        amount: Decimal,
        fetched: Entry,
        ok: bool,
        settle: Settle | None,
        started: float = 0.0,
    ) -> None:
        """
        `exit`, and what it leaves to await, from any event loop: forwarded
        to the guard's, where the account's state lives.
        """
        loops = self.guard._loops
        if loops.home is _running_loop() or loops.at_home():
            if not self.exit(amount, fetched, ok, settle, started):
                await self.forget_copy()
        else:
            # Shielded: the settle finishes there even if this caller leaves.
            await asyncio.shield(
                loops.call(self.leave(amount, fetched, ok, settle, started))
            )

    async def drop(self, amount: Decimal, fetched: Entry) -> None:
        """
        Release what `enter` held for a call that never ran, and forget the
        balance (`BalanceGuard._drop`).
        """
        assert self._store is not None
        if not self._store.release(amount, "forget", fetched.fetch_id):
            await self.forget_copy()


class Entered:
    """
    One ``async with`` of a `guard.require_balance` object that took the
    lane: what its exit settles.
    """

    __slots__ = ("_guard", "amount", "fetched", "lane", "settle", "started")

    def __init__(
        self,
        lane: Lane,
        amount: Decimal,
        fetched: Entry,
        settle: Settle | None,
        started: float,
    ) -> None:
        self._guard = lane.guard
        self.lane = lane
        self.amount = amount
        self.fetched = fetched
        self.settle = settle
        self.started = started

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lane = self.lane
        await lane.leave(
            self.amount, self.fetched, exc_type is None, self.settle, self.started
        )
