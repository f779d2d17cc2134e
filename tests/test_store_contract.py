"""
The `guard.typing.Store` contract, run against every store guard ships:
`MemoryStore`; `RedisStore` on a real redis-server (the machine's, at
127.0.0.1:6379 or ``REDIS_URL``; in CI a missing one fails the tests), on a
Redis Cluster and on a Sentinel-managed primary the tests start; and
`FallbackStore` in front of a Redis that is up, and of one that is down.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from _redis_server import delete_namespace, machine_redis, topology_client
from aiocache import RedisCache

from guard import BalanceUnavailable
from guard.stores import (
    Account,
    Entry,
    FallbackStore,
    Hold,
    MemoryStore,
    Outcome,
    RedisStore,
    Short,
    Ticket,
)
from guard.typing import Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

FETCH_TIMEOUT = 0.5


@pytest.fixture(
    name="store",
    params=["memory", "redis", "cluster", "sentinel", "fallback", "fallback-down"],
)
async def _store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        store: Store = MemoryStore(ttl=30)
        yield store
        await store.close()
        return
    if request.param == "fallback-down":
        # Redis never answers: every call is served by the stand-in.
        down = RedisStore("redis://127.0.0.1:1", ttl=30, fetch_timeout=FETCH_TIMEOUT)
        store = FallbackStore(down)
        yield store
        await store.close()
        return
    if request.param in ("cluster", "sentinel"):
        # Servers of the session's own: the accounts' keys are unique.
        async with topology_client(request, request.param) as client:
            store = RedisStore(client, ttl=30, lease=60, fetch_timeout=FETCH_TIMEOUT)
            try:
                yield store
            finally:
                await store.close()
        return
    host, port = machine_redis()
    namespace = f"guard-contract-{uuid.uuid4().hex[:12]}"
    cache = RedisCache(endpoint=host, port=port, namespace=namespace)
    store = RedisStore(cache, ttl=30, lease=60, fetch_timeout=FETCH_TIMEOUT)
    if request.param == "fallback":  # Redis up: every call goes to it
        store = FallbackStore(store)
    try:
        yield store
    finally:
        await store.close()
        delete_namespace(host, port, namespace)


@pytest.fixture(name="account")
def _account() -> Account:
    return Account(f"contract:memory:{uuid.uuid4().hex[:24]}", "memory", "DZD")


async def cache(store: Store, account: Account, amount: str) -> Entry:
    """
    Fetch-and-store *amount* as the engine does after a miss.
    """
    ticket = await store.begin_fetch(account)
    assert isinstance(ticket, Ticket)
    entry = await store.put(account, Decimal(amount), ticket)
    assert entry is not None
    return entry


async def hold(store: Store, account: Account, amount: str) -> Hold:
    result = await store.try_hold(account, Decimal(amount))
    assert isinstance(result, Hold)
    return result


def test_both_are_stores() -> None:
    """Both stores implement the runtime-checkable Store Protocol."""
    assert isinstance(MemoryStore(), Store)
    assert isinstance(RedisStore(RedisCache(), ttl=1, lease=1, fetch_timeout=1), Store)


class TestMiss:
    async def test_nothing_cached_is_a_miss(
        self, store: Store, account: Account
    ) -> None:
        """Before any fetch, try_hold and read find nothing and hold nothing."""
        assert None is await store.try_hold(account, Decimal(1))
        assert None is await store.read(account)
        assert Decimal(0) == store.held(account)

    async def test_put_caches_the_balance(self, store: Store, account: Account) -> None:
        """A balance put after begin_fetch is what read returns, exactly."""
        entry = await cache(store, account, "100.25")

        read = await store.read(account)

        assert Decimal("100.25") == entry.amount
        assert entry.exact
        assert read is not None
        assert (Decimal("100.25"), entry.fetch_id) == (read.amount, read.fetch_id)

    async def test_ttl_is_the_stores(self, store: Store) -> None:
        """The store reports the ttl it was made with."""
        assert 30 == store.ttl


class TestHold:
    async def test_covered_amount_is_held(self, store: Store, account: Account) -> None:
        """An amount the balance covers is held against that balance."""
        await cache(store, account, "100")

        result = await hold(store, account, "60.5")

        assert Decimal("60.5") == result.amount
        assert account == result.account
        assert result.entry is not None
        assert Decimal(100) == result.entry.amount
        assert Decimal("60.5") == store.held(account)

    async def test_holds_are_summed(self, store: Store, account: Account) -> None:
        """held() sums the running holds, and what they hold is not available."""
        await cache(store, account, "100")
        await hold(store, account, "30")
        await hold(store, account, "45.25")

        short = await store.try_hold(account, Decimal("24.7501"))

        assert Decimal("75.25") == store.held(account)
        assert isinstance(short, Short)
        assert Decimal("24.75") == short.available
        assert Decimal(100) == short.entry.amount

    async def test_uncovered_amount_is_short(
        self, store: Store, account: Account
    ) -> None:
        """An amount beyond the balance is refused with what is available."""
        await cache(store, account, "10")

        short = await store.try_hold(account, Decimal("10.01"))

        assert isinstance(short, Short)
        assert Decimal(10) == short.available
        assert Decimal(0) == store.held(account)


class TestRelease:
    async def test_release_without_debit_forgets_the_balance(
        self, store: Store, account: Account
    ) -> None:
        """A release without debit frees the hold and forgets the balance."""
        await cache(store, account, "100")
        held = await hold(store, account, "40")

        await store.release(held, outcome="forget")

        assert Decimal(0) == store.held(account)
        assert None is await store.read(account)

    async def test_release_with_debit_is_exact(
        self, store: Store, account: Account
    ) -> None:
        """A release with debit takes the exact amount off the cached balance."""
        await cache(store, account, "100.25")
        for _ in range(3):
            await store.release(await hold(store, account, "0.1"), outcome="debit")

        read = await store.read(account)

        assert Decimal(0) == store.held(account)
        assert read is not None
        assert Decimal("99.95") == read.amount
        assert "99.95" == str(read.amount)

    async def test_overlapping_debits_of_one_fetch_are_kept(
        self, store: Store, account: Account
    ) -> None:
        """Two calls checked against one fetch both debit it, in either order."""
        await cache(store, account, "100")
        first = await hold(store, account, "30")
        second = await hold(store, account, "20")

        await store.release(first, outcome="debit")
        await store.release(second, outcome="debit")

        read = await store.read(account)
        assert read is not None
        assert Decimal(50) == read.amount
        assert Decimal(0) == store.held(account)

    async def test_debit_after_a_newer_fetch_forgets(
        self, store: Store, account: Account
    ) -> None:
        """A call checked against an older fetch may be in the newer one: forget."""
        await cache(store, account, "100")
        held = await hold(store, account, "30")
        await cache(store, account, "90")

        await store.release(held, outcome="debit")

        assert None is await store.read(account)
        assert Decimal(0) == store.held(account)

    async def test_held_and_available_follow_the_fetch(
        self, store: Store, account: Account
    ) -> None:
        """A balance fetched while calls hold is checked less what they hold."""
        await cache(store, account, "100")
        held = await hold(store, account, "60")
        await cache(store, account, "80")

        short = await store.try_hold(account, Decimal(21))
        assert isinstance(short, Short)
        assert Decimal(20) == short.available
        await store.release(held, outcome="spent")
        read = await store.read(account)
        assert read is not None
        assert Decimal(20) == read.amount
        assert not read.exact

    async def test_cancelled_release_leaves_no_hold(
        self, store: Store, account: Account
    ) -> None:
        """A release cancelled on its way still frees the whole amount."""
        await cache(store, account, "100")
        held = await hold(store, account, "100")

        releasing = asyncio.create_task(store.release(held, outcome="forget"))
        await asyncio.sleep(0)
        releasing.cancel()
        await asyncio.gather(releasing, return_exceptions=True)

        assert Decimal(0) == store.held(account)
        for _ in range(100):  # the store may finish it in a task of its own
            await asyncio.sleep(0.01)
            if await store.read(account) is None:
                await cache(store, account, "100")
            if isinstance(await store.try_hold(account, Decimal(100)), Hold):
                return
        pytest.fail("the cancelled release left its hold")


class TestFetch:
    async def test_invalidation_beats_a_fetch_in_flight(
        self, store: Store, account: Account
    ) -> None:
        """A fetch that began before an invalidation is not stored."""
        await cache(store, account, "100")
        ticket = await store.begin_fetch(account)
        assert isinstance(ticket, Ticket)

        await store.invalidate(account)

        assert None is await store.put(account, Decimal(500), ticket)
        assert None is await store.read(account)

    @pytest.mark.parametrize("outcome", ["debit", "spent", "forget"])
    async def test_fetch_overlapping_a_settle_is_not_stored_too_high(
        self, store: Store, account: Account, outcome: Outcome
    ) -> None:
        """A fetch overlapping a settled spend never caches the balance before it."""
        await cache(store, account, "100")
        held = await hold(store, account, "30")
        ticket = await store.begin_fetch(account)
        assert isinstance(ticket, Ticket)

        # The provider answered 100, then the call spent 30 and settled.
        await store.release(held, outcome=outcome)
        stored = await store.put(account, Decimal(100), ticket)

        read = await store.read(account)
        assert stored is None or stored.amount <= Decimal(70)
        assert read is None or read.amount <= Decimal(70)

    async def test_aborted_fetch_lets_the_next_one_begin(
        self, store: Store, account: Account
    ) -> None:
        """After abort_fetch, another fetch begins at once instead of waiting."""
        ticket = await store.begin_fetch(account)
        assert isinstance(ticket, Ticket)

        await store.abort_fetch(account, ticket)

        async with asyncio.timeout(FETCH_TIMEOUT / 2):
            again = await store.begin_fetch(account)
        assert isinstance(again, Ticket)
        assert None is await store.read(account)

    async def test_read_is_the_latest_put(self, store: Store, account: Account) -> None:
        """read() returns the latest stored balance, younger than the ttl."""
        first = await cache(store, account, "100")
        await store.invalidate(account)
        second = await cache(store, account, "80")

        read = await store.read(account)

        assert read is not None
        assert Decimal(80) == read.amount
        assert first.fetch_id != second.fetch_id == read.fetch_id
        assert second.fetched_at <= read.fetched_at or read == second


class TestClose:
    async def test_close_is_idempotent(self, store: Store, account: Account) -> None:
        """Closing a store twice is fine, even with a hold released before."""
        await cache(store, account, "100")
        await store.release(await hold(store, account, "1"), outcome="debit")

        await store.close()
        await store.close()

        assert Decimal(0) == store.held(account)

    async def test_closed_redis_store_is_unavailable(self, account: Account) -> None:
        """A closed RedisStore refuses calls with BalanceUnavailable."""
        host, port = machine_redis()
        store = RedisStore(
            RedisCache(endpoint=host, port=port), ttl=1, lease=1, fetch_timeout=1
        )
        await store.close()

        with pytest.raises(BalanceUnavailable, match="closed"):
            await store.read(account)
