"""
Balances in an aiocache cache, holds in this process.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import time
from decimal import Decimal
from typing import TYPE_CHECKING

from aiocache import SimpleMemoryCache

from .._money import MONEY, ZERO
from ..errors import BalanceUnavailable
from ._values import Account, Entry, Hold, Short, Ticket

if TYPE_CHECKING:
    from aiocache.base import BaseCache

__all__ = ["MemoryStore"]

log = logging.getLogger("guard")


class _State:
    """
    One account's state in this store.

    *generation* grows with each invalidation: a fetch that began under an
    older one is not stored. *settled* sums the amounts of every call
    settled so far: a fetch that began before some of them is stored less
    those amounts, since it may not include their spending.
    """

    __slots__ = ("entry", "generation", "held", "settled")

    def __init__(self) -> None:
        self.entry: Entry | None = None
        self.held = ZERO
        self.settled = ZERO
        self.generation = 0


class MemoryStore:
    """
    Balances in an aiocache cache, holds in this process: for one process,
    or several that each guard their own accounts.

    The entry this store last cached for an account is authoritative: the
    cache tells whether it is still there (it may have expired or been
    cleared), never what it holds, so an entry another process wrote is
    never read as this one's. Only the fetch id is written to the cache.

    Args:
        cache: Any aiocache cache; default a ``SimpleMemoryCache``. Closed
            with the store.
        ttl: Seconds a fetched balance is trusted.
        timeout: Seconds one cache operation may take before the call is
            failed with `guard.BalanceUnavailable`. A ``SimpleMemoryCache``
            answers without I/O, so its operations are not timed.
    """

    def __init__(
        self,
        cache: BaseCache | None = None,
        *,
        ttl: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self.cache: BaseCache = SimpleMemoryCache() if cache is None else cache
        self.ttl = ttl
        # aiocache's own wait_for costs more than a memory read, and a
        # memory read can't hang; every other backend's call is bounded.
        self._timeout = None if type(self.cache) is SimpleMemoryCache else timeout
        self._states: dict[str, _State] = {}
        self._origin = f"{os.getpid()}-{id(self):x}-"
        self._ids = itertools.count()

    def __repr__(self) -> str:
        return f"<MemoryStore ttl={self.ttl:g} cache={type(self.cache).__name__}>"

    def _state(self, account: Account) -> _State:
        state = self._states.get(account.key)
        if state is None:
            state = self._states[account.key] = _State()
        return state

    async def _get(self, account: Account, state: _State) -> Entry | None:
        current = state.entry
        if current is None:
            return None
        try:
            raw = await self.cache.get(account.key, timeout=self._timeout)
        except Exception as exc:
            raise _unavailable(account, exc) from exc
        # A debit while the cache answered replaced the entry, keeping its
        # fetch id: use the debited one. Another id was refetched meanwhile.
        latest = state.entry
        if latest is None or latest.fetch_id != current.fetch_id:
            return None
        if raw != latest.fetch_id:
            return None  # expired, cleared, or another writer's
        if time.monotonic() - latest.monotonic > self.ttl:
            return None
        return latest

    async def read(self, account: Account) -> Entry | None:
        return await self._get(account, self._state(account))

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        state = self._state(account)
        entry = await self._get(account, state)
        if entry is None:
            return None
        available = MONEY.subtract(entry.amount, state.held)
        if available < amount:
            return Short(entry, available)
        # No await between the read and this line: the check and the hold are
        # one step for every other task on this loop.
        state.held = MONEY.add(state.held, amount)
        return Hold(account, amount, entry)

    def held(self, account: Account) -> Decimal:
        state = self._states.get(account.key)
        return ZERO if state is None else state.held

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
        state = self._state(account)
        return Ticket("", f"{state.generation}/{state.settled}")

    async def abort_fetch(self, account: Account, ticket: Ticket) -> None:
        pass

    async def put(
        self, account: Account, amount: Decimal, ticket: Ticket
    ) -> Entry | None:
        state = self._state(account)
        generation, _, settled = ticket.generation.partition("/")
        if int(generation) != state.generation:
            return None
        # Calls settled while this fetch ran may have spent after the
        # provider answered: count them as spent (errs low, never high).
        spent_meanwhile = MONEY.subtract(state.settled, Decimal(settled))
        entry = Entry(
            MONEY.subtract(amount, spent_meanwhile),
            f"{self._origin}{next(self._ids)}",
            dt.datetime.now(dt.UTC),
            time.monotonic(),
            exact=not spent_meanwhile,
        )
        state.entry = entry
        await self._write(account, state, entry, self.ttl)
        return entry

    async def _write(
        self, account: Account, state: _State, entry: Entry, ttl: float
    ) -> None:
        try:
            await self.cache.set(
                account.key, entry.fetch_id, ttl=ttl, timeout=self._timeout
            )
        except Exception as exc:
            if state.entry is entry:
                state.entry = None
            raise _unavailable(account, exc) from exc

    async def release(self, hold: Hold, *, debit: bool) -> None:
        state = self._state(hold.account)
        entry = hold.entry
        # All of the bookkeeping happens before the first await, so a
        # cancellation can't leave the hold behind.
        state.held = MONEY.subtract(state.held, hold.amount)
        state.settled = MONEY.add(state.settled, hold.amount)
        # Debit only the entry the hold was made against: an entry fetched
        # while the call ran may or may not include this spend. The cache
        # keeps the fetch id, which a debit doesn't change.
        if debit and entry is not None and entry is state.entry:
            state.entry = Entry(
                MONEY.subtract(entry.amount, hold.amount),
                entry.fetch_id,
                entry.fetched_at,
                entry.monotonic,
                exact=entry.exact,
            )
            return
        state.entry = None
        await self._delete(hold.account)

    async def _delete(self, account: Account) -> None:
        try:
            await self.cache.delete(account.key, timeout=self._timeout)
        except Exception as exc:  # the entry is gone here already
            log.warning(
                "%s: could not delete a cached balance: %s",
                account.provider,
                type(exc).__name__,
            )

    async def invalidate(self, account: Account) -> None:
        state = self._state(account)
        state.generation += 1
        state.entry = None
        await self._delete(account)

    async def close(self) -> None:
        await self.cache.close()


def _unavailable(account: Account, exc: BaseException) -> BalanceUnavailable:
    return BalanceUnavailable(
        f"cache unavailable: {type(exc).__name__}", provider=account.provider
    )
