"""
A shared store with a stand-in in this process for while it is down.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._logs import digest, fields, log
from .._money import MONEY
from ..errors import BalanceUnavailable
from ._memory import MemoryStore
from ._values import Account, Entry, Hold, Outcome, Short, Ticket

if TYPE_CHECKING:
    from collections.abc import Callable
    from decimal import Decimal

    from ..typing import Store

__all__ = ["FallbackStore"]


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
    call then pays its timeout if it is still down). Back, it first drops
    its balances of the accounts the stand-in served (they don't count what
    was spent meanwhile); while calls the stand-in admitted still run, a
    check in the shared store also covers what they hold, and the shared
    balance is dropped again when the last of them has settled. The first failure of
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
        # Accounts the stand-in served during this outage: what it kept from
        # an earlier one is stale, and what the shared store kept from
        # before this one doesn't count what was spent meanwhile.
        self._used: dict[str, Account] = {}
        # Back from an outage, accounts with calls the stand-in admitted
        # still running: the shared store's checks count those too, and its
        # balance is dropped once more when they have settled.
        self._draining: dict[str, Account] = {}

    def __repr__(self) -> str:
        return f"<FallbackStore {self.shared!r} down={self.down}>"

    async def _try_shared(self) -> bool:
        """
        Whether to use the shared store. Back from an outage, only once the
        stand-in's calls have settled, and after dropping the shared
        balances of the accounts it served: spends made meanwhile are not
        in them.
        """
        if not self.down:
            return True
        if time.monotonic() < self._retry_at:
            return False
        used = list(self._used.values())
        for account in used:
            try:
                await self.shared.invalidate(account)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
                return False
        for account in used:
            if self.local.held(account):
                self._draining[account.key] = account
        self._back()
        return True

    def _fell(self, account: Account, exc: BalanceUnavailable) -> None:
        self._retry_at = time.monotonic() + self.retry
        if self.down:
            return
        self.down = True
        self.outages += 1
        self._used = {}
        log.warning(
            "%s: the shared store is unreachable (%s): each process checks the "
            "provider's balance and holds on its own until it is back",
            account.provider,
            exc.reason,
            extra=fields(
                "store_down",
                provider=account.provider,
                account=digest(account.key),
                error=exc.reason,
            ),
        )
        if self.on_down is not None:
            self.on_down(account, exc)

    def _back(self) -> None:
        if self.down:
            self.down = False
            self._used = {}
            log.info(
                "the shared store is back: balances and holds are shared again",
                extra=fields("store_back", provider="", account=""),
            )

    async def _stand_in(self, account: Account) -> Store:
        if account.key not in self._used:
            self._used[account.key] = account
            await self.local.invalidate(account)
        return self.local

    # -- the Store protocol ---------------------------------------------------

    async def read(self, account: Account) -> Entry | None:
        if await self._try_shared():
            try:
                entry = await self.shared.read(account)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
            else:
                self._back()
                return entry
        return await (await self._stand_in(account)).read(account)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        if await self._try_shared():
            asked = amount
            if self._draining and account.key in self._draining:
                asked = MONEY.add(amount, self.local.held(account))
            try:
                result = await self.shared.try_hold(account, asked)
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
        if await self._try_shared():
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

    def release_now(self, hold: Hold, outcome: Outcome) -> bool:
        """
        `release` without awaiting, when the shared store made *hold* and
        can (see its ``release_now``); False: `release` must be awaited.
        """
        release_now = getattr(self.shared, "release_now", None)
        if release_now is None or id(hold) in self._local:
            return False
        return bool(release_now(hold, outcome))

    async def release(self, hold: Hold, *, outcome: Outcome) -> None:
        if self._local.pop(id(hold), None) is not None:
            await self.local.release(hold, outcome=outcome)
            account = hold.account
            if account.key in self._draining and not self.local.held(account):
                del self._draining[account.key]
                if not self.down:
                    # Fetched while they ran: it may not count their spending.
                    try:
                        await self.shared.invalidate(account)
                    except BalanceUnavailable as exc:
                        self._fell(account, exc)
        else:
            # A shared store retries a release it can't make yet.
            await self.shared.release(hold, outcome=outcome)

    async def invalidate(self, account: Account) -> None:
        await self.local.invalidate(account)
        if await self._try_shared():
            try:
                await self.shared.invalidate(account)
            except BalanceUnavailable as exc:
                self._fell(account, exc)
            else:
                return
        # Dropped in the shared store when it is back.
        self._used[account.key] = account

    async def held_everywhere(self, account: Account) -> Decimal:
        """
        Return what every process holds on the account, by the shared
        store (`guard.stores.RedisStore.held_everywhere`), and what this process's
        calls hold in the stand-in.

        Raises:
            BalanceUnavailable: The shared store did not answer.
            AttributeError: The shared store can't tell.

        .. versionadded:: 0.2
        """
        shared = await self.shared.held_everywhere(account)  # type: ignore[attr-defined]
        return MONEY.add(shared, self.local.held(account))

    async def close(self) -> None:
        try:
            await self.shared.close()
        finally:
            await self.local.close()
