"""
Settling with the balance a provider reports after a spend
(`Reservation.report_balance`): kept like a fetch, never over an
invalidation, less what other calls settled meanwhile.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from guard import AmountError, BalanceGuard, BalanceUnavailable
from guard.stores import MemoryStore
from guard.testing import InMemoryProvider
from guard.typing import Store, TicketStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(name="provider")
def _provider() -> InMemoryProvider:
    return InMemoryProvider(1000, name="memory", currency="DZD")


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    # Pinned: the tests count the fetches an invalidation makes.
    async with BalanceGuard(settle="invalidate") as guard:
        yield guard


class _NoTicket:
    """A store that cannot give a lock-free ticket: everything but it."""

    def __init__(self) -> None:
        self._inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name == "ticket":
            raise AttributeError(name)
        return getattr(self._inner, name)


class TestReportBalance:
    async def test_kept_without_a_fetch(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A reported balance becomes the balance; no fetch follows."""
        async with guard.reserve(provider, 300, reports=True) as r:
            provider.spend(300)
            r.report_balance(700)

        assert Decimal(700) == (await guard.balance(provider)).amount
        assert 1 == provider.fetches
        assert Decimal(0) == guard.held(provider)

    async def test_kept_after_an_earlier_invalidation(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """An invalidation before the spend was held does not drop its report."""
        await guard.balance(provider)
        await guard.invalidate(provider)
        async with guard.reserve(provider, 300, reports=True) as r:
            provider.spend(300)
            r.report_balance(700)

        assert Decimal(700) == (await guard.balance(provider)).amount
        assert 2 == provider.fetches

    async def test_not_over_an_invalidation(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A balance invalidated while the spend ran is not overwritten."""
        async with guard.reserve(provider, 300, reports=True) as r:
            await guard.invalidate(provider)
            r.report_balance(5)

        assert Decimal(1000) == (await guard.balance(provider)).amount
        assert 2 == provider.fetches

    async def test_less_what_settled_meanwhile(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A call settled while the spend ran is taken off the reported balance."""
        async with guard.reserve(provider, 300, reports=True) as r:
            async with guard.reserve(provider, 100):
                provider.spend(100)
            provider.spend(300)
            # The provider may have answered before the other call's debit.
            r.report_balance(700)

        assert Decimal(600) == (await guard.balance(provider)).amount
        assert 1 == provider.fetches

    async def test_failed_spend_ignores_it(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A spend marked failed settles as a failure: the report is dropped."""
        async with guard.reserve(provider, 300, reports=True) as r:
            r.report_balance(1)
            r.failed()

        assert Decimal(1000) == (await guard.balance(provider)).amount
        assert 2 == provider.fetches

    async def test_store_without_ticket_invalidates(
        self, provider: InMemoryProvider
    ) -> None:
        """A store that cannot tell what moved settles as usual."""
        store: Any = _NoTicket()
        assert isinstance(store, Store)
        assert not isinstance(store, TicketStore)
        async with BalanceGuard(store=store, settle="invalidate") as guard:
            async with guard.reserve(provider, 300, reports=True) as r:
                provider.spend(300)
                r.report_balance(1)

            assert Decimal(700) == (await guard.balance(provider)).amount
        assert 2 == provider.fetches

    async def test_memory_store_is_a_ticket_store(self) -> None:
        """MemoryStore gives lock-free tickets."""
        assert isinstance(MemoryStore(), TicketStore)

    @pytest.mark.parametrize("bad", [-1, "nan", "x"])
    async def test_bad_amount(
        self, guard: BalanceGuard, provider: InMemoryProvider, bad: object
    ) -> None:
        """A reported balance that is no amount is an AmountError."""
        async with guard.reserve(provider, 1, reports=True) as r:
            with pytest.raises(AmountError, match="amount"):
                r.report_balance(bad)  # type: ignore[arg-type]

    async def test_needs_reports(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """Reporting in a block not entered with reports=True says what is missing."""
        async with guard.reserve(provider, 1) as r:
            with pytest.raises(RuntimeError, match="reports=True"):
                r.report_balance(5)

    async def test_refetched_balance_then_held(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A hold made after a fetch (slow path) can report too."""
        async with guard.reserve(provider, 300, reports=True) as r:
            provider.spend(300)
            r.report_balance(700)
        assert 1 == provider.fetches
        assert Decimal(700) == (await guard.balance(provider)).amount


class _Broken(MemoryStore):
    """A store whose ticket or put fails as a shared store that is down does."""

    def __init__(self, *, ticket: bool = False, put: bool = False) -> None:
        super().__init__()
        self.fail_ticket = ticket
        self.fail_put = put
        self.puts = 0

    async def ticket(self, account: Any) -> Any:
        if self.fail_ticket:
            raise BalanceUnavailable("store down", provider=account.provider)
        return await super().ticket(account)

    async def put(self, account: Any, amount: Any, ticket: Any) -> Any:
        self.puts += 1
        if self.fail_put and self.puts > 1:
            raise BalanceUnavailable("store down", provider=account.provider)
        return await super().put(account, amount, ticket)


class TestStoreDown:
    async def test_ticket_fails_hold_released(self, provider: InMemoryProvider) -> None:
        """A ticket that cannot be taken fails the call and leaves no hold."""
        async with BalanceGuard(store=_Broken(ticket=True)) as guard:
            with pytest.raises(BalanceUnavailable, match="store down"):
                async with guard.reserve(provider, 300, reports=True):
                    pass  # pragma: no cover - never entered
            assert Decimal(0) == guard.held(provider)

    async def test_put_fails_spend_taken_off(self, provider: InMemoryProvider) -> None:
        """A reported balance the store cannot keep leaves the spend taken off."""
        async with BalanceGuard(store=_Broken(put=True)) as guard:
            async with guard.reserve(provider, 300, reports=True) as r:
                provider.spend(300)
                r.report_balance(1)
            assert Decimal(0) == guard.held(provider)
            entry = await guard.store.read(guard._track(provider).account)
        assert entry is not None
        assert (Decimal(700), False) == (entry.amount, entry.exact)
