"""
A shared store with a stand-in in this process for while it is down.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .._money import MONEY
from ..errors import BalanceUnavailable
from ._memory import MemoryStore
from ._values import Account, Entry, Hold, Outcome, Short, Ticket

if TYPE_CHECKING:
    from collections.abc import Callable
    from decimal import Decimal

    from ..typing import Store

__all__ = ["FallbackStore"]

log = logging.getLogger("guard")


class FallbackStore:
    """
    A shared store (such as a `guard.stores.RedisStore`) that, while it
    can't be reached, is stood in for by a store of this process: each
    process then checks the provider's balance itself and holds in process,
    rather than letting calls through unchecked.

    What that leaves open: the calls of other processes. Each process
    counts its own holds and spends against the balance it fetched, and
    learns of the others' spending only from the provider (a fetch after a
    settle, at most once per ``refresh_interval`` under
    ``settle="refresh"``); so, while the shared store is down, calls in
    flight in other processes, and what they spent since this process last
    fetched, are not counted.

    The shared store is tried again *retry* seconds after it failed (one
    call then pays its timeout if it is still down). The first failure of
    an outage is logged as a WARNING and reported to *on_down*; the return
    as an INFO line. Holds and fetches begun in one store are settled in
    that store.

    Args:
        shared: The store shared between processes.
        local: The stand-in (default: a `MemoryStore` with the shared
            store's ttl).
        retry: Seconds before the shared store is tried again.
        on_down: Called with the account and the error, once per outage.
    """

    def __init__(
        self,
        shared: Store,
        *,
        local: Store | None = None,
        retry: float = 1.0,
        on_down: Callable[[Account, BalanceUnavailable], None] | None = None,
    ) -> None:
        self.shared = shared
        self.local: Store = local or MemoryStore(ttl=shared.ttl)
        self.ttl = shared.ttl
        self.retry = retry
        self.on_down = on_down
        self.outages = 0
        """How many times the shared store went down."""
        self.down = False
        """Whether the shared store is down (the stand-in is in use)."""
        self._retry_at = 0.0
        # Holds and tickets the stand-in made, by id(): settled there.
        self._local: dict[int, Hold | Ticket] = {}
        # Accounts fetched in the stand-in during this outage: a balance it
        # kept from an earlier one is stale.
        self._fresh: set[str] = set()

    def __repr__(self) -> str:
        return f"<FallbackStore {self.shared!r} down={self.down}>"

    def _try_shared(self) -> bool:
        return not self.down or time.monotonic() >= self._retry_at

    def _fell(self, account: Account, exc: BalanceUnavailable) -> None:
        self._retry_at = time.monotonic() + self.retry
        if self.down:
            return
        self.down = True
        self.outages += 1
        self._fresh.clear()
        log.warning(
            "%s: the shared store is unreachable (%s): each process checks the "
            "provider's balance and holds on its own until it is back",
            account.provider,
            exc.reason,
        )
        if self.on_down is not None:
            self.on_down(account, exc)

    def _back(self) -> None:
        if self.down:
            self.down = False
            log.info("the shared store is back: balances and holds are shared again")

    async def _stand_in(self, account: Account) -> Store:
        if account.key not in self._fresh:
            self._fresh.add(account.key)
            await self.local.invalidate(account)
        return self.local

    # -- the Store protocol ---------------------------------------------------

    async def read(self, account: Account) -> Entry | None:
        if self._try_shared():
            try:
                entry = await self.shared.read(account)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
            else:
                self._back()
                return entry
        return await (await self._stand_in(account)).read(account)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        if self._try_shared():
            try:
                result = await self.shared.try_hold(account, amount)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
            else:
                self._back()
                return result
        result = await (await self._stand_in(account)).try_hold(account, amount)
        if isinstance(result, Hold):
            self._local[id(result)] = result
        return result

    def held(self, account: Account) -> Decimal:
        return MONEY.add(self.shared.held(account), self.local.held(account))

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
        if self._try_shared():
            try:
                found = await self.shared.begin_fetch(account)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
            else:
                self._back()
                return found
        found = await (await self._stand_in(account)).begin_fetch(account)
        if isinstance(found, Ticket):
            self._local[id(found)] = found
        return found

    async def abort_fetch(self, account: Account, ticket: Ticket) -> None:
        if self._local.pop(id(ticket), None) is not None:
            await self.local.abort_fetch(account, ticket)
        else:
            await self.shared.abort_fetch(account, ticket)

    async def put(
        self, account: Account, amount: Decimal, ticket: Ticket
    ) -> Entry | None:
        if self._local.pop(id(ticket), None) is not None:
            return await self.local.put(account, amount, ticket)
        try:
            return await self.shared.put(account, amount, ticket)
        except BalanceUnavailable as exc:
            # Went down during the fetch: keep its answer for the stand-in.
            self._fell(account, exc)
        local = await self._stand_in(account)
        found = await local.begin_fetch(account)
        if isinstance(found, Entry):
            return found
        return await local.put(account, amount, found)

    async def release(self, hold: Hold, *, outcome: Outcome) -> None:
        if self._local.pop(id(hold), None) is not None:
            await self.local.release(hold, outcome=outcome)
        else:
            # A shared store retries a release it can't make yet.
            await self.shared.release(hold, outcome=outcome)

    async def invalidate(self, account: Account) -> None:
        await self.local.invalidate(account)
        if self._try_shared():
            try:
                await self.shared.invalidate(account)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
                raise

    async def close(self) -> None:
        try:
            await self.shared.close()
        finally:
            await self.local.close()
