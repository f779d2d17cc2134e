"""
Where balances and holds live.

A store answers three questions atomically for one account: is there a
usable cached balance, does it cover an amount once the running calls' holds
are taken off, and if so, hold that amount. The engine in ``_guard.py`` does
everything else (fetching, retries, policy) the same way for every store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from aiocache.serializers import NullSerializer

if TYPE_CHECKING:
    from aiocache.base import BaseCache

    from .typing import Provider

__all__ = ["Account", "Entry", "Hold", "LocalStore", "Short", "Store"]


class Entry:
    """
    A cached balance. *fetch_id* tells one fetch's entry from the next.
    """

    __slots__ = ("amount", "fetch_id", "fetched_at", "fetched_mono")

    def __init__(
        self,
        amount: Decimal,
        fetch_id: str,
        fetched_at: dt.datetime,
        fetched_mono: float,
    ) -> None:
        self.amount = amount
        self.fetch_id = fetch_id
        self.fetched_at = fetched_at
        self.fetched_mono = fetched_mono


class Account:
    """
    Per-account state of one guard in this process.

    *generation* grows with each invalidation: a fetch that started under an
    older generation must not be stored, and an entry from one is stale.
    """

    __slots__ = (
        "auth_error",
        "auth_until",
        "entry",
        "generation",
        "held",
        "inflight",
        "key",
        "lock",
        "provider",
    )

    def __init__(self, provider: Provider, key: str) -> None:
        self.provider = provider
        self.key = key
        self.generation = 0
        self.held = Decimal(0)
        self.entry: Entry | None = None
        self.inflight: asyncio.Task[Entry | None] | None = None
        self.auth_until = 0.0
        self.auth_error: BaseException | None = None
        self.lock: asyncio.Lock | None = None


class Hold:
    """
    An amount set aside for one running call, against one cached entry.

    *token* identifies the hold in a shared store; local stores leave it
    empty.
    """

    __slots__ = ("account", "amount", "entry", "token")

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

    With a `SimpleMemoryCache` (or any cache with the `NullSerializer`)
    entries are kept by reference and debited in place: a warm guarded call
    costs one cache read. Other backends get plain dicts, tagged with this
    store's origin so that an entry another process wrote is never read as
    ours (holds are per process; only the Redis store shares them).
    """

    def __init__(self, cache: BaseCache, *, ttl: float) -> None:
        self.cache = cache
        self.ttl = ttl
        self._by_reference = isinstance(cache.serializer, NullSerializer)
        self._origin = f"{os.getpid()}-{id(self):x}"
        self._ids = itertools.count()

    async def _get(self, account: Account) -> Entry | None:
        # timeout=None: aiocache's per-call wait_for costs more than the read.
        raw = await self.cache.get(account.key, timeout=None)
        if raw is None:
            return None
        if self._by_reference:
            entry: Entry = raw
        else:
            entry_or_none = self._decode(raw)
            if entry_or_none is None:
                return None
            entry = entry_or_none
        current = account.entry
        if current is None or entry.fetch_id != current.fetch_id:
            return None
        if time.monotonic() - entry.fetched_mono > self.ttl:
            return None
        return entry

    def _decode(self, raw: Any) -> Entry | None:
        try:
            if raw["origin"] != self._origin:
                return None
            return Entry(
                Decimal(raw["amount"]),
                raw["fetch_id"],
                dt.datetime.fromisoformat(raw["fetched_at"]),
                float(raw["mono"]),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError):
            return None

    def _encode(self, entry: Entry) -> dict[str, str | float]:
        return {
            "origin": self._origin,
            "amount": str(entry.amount),
            "fetch_id": entry.fetch_id,
            "fetched_at": entry.fetched_at.isoformat(),
            "mono": entry.fetched_mono,
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
        return account.generation

    async def abort_fetch(self, account: Account, token: object) -> None:
        pass

    async def put(
        self, account: Account, amount: Decimal, token: object
    ) -> Entry | None:
        if token != account.generation:
            return None
        entry = Entry(
            amount,
            f"{self._origin}-{next(self._ids)}",
            dt.datetime.now(dt.UTC),
            time.monotonic(),
        )
        account.entry = entry
        value = entry if self._by_reference else self._encode(entry)
        await self.cache.set(account.key, value, ttl=self.ttl, timeout=None)
        return entry

    async def release(self, hold: Hold, *, debit: bool) -> None:
        account = hold.account
        entry = hold.entry
        current = account.entry
        # Debit only the entry the hold was made against: an entry fetched
        # while the call ran may or may not include this spend.
        if (
            debit
            and entry is not None
            and current is not None
            and (current.fetch_id == entry.fetch_id)
        ):
            if self._by_reference:
                entry.amount -= hold.amount
                account.held -= hold.amount
                return
            try:
                if await self._debit_serialized(hold):
                    return
            except BaseException:
                # Cancelled or failed mid-write: forget the balance, free the hold.
                account.generation += 1
                account.entry = None
                account.held -= hold.amount
                raise
        account.held -= hold.amount
        await self.invalidate(account)

    async def _debit_serialized(self, hold: Hold) -> bool:
        account = hold.account
        if account.lock is None:
            account.lock = asyncio.Lock()
        async with account.lock:
            entry = await self._get(account)
            if entry is None or hold.entry is None:
                return False
            if entry.fetch_id != hold.entry.fetch_id:
                return False
            entry.amount -= hold.amount
            remaining = self.ttl - (time.monotonic() - entry.fetched_mono)
            if remaining <= 0:
                return False
            account.entry = entry
            await self.cache.set(
                account.key, self._encode(entry), ttl=remaining, timeout=None
            )
            # Release only once the lower balance is visible to other tasks.
            account.held -= hold.amount
            return True

    async def invalidate(self, account: Account) -> None:
        account.generation += 1
        account.entry = None
        await self.cache.delete(account.key, timeout=None)

    async def close(self) -> None:
        await self.cache.close()
