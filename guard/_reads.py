"""
What a guard tells about an account besides guarding calls: its balance
(for display), what it holds, its counters, and the price lists it keeps.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from ._reservation import _balance
from .errors import BalanceUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from decimal import Decimal

    import aiohttp

    from ._accounts import Accounts, AccountState, Tracked
    from ._balance import Balance
    from ._catalogue import Catalogues
    from ._fetch import Fetcher
    from ._loops import HomeLoop
    from .typing import Provider, Store

__all__ = ["Reads"]

T = TypeVar("T")


class Reads:
    """
    `guard.BalanceGuard`'s reads. Strictly private: a part of the guard,
    kept apart from the guarded call's path.
    """

    _accounts: Accounts
    _catalogues: Catalogues
    _fetcher: Fetcher
    _loops: HomeLoop
    _store: Store
    _track: Callable[[Provider], Tracked]

    @property
    def fetch_timeout(self) -> float:
        """Seconds one balance fetch may take, retries included."""
        return self._fetcher.timeout

    async def balance(self, provider: Provider, *, fresh: bool = False) -> Balance:
        """
        Return the balance of *provider*'s account: cached, or fetched if
        there is none (or *fresh* is true).

        Raises:
            BalanceUnavailable: It could not be learned (whatever the
                *on_unavailable* policy: there is no call to let through).
        """
        if not self._loops.at_home():
            return await self._loops.call(self.balance(provider, fresh=fresh))
        tracked = self._track(provider)
        entry = None if fresh else await self._store.read(tracked.account)
        if entry is None:
            entry = await self._fetcher.refresh(
                tracked, time.monotonic() + self.fetch_timeout
            )
        return _balance(tracked, entry.amount, entry.fetched_at)

    async def invalidate(self, provider: Provider) -> None:
        """
        Forget *provider*'s cached balance; the next call fetches it.
        """
        if not self._loops.at_home():
            await self._loops.call(self.invalidate(provider))
            return
        await self._store.invalidate(self._track(provider).account)

    def accounts(self) -> tuple[AccountState, ...]:
        """
        Return every account this guard has seen, as it sees it now: the
        last balance, what this process holds, and what it counted.
        """
        return tuple(
            self._accounts.state(tracked, self._store.held(tracked.account))
            for tracked in self._accounts
        )

    async def catalogue(
        self,
        provider: Provider,
        name: str,
        load: Callable[[aiohttp.ClientSession], Awaitable[T]],
        *,
        ttl: float,
    ) -> T:
        """
        Return a catalogue of *provider*'s account (a price list): kept
        from an earlier call for *ttl* seconds, else loaded by
        ``load(session)`` through the guard's session, one load per
        account and *name* at a time, within the fetch timeout. A failed
        load is not kept.

        Raises:
            BalanceUnavailable: *load* raised it, or took longer than the
                fetch timeout.

        .. versionadded:: 0.2
        """
        if not self._loops.at_home():
            return await self._loops.call(self.catalogue(provider, name, load, ttl=ttl))
        tracked = self._track(provider)
        try:
            return await self._catalogues.get(
                (tracked.account.key, name),
                load,
                self._fetcher.session(),
                ttl=ttl,
                limit=self.fetch_timeout,
            )
        except TimeoutError:
            raise BalanceUnavailable(
                f"no {name} within {self.fetch_timeout:g} s",
                provider=provider.name,
            ) from None

    def held(self, provider: Provider) -> Decimal:
        """
        Sum of the amounts held by *provider*'s running calls in this
        process.
        """
        return self._store.held(self._track(provider).account)
