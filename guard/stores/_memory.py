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
from .._money import ZERO, add, subtract
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


class Lane:
    """
    One account's state in a `MemoryStore`, also held and released on
    directly by a guarded call's fastest path (``guard/_lane.py``).

    While a fetched balance is kept (*fetched*), *balance* is it less what
    calls settled since took off, and *available* is *balance* less the
    holds: a hold changes only *available*, a settle that spends only
    *balance*, so a call costs two subtractions and allocates nothing. What
    is held and what has settled follow from them (`held`, `settled`); they
    are kept in *held_off* and *settled_off* only while no balance is (any
    settle that forgets drops *fetched*). The `Entry` callers see is made
    when asked for and kept in *view* until the next change.

    *generation* grows with each invalidation: a fetch that began under an
    older one is not stored. What has settled sums the amounts of every
    call settled so far: a fetch that began before some of them is stored
    less those amounts, since it may not include their spending.
    """

    __slots__ = (
        "available",
        "balance",
        "base",
        "exact",
        "fetched",
        "generation",
        "held_off",
        "settled_off",
        "store",
        "view",
    )

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.fetched: Entry | None = None
        self.balance = ZERO
        self.available = ZERO
        self.base = ZERO  # what had settled when *fetched* was stored
        self.exact = True  # False once a "spent" settle took an amount off
        self.view: Entry | None = None
        self.held_off = ZERO
        self.settled_off = ZERO
        self.generation = 0

    def held(self) -> Decimal:
        """What running calls hold."""
        if self.fetched is None:
            return self.held_off
        return subtract(self.balance, self.available)

    def settled(self) -> Decimal:
        """The sum of the amounts of every call settled so far."""
        fetched = self.fetched
        if fetched is None:
            return self.settled_off
        return add(self.base, subtract(fetched.amount, self.balance))

    def keep(self, entry: Entry) -> None:
        """Keep *entry*, just fetched, as the balance."""
        held, self.base = self.held(), self.settled()
        self.fetched = self.view = entry
        self.balance = entry.amount
        self.available = subtract(entry.amount, held)
        self.exact = True

    def forget(self) -> None:
        """Drop the balance kept, if any."""
        if self.fetched is not None:
            self.held_off, self.settled_off = self.held(), self.settled()
            self.fetched = self.view = None

    def entry(self) -> Entry | None:
        """The balance now, as an `Entry`; None: none kept."""
        view = self.view
        if view is None:
            fetched = self.fetched
            if fetched is None:
                return None
            view = self.view = _entry(
                self.balance,
                fetched.fetch_id,
                fetched.fetched_at,
                fetched.monotonic,
                fetched.exact and self.exact,
            )
        return view

    def hold(self, amount: Decimal) -> Entry | None:
        """
        Hold *amount* if a current balance covers it, and return the entry
        as fetched; None (nothing held) on a miss or a shortage.
        """
        fetched = self.fetched
        if (
            fetched is None
            or time.monotonic() - fetched.monotonic > self.store.ttl
            or self.available < amount
        ):
            return None
        self.available = subtract(self.available, amount)
        return fetched

    def release(self, amount: Decimal, outcome: Outcome, fetch_id: str | None) -> bool:
        """
        Drop a hold of *amount*, made against the fetch *fetch_id*, and
        settle the balance. False: it was forgotten, and the store's cache
        has a copy left to delete (`forget_copy`).
        """
        fetched = self.fetched
        if fetched is not None and (
            outcome == "spent" or (outcome == "debit" and fetch_id == fetched.fetch_id)
        ):
            # "debit" only from the fetch the hold was checked against: one
            # fetched while the call ran may or may not include this spend.
            # "spent" takes it off whatever is there, which errs low. The
            # balance and the holds both drop by the amount: available is
            # unchanged.
            self.balance = subtract(self.balance, amount)
            if outcome == "spent":
                self.exact = False
            self.view = None
            return True
        self.forget()
        self.held_off = subtract(self.held_off, amount)
        self.settled_off = add(self.settled_off, amount)
        return self.store.cache is None

    async def forget_copy(self, account: Account) -> None:
        """Delete the cache's copy of *account*'s balance."""
        await self.store._delete(account)


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
        self._states: dict[str, Lane] = {}
        self._origin = f"{os.getpid()}-{id(self):x}-"
        self._ids = itertools.count()

    def __repr__(self) -> str:
        cache = "none" if self.cache is None else type(self.cache).__name__
        return f"<MemoryStore ttl={self.ttl:g} cache={cache}>"

    def _state(self, account: Account) -> Lane:
        state = self._states.get(account.key)
        if state is None:
            state = self._states[account.key] = Lane(self)
        return state

    def _current(self, state: Lane) -> Entry | None:
        fetched = state.fetched
        if fetched is None or time.monotonic() - fetched.monotonic > self.ttl:
            return None
        return state.entry()

    def peek(self, account: Account) -> Entry | None:
        """The balance kept for *account*, however old; None: none."""
        state = self._states.get(account.key)
        return None if state is None else state.entry()

    async def read(self, account: Account) -> Entry | None:
        return self._current(self._state(account))

    def held(self, account: Account) -> Decimal:
        state = self._states.get(account.key)
        return ZERO if state is None else state.held()

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
        state = self._state(account)
        return Ticket("", f"{state.generation}/{state.settled()}")

    async def ticket(self, account: Account) -> Ticket:
        # Lock-free: put() with it drops the value if the balance was
        # invalidated since, and subtracts what settled since.
        state = self._state(account)
        return Ticket("", f"{state.generation}/{state.settled()}")

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
        spent_meanwhile = subtract(state.settled(), Decimal(settled))
        entry = Entry(
            subtract(amount, spent_meanwhile),
            f"{self._origin}{next(self._ids)}",
            dt.datetime.now(dt.UTC),
            time.monotonic(),
            exact=not spent_meanwhile,
        )
        state.keep(entry)
        if self.cache is not None:
            await self._copy(account, state, entry)
        return entry

    async def _copy(self, account: Account, state: Lane, entry: Entry) -> None:
        value = {
            "amount": str(entry.amount),
            "fetched_at": entry.fetched_at.isoformat(),
            "fetch_id": entry.fetch_id,
        }
        try:
            await self._cache_call("set", account.key, value, ttl=self.ttl)
        except Exception as exc:
            if state.fetched is entry:
                state.forget()
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
        if state.hold(amount) is not None:
            entry = state.entry()
            assert entry is not None
            return _hold(account, amount, entry)
        entry = self._current(state)
        return None if entry is None else Short(entry, state.available)

    def _lane(self, account: Account) -> Lane:
        """
        *account*'s state, to hold and release on without I/O or
        allocation: what a guarded call uses on its fastest path.
        """
        return self._state(account)

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
        if not self._release(hold, outcome):
            await self._delete(hold.account)

    def _release(self, hold: Hold, outcome: Outcome) -> bool:
        """
        Drop *hold* and settle the balance. False: a cache copy is left to
        delete.
        """
        entry = hold.entry
        return self._state(hold.account).release(
            hold.amount, outcome, None if entry is None else entry.fetch_id
        )

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
        state.forget()
        if self.cache is not None:
            await self._delete(account)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()


def _unavailable(account: Account, exc: BaseException) -> BalanceUnavailable:
    reason = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
    return BalanceUnavailable(f"cache unavailable: {reason}", provider=account.provider)
