"""
Where balances and holds live.

A store answers three questions atomically for one account: is there a
usable cached balance, does it cover an amount once the running calls' holds
are taken off, and if so, hold that amount. The engine in ``_guard.py`` does
everything else (fetching, retries, policy) the same way for every store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import time
from decimal import Decimal
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

from aiocache.serializers import NullSerializer

from .errors import BalanceUnavailable

if TYPE_CHECKING:
    import asyncio

    from aiocache.base import BaseCache

    from .typing import Provider

__all__ = [
    "Account",
    "Entry",
    "Hold",
    "LocalStore",
    "Short",
    "Store",
    "UncheckedHold",
]

log = logging.getLogger("guard")


class Entry:
    """
    A cached balance. *fetch_id* tells one fetch's entry from the next.

    *exact* is false when the amount was lowered for calls that settled while
    it was fetched: it may count their spending twice, so a call it refuses
    deserves one more look.
    """

    __slots__ = ("amount", "exact", "fetch_id", "fetched_at", "fetched_mono")

    def __init__(
        self,
        amount: Decimal,
        fetch_id: str,
        fetched_at: dt.datetime,
        fetched_mono: float,
        *,
        exact: bool = True,
    ) -> None:
        self.amount = amount
        self.fetch_id = fetch_id
        self.fetched_at = fetched_at
        self.fetched_mono = fetched_mono
        self.exact = exact


class Account:
    """
    Per-account state of one guard in this process.

    *fetches* counts the balances fetched and stored. *generation* grows
    with each explicit invalidation: a fetch that started
    under an older generation is not stored. *settled* sums the amounts of
    every call settled so far: a fetch that started before some of them is
    stored less those amounts, since it may not include their spending.
    """

    __slots__ = (
        "auth_error",
        "auth_until",
        "entry",
        "fetches",
        "generation",
        "held",
        "inflight",
        "key",
        "provider",
        "settled",
    )

    def __init__(self, provider: Provider, key: str) -> None:
        self.provider = provider
        self.key = key
        self.generation = 0
        self.fetches = 0
        self.held = Decimal(0)
        self.settled = Decimal(0)
        self.entry: Entry | None = None
        self.inflight: asyncio.Task[Entry | None] | None = None
        self.auth_until = 0.0
        self.auth_error: BaseException | None = None


class Hold:
    """
    An amount set aside for one running call, against one cached entry.

    *token* identifies the hold in a shared store; local stores leave it
    empty.
    """

    __slots__ = ("account", "amount", "entry", "token")

    checked: ClassVar[bool] = True
    """False for an `UncheckedHold`."""

    def __init__(
        self,
        account: Account,
        amount: Decimal,
        entry: Entry | None,
        token: str = "",
    ) -> None:
        self.account = account
        self.amount = amount
        self.entry = entry
        self.token = token


class UncheckedHold(Hold):
    """
    Stands for a call let through under ``on_unavailable="open"``: it holds
    nothing, but settling it still invalidates the balance.
    """

    __slots__ = ()

    checked: ClassVar[bool] = False

    def __init__(self, account: Account) -> None:
        super().__init__(account, Decimal(0), None)


class Short:
    """
    A cached balance that does not cover the amount asked for.
    """

    __slots__ = ("available", "entry")

    def __init__(self, entry: Entry, available: Decimal) -> None:
        self.entry = entry
        self.available = available


class Store(Protocol):
    """
    What the engine needs from a balance store.
    """

    async def read(self, account: Account) -> Entry | None:
        """Return the usable cached entry, or None."""

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        """Hold *amount* if the cached balance covers it; None on a miss."""

    async def begin_fetch(self, account: Account) -> object:
        """
        Return a token that `put` checks to drop a fetch that raced, or the
        `Entry` another process fetched meanwhile (then nothing is fetched).
        """

    async def abort_fetch(self, account: Account, token: object) -> None:
        """Give up the fetch *token* began (it failed)."""

    async def put(
        self, account: Account, amount: Decimal, token: object
    ) -> Entry | None:
        """Cache a fetched balance, unless invalidated since *token*."""

    async def release(self, hold: Hold, *, debit: bool) -> None:
        """
        Drop *hold*; debit the cache on success or invalidate it.

        Must not leave the hold behind if cancelled while it awaits.
        """

    async def invalidate(self, account: Account) -> None:
        """Forget the cached balance; fetches in flight won't store theirs."""

    async def close(self) -> None:
        """Release connections."""


class LocalStore:
    """
    Balances in an aiocache cache, holds in this process.

    The entry this store last cached for an account is authoritative: the
    cache tells whether it is still there (it may have expired or been
    cleared), never what it holds. With a `SimpleMemoryCache` (or any cache
    with the `NullSerializer`) the entry itself is stored and a warm guarded
    call costs one cache read. Other backends store a copy tagged with this
    store's origin, so that an entry another process wrote is never read as
    ours: holds are per process, only the Redis store shares them.
    """

    def __init__(self, cache: BaseCache, *, ttl: float) -> None:
        self.cache = cache
        self.ttl = ttl
        self._by_reference = isinstance(cache.serializer, NullSerializer)
        self._origin = f"{os.getpid()}-{id(self):x}"
        self._ids = itertools.count()

    async def _get(self, account: Account) -> Entry | None:
        current = account.entry
        if current is None:
            return None
        try:
            # timeout=None: aiocache's per-call wait_for costs more than a read.
            raw = await self.cache.get(account.key, timeout=None)
        except Exception as exc:
            raise _unavailable(account, exc) from exc
        if account.entry is not current:
            return None  # settled or refetched while the cache answered
        if self._by_reference:
            if raw is not current:
                return None
        elif not isinstance(raw, dict) or raw.get("fetch_id") != current.fetch_id:
            return None
        if time.monotonic() - current.fetched_mono > self.ttl:
            return None
        return current

    def _encode(self, entry: Entry) -> dict[str, str | float]:
        return {
            "origin": self._origin,
            "amount": str(entry.amount),
            "fetch_id": entry.fetch_id,
            "fetched_at": entry.fetched_at.isoformat(),
        }

    async def read(self, account: Account) -> Entry | None:
        return await self._get(account)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        entry = await self._get(account)
        if entry is None:
            return None
        available = entry.amount - account.held
        if available < amount:
            return Short(entry, available)
        # No await between the read and this line: the check and the hold are
        # one step for every other task on this loop.
        account.held += amount
        return Hold(account, amount, entry)

    async def begin_fetch(self, account: Account) -> object:
        return (account.generation, account.settled)

    async def abort_fetch(self, account: Account, token: object) -> None:
        pass

    async def put(
        self, account: Account, amount: Decimal, token: object
    ) -> Entry | None:
        generation, settled = cast("tuple[int, Decimal]", token)
        if generation != account.generation:
            return None
        # Calls settled while this fetch ran may have spent after the
        # provider answered: count them as spent (errs low, never high).
        spent_meanwhile = account.settled - settled
        entry = Entry(
            amount - spent_meanwhile,
            f"{self._origin}-{next(self._ids)}",
            dt.datetime.now(dt.UTC),
            time.monotonic(),
            exact=not spent_meanwhile,
        )
        account.entry = entry
        await self._write(account, entry, self.ttl)
        return entry

    async def _write(self, account: Account, entry: Entry, ttl: float) -> None:
        value = entry if self._by_reference else self._encode(entry)
        try:
            await self.cache.set(account.key, value, ttl=ttl, timeout=None)
        except Exception as exc:
            if account.entry is entry:
                account.entry = None
            raise _unavailable(account, exc) from exc

    async def release(self, hold: Hold, *, debit: bool) -> None:
        account = hold.account
        entry = hold.entry
        # All of the bookkeeping happens before the first await, so a
        # cancellation can't leave the hold behind.
        account.held -= hold.amount
        account.settled += hold.amount
        # Debit only the entry the hold was made against: an entry fetched
        # while the call ran may or may not include this spend.
        if debit and entry is not None and entry is account.entry:
            entry.amount -= hold.amount
            if self._by_reference:
                return
            remaining = self.ttl - (time.monotonic() - entry.fetched_mono)
            if remaining > 0:
                with contextlib.suppress(BalanceUnavailable):
                    await self._write(account, entry, remaining)
                return
        account.entry = None
        await self._delete(account)

    async def _delete(self, account: Account) -> None:
        try:
            await self.cache.delete(account.key, timeout=None)
        except Exception as exc:  # the local entry is gone already
            log.warning(
                "%s: could not delete a cached balance: %s",
                account.provider.name,
                type(exc).__name__,
            )

    async def invalidate(self, account: Account) -> None:
        account.generation += 1
        account.entry = None
        await self._delete(account)

    async def close(self) -> None:
        await self.cache.close()


def _unavailable(account: Account, exc: BaseException) -> BalanceUnavailable:
    return BalanceUnavailable(
        f"cache unavailable: {type(exc).__name__}", provider=account.provider.name
    )
