"""
Balances in an aiocache cache, holds in this process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._logs import digest, fields
from .._money import MONEY, ZERO
from ..errors import BalanceUnavailable
from ._values import Account, Entry, Hold, Outcome, Short, Ticket

if TYPE_CHECKING:
    from aiocache.base import BaseCache

__all__ = ["MemoryStore"]

log = logging.getLogger("guard")

# Frozen attrs values built on the guarded call's path: set through their
# slots, which costs half of going through their __init__.
_new = object.__new__
_HOLD_SLOTS = tuple(
    Hold.__dict__[name].__set__ for name in ("account", "amount", "entry", "token")
)
_ENTRY_SLOTS = tuple(
    Entry.__dict__[name].__set__
    for name in ("amount", "fetch_id", "fetched_at", "monotonic", "exact")
)


def _hold(account: Account, amount: Decimal, entry: Entry) -> Hold:
    hold = _new(Hold)
    set_account, set_amount, set_entry, set_token = _HOLD_SLOTS
    set_account(hold, account)
    set_amount(hold, amount)
    set_entry(hold, entry)
    set_token(hold, "")
    return hold


def _entry(
    amount: Decimal,
    fetch_id: str,
    fetched_at: dt.datetime,
    monotonic: float,
    exact: bool,
) -> Entry:
    entry = _new(Entry)
    set_amount, set_fetch_id, set_fetched_at, set_monotonic, set_exact = _ENTRY_SLOTS
    set_amount(entry, amount)
    set_fetch_id(entry, fetch_id)
    set_fetched_at(entry, fetched_at)
    set_monotonic(entry, monotonic)
    set_exact(entry, exact)
    return entry


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
    Balances and holds in this process: for one process, or several that
    each guard their own accounts.

    A check, hold, release or debit reads and writes plain in-process state,
    with no I/O. If you give it an aiocache cache, each balance guard fetches
    is also written there (as ``{"amount", "fetched_at", "fetch_id"}``, amount
    as a decimal string) and deleted when invalidated, for other code to
    read; the store never reads it back, since a value another process wrote
    knows nothing of this process's holds.

    Args:
        cache: An aiocache cache to copy fetched balances to; closed with the
            store. None: none.
        ttl: Seconds a fetched balance is trusted.
        timeout: Seconds one cache operation may take; a write that fails or
            times out fails the fetch with `guard.BalanceUnavailable`.
    """

    def __init__(
        self,
        cache: BaseCache | None = None,
        *,
        ttl: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self.cache = cache
        self.ttl = ttl
        self.timeout = timeout
        self._states: dict[str, _State] = {}
        self._origin = f"{os.getpid()}-{id(self):x}-"
        self._ids = itertools.count()

    def __repr__(self) -> str:
        cache = "none" if self.cache is None else type(self.cache).__name__
        return f"<MemoryStore ttl={self.ttl:g} cache={cache}>"

    def _state(self, account: Account) -> _State:
        state = self._states.get(account.key)
        if state is None:
            state = self._states[account.key] = _State()
        return state

    def _current(self, state: _State) -> Entry | None:
        entry = state.entry
        if entry is None or time.monotonic() - entry.monotonic > self.ttl:
            return None
        return entry

    async def read(self, account: Account) -> Entry | None:
        return self._current(self._state(account))

    def held(self, account: Account) -> Decimal:
        state = self._states.get(account.key)
        return ZERO if state is None else state.held

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
        state = self._state(account)
        return Ticket("", f"{state.generation}/{state.settled}")

    async def ticket(self, account: Account) -> Ticket:
        # Lock-free: put() with it drops the value if the balance was
        # invalidated since, and subtracts what settled since.
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
        if self.cache is not None:
            await self._copy(account, state, entry)
        return entry

    async def _copy(self, account: Account, state: _State, entry: Entry) -> None:
        value = {
            "amount": str(entry.amount),
            "fetched_at": entry.fetched_at.isoformat(),
            "fetch_id": entry.fetch_id,
        }
        try:
            await self._cache_call("set", account.key, value, ttl=self.ttl)
        except Exception as exc:
            if state.entry is entry:
                state.entry = None
            raise _unavailable(account, exc) from exc

    async def _cache_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        assert self.cache is not None
        # Bounded here, whatever the backend does with its own timeout.
        async with asyncio.timeout(self.timeout):
            return await getattr(self.cache, method)(*args, timeout=None, **kwargs)

    def hold_now(self, account: Account, amount: Decimal) -> Hold | Short | None:
        """
        `try_hold` without I/O: what a guarded call uses on its fast path.
        """
        state = self._states.get(account.key)
        if state is None:
            return None
        entry = state.entry
        if entry is None or time.monotonic() - entry.monotonic > self.ttl:
            return None
        available = MONEY.subtract(entry.amount, state.held)
        if available < amount:
            return Short(entry, available)
        state.held = MONEY.add(state.held, amount)
        return _hold(account, amount, entry)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        # No await between the check and the hold: they are one step for
        # every other task on this loop.
        return self.hold_now(account, amount)

    def release_now(self, hold: Hold, outcome: Outcome) -> bool:
        """
        `release` without I/O, when it needs none (no cache to delete a
        copy from); False when `release` must be awaited instead.
        """
        if self.cache is not None and outcome == "forget":
            return False
        self._release(hold, outcome)
        return True

    async def release(self, hold: Hold, *, outcome: Outcome) -> None:
        # All of the bookkeeping happens before the first await, so a
        # cancellation can't leave the hold behind.
        if not self._release(hold, outcome) and self.cache is not None:
            await self._delete(hold.account)

    def _release(self, hold: Hold, outcome: Outcome) -> bool:
        """
        Drop *hold* and settle the balance; tell whether one is still kept.
        """
        state = self._state(hold.account)
        state.held = MONEY.subtract(state.held, hold.amount)
        state.settled = MONEY.add(state.settled, hold.amount)
        current = state.entry
        if current is not None and (
            outcome == "spent" or (outcome == "debit" and hold.entry is current)
        ):
            # "debit" only the entry the hold was made against: one fetched
            # while the call ran may or may not include this spend. "spent"
            # takes it off whatever is there, which errs low.
            state.entry = _entry(
                MONEY.subtract(current.amount, hold.amount),
                current.fetch_id,
                current.fetched_at,
                current.monotonic,
                current.exact and outcome == "debit",
            )
            return True
        state.entry = None
        return False

    async def _delete(self, account: Account) -> None:
        try:
            await self._cache_call("delete", account.key)
        except Exception as exc:  # the entry is gone here already
            log.warning(
                "%s: could not delete a cached balance: %s",
                account.provider,
                type(exc).__name__,
                extra=fields(
                    "cache_delete_failed",
                    provider=account.provider,
                    account=digest(account.key),
                    error=type(exc).__name__,
                ),
            )

    async def invalidate(self, account: Account) -> None:
        state = self._state(account)
        state.generation += 1
        state.entry = None
        if self.cache is not None:
            await self._delete(account)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()


def _unavailable(account: Account, exc: BaseException) -> BalanceUnavailable:
    reason = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
    return BalanceUnavailable(f"cache unavailable: {reason}", provider=account.provider)
