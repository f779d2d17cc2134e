from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import attrs
import pytest
import redis
import redis.asyncio as aioredis
from _redis_server import RedisProxy, RedisServer, delete_namespace, machine_redis
from aiocache import RedisCache

from guard import (
    AmountError,
    BalanceGuard,
    BalanceUnavailable,
    ConfigurationError,
    GuardEvent,
    InsufficientBalance,
    require_balance,
)
from guard._sync import close_guard
from guard.providers import OneClickDZ
from guard.stores import Hold, RedisStore
from guard.testing import Emulator, Fault, InMemoryProvider, Plan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
    from contextlib import AbstractAsyncContextManager

    from guard import Reservation
    from guard._guard import Settle
    from guard.typing import Provider

pytestmark = pytest.mark.redis

T = TypeVar("T")

WORKER = Path(__file__).with_name("_redis_worker.py")
KEY = "emulated-oneclickdz-key"
# A dynamic plan down to 1 DZD, for top-ups of 1..300.
PLANS = (Plan("TEST", "Test plan", "mobilis", min_amount=Decimal(1)),)


@pytest.fixture(name="addr")
def _addr() -> tuple[str, int]:
    return machine_redis()


@pytest.fixture(name="namespace")
def _namespace(addr: tuple[str, int]) -> Iterator[str]:
    namespace = f"guard-test-{uuid.uuid4().hex[:12]}"
    yield namespace
    delete_namespace(*addr, namespace)


@pytest.fixture(name="server")
def _server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="proxy")
async def _proxy(addr: tuple[str, int]) -> AsyncIterator[RedisProxy]:
    async with RedisProxy(*addr) as proxy:
        yield proxy


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator(plans=PLANS) as emu:
        emu.add_oneclickdz(KEY, 10_000)
        yield emu


def make(addr: tuple[str, int], namespace: str, **options: Any) -> BalanceGuard:
    host, port = addr
    cache = RedisCache(
        endpoint=host, port=port, pool_max_size=options.pop("pool", None)
    )
    return BalanceGuard(cache=cache, namespace=namespace, **options)


@pytest.fixture(name="g1")
async def _g1(addr: tuple[str, int], namespace: str) -> AsyncIterator[BalanceGuard]:
    async with make(addr, namespace) as guard:
        yield guard


@pytest.fixture(name="g2")
async def _g2(addr: tuple[str, int], namespace: str) -> AsyncIterator[BalanceGuard]:
    # Another guard on the same namespace stands for another process: the two
    # share nothing but Redis.
    async with make(addr, namespace) as guard:
        yield guard


async def keys(addr: tuple[str, int], namespace: str) -> list[str]:
    async with aioredis.Redis(host=addr[0], port=addr[1], decode_responses=True) as r:
        return sorted([k async for k in r.scan_iter(match=f"*{namespace}*")])


@attrs.frozen
class Held:
    """
    A ``reserve()`` block entered by hand, for tests that settle it later.
    """

    block: AbstractAsyncContextManager[Reservation]
    reservation: Reservation

    @property
    def amount(self) -> Decimal:
        return self.reservation.amount


async def acquire(
    guard: BalanceGuard,
    provider: Provider,
    amount: Decimal,
    *,
    settle: Settle | None = None,
) -> Held:
    """
    Check and hold *amount*, as entering ``guard.reserve(...)`` does.
    """
    block = guard.reserve(provider, amount, settle=settle)
    return Held(block, await block.__aenter__())


async def settle(held: Held, *, ok: bool) -> None:
    """
    Leave *held*'s block: as a success, or as a spend that failed.
    """
    if not ok:
        held.reservation.failed()
    await held.block.__aexit__(None, None, None)


async def eventually(check: Any, what: str, *, limit: float = 30.0) -> None:
    """
    Wait until *check()* is true; fail after *limit* seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def fits(guard: BalanceGuard, provider: InMemoryProvider, amount: int) -> bool:
    """
    Tell whether *guard* can hold *amount* now (giving the hold back).
    """
    try:
        hold = await acquire(guard, provider, Decimal(amount))
    except InsufficientBalance:
        return False
    await settle(hold, ok=False)
    return True


class HeldBack(InMemoryProvider):
    """
    An in-memory provider whose first answer is held back until `go` is set:
    the balance is read, the reply is on its way.
    """

    def __init__(self, balance: int) -> None:
        super().__init__(balance)
        self.answered = asyncio.Event()
        self.go = asyncio.Event()

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        balance = await super().fetch_balance(session)
        if not self.answered.is_set():
            self.answered.set()
            await self.go.wait()
        return balance


class TestMoneyLimits:
    async def test_amount_beyond_exact_lua_is_refused(self, g1: BalanceGuard) -> None:
        """An amount Redis's scripts can't compare exactly is an AmountError."""
        from guard.stores.redis._scripts import MAX_AMOUNT

        provider = InMemoryProvider(10**15)
        with pytest.raises(AmountError, match=r"at most 56,294,995,342\.1312"):
            async with g1.reserve(provider, MAX_AMOUNT + Decimal("0.0001")):
                pass
        async with g1.reserve(provider, MAX_AMOUNT) as reservation:
            # A balance past the limit is kept as the limit: it errs low.
            assert reservation.balance is not None
            assert MAX_AMOUNT == reservation.balance.amount
        assert Decimal(0) == g1.held(provider)

    async def test_application_decimal_context_is_not_used(
        self, g1: BalanceGuard
    ) -> None:
        """With prec=6 set by the application, Redis amounts stay exact."""
        import decimal

        provider = InMemoryProvider(Decimal("999999.7"))
        saved = decimal.getcontext().prec
        decimal.getcontext().prec = 6
        try:
            with pytest.raises(InsufficientBalance) as info:
                async with g1.reserve(provider, 1_000_000):
                    pass
            assert Decimal("999999.7") == info.value.available
            async with g1.reserve(provider, Decimal("999999.7")):
                pass
        finally:
            decimal.getcontext().prec = saved
        assert Decimal(0) == g1.held(provider)


class TestHolds:
    async def test_holds_are_shared(self, g1: BalanceGuard, g2: BalanceGuard) -> None:
        """A hold made through one guard counts against the other's calls."""
        provider = InMemoryProvider(100, account_id="shared")
        hold = await acquire(g1, provider, Decimal(60))

        with pytest.raises(InsufficientBalance) as info:
            await acquire(g2, provider, Decimal(60))

        assert Decimal(40) == info.value.available
        assert Decimal(60) == g1.held(provider)
        await settle(hold, ok=True)
        assert Decimal(0) == g1.held(provider)
        # The release is sent in the background: a read sent after it
        # returns once Redis has run it.
        await g1.balance(provider)
        assert await acquire(g2, provider, Decimal(60)) is not None

    async def test_debit_is_exact(self, addr: tuple[str, int], namespace: str) -> None:
        """settle='debit' takes exact decimal amounts off the shared balance."""
        provider = InMemoryProvider(Decimal("100.25"))
        async with make(addr, namespace, settle="debit") as guard:
            for _ in range(3):
                async with guard.reserve(provider, Decimal("0.1")):
                    pass

            balance = await guard.balance(provider)

        assert Decimal("99.95") == balance.amount
        assert "99.95" == str(balance.amount)
        assert 1 == provider.fetches

    async def test_rounding_never_lets_a_call_through(self, g1: BalanceGuard) -> None:
        """Past four decimals a balance rounds down and a hold up."""
        provider = InMemoryProvider(Decimal("1.00009"))

        with pytest.raises(InsufficientBalance) as info:
            await acquire(g1, provider, Decimal("1.00001"))

        assert Decimal(1) == info.value.available
        assert "1" == str(info.value.available)

    async def test_invalidate_refetches(self, g1: BalanceGuard) -> None:
        """settle='invalidate' makes the next call fetch the balance again."""
        provider = InMemoryProvider(100)
        async with g1.reserve(provider, 30, settle="invalidate"):
            provider.spend(30)
        async with g1.reserve(provider, 30, settle="invalidate"):
            pass

        assert Decimal(70) == (await g1.balance(provider)).amount
        assert 3 == provider.fetches

    async def test_release_is_idempotent(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """Settling one hold twice debits it once."""
        provider = InMemoryProvider(100)
        async with make(addr, namespace, settle="debit") as guard:
            hold = await acquire(guard, provider, Decimal(10))
            provider.spend(10)
            await settle(hold, ok=True)
            await settle(hold, ok=True)

            assert Decimal(0) == guard.held(provider)
            assert Decimal(90) == (await guard.balance(provider)).amount
            hold = await acquire(guard, provider, Decimal(90))
            assert hold is not None

    async def test_debit_after_refetch_invalidates(
        self, g1: BalanceGuard, g2: BalanceGuard
    ) -> None:
        """A hold made against an older balance invalidates rather than debits."""
        provider = InMemoryProvider(100)
        hold = await acquire(g1, provider, Decimal(10), settle="debit")
        await g2.balance(provider, fresh=True)

        await settle(hold, ok=True)

        assert [] == [k for k in await g1_keys(g1) if k.endswith(":b")]
        assert Decimal(100) == (await g2.balance(provider)).amount
        assert 3 == provider.fetches

    async def test_keys_share_a_tag_and_hide_the_key(
        self, addr: tuple[str, int], namespace: str, emu: Emulator
    ) -> None:
        """An account's keys share one hash tag and never contain the API key."""
        async with make(addr, namespace) as guard:
            await acquire(guard, emu.oneclickdz(KEY), Decimal(1))

            found = await keys(addr, namespace)

        assert {"b", "e", "g", "h", "s"} == {k.rsplit(":", 1)[1] for k in found}
        assert 1 == len({k[: k.index("}") + 1] for k in found})
        assert all(k.startswith(f"{{{namespace}:oneclickdz:") for k in found)
        assert not any(KEY in k for k in found)

    async def test_huge_amounts_stay_exact(self, g1: BalanceGuard) -> None:
        """Amounts up to the store's limit are held and debited exactly."""
        provider = InMemoryProvider(Decimal("50000000000.1234"))
        hold = await acquire(g1, provider, Decimal("12345678901.4321"), settle="debit")
        await settle(hold, ok=True)

        assert Decimal("37654321098.6913") == (await g1.balance(provider)).amount

    async def test_resent_check_holds_once(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy
    ) -> None:
        """A check sent again after its reply was lost holds once, and goes ahead."""
        provider = InMemoryProvider(100)
        async with (
            make(("127.0.0.1", proxy.port), namespace, settle="debit") as guard,
            make(addr, namespace) as other,
        ):
            await settle(await acquire(guard, provider, Decimal(1)), ok=True)
            # The settle is sent in the background: its reply in first.
            await guard.balance(provider)
            proxy.lose = 1

            hold = await acquire(guard, provider, Decimal(60))

            with pytest.raises(InsufficientBalance) as info:
                await acquire(other, provider, Decimal(50))
            await settle(hold, ok=False)

        assert Decimal(60) == hold.amount
        assert Decimal(39) == info.value.available


async def g1_keys(guard: BalanceGuard) -> list[str]:
    store = guard.store
    assert isinstance(store, RedisStore)
    # Only this guard's namespace: other runs may share the machine's Redis.
    match = f"*{guard.namespace}:*"
    return sorted([k async for k in store.client.scan_iter(match=match)])


class TestReportedBalance:
    async def test_kept_across_processes(
        self, g1: BalanceGuard, g2: BalanceGuard, addr: tuple[str, int], namespace: str
    ) -> None:
        """A reported balance is shared, less what another process spent meanwhile."""
        provider = InMemoryProvider(1000)
        async with g1.reserve(provider, 300, reports=True, settle="invalidate") as r:
            # The refresh the inner settle starts stays out of the way (it
            # would store the provider's 600).
            provider.delay = 30
            async with g2.reserve(provider, 100, settle="refresh"):
                provider.spend(100)
            provider.spend(300)
            # The provider's own figure (600) differs: what is read below is
            # the report, less the other process's 100 it may not count.
            r.report_balance(650)

        assert Decimal(550) == (await g2.balance(provider)).amount

    async def test_not_over_an_invalidation(self, g1: BalanceGuard) -> None:
        """A balance invalidated while the spend ran is not overwritten."""
        provider = InMemoryProvider(1000)
        async with g1.reserve(provider, 300, reports=True) as r:
            await g1.invalidate(provider)
            r.report_balance(5)

        assert Decimal(1000) == (await g1.balance(provider)).amount
        assert 2 == provider.fetches


class TestLeases:
    async def test_hold_of_a_vanished_guard_expires(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """A hold nobody renews lapses after its lease, and the balance is refetched."""
        provider = InMemoryProvider(100)
        async with make(addr, namespace, lease=0.2) as gone:
            await acquire(gone, provider, Decimal(80))
        async with make(addr, namespace) as guard:

            async def fits() -> bool:
                try:
                    hold = await acquire(guard, provider, Decimal(80))
                except InsufficientBalance:
                    return False
                await settle(hold, ok=False)
                return True

            await eventually(fits, "the lapsed hold freed its amount")

    async def test_running_call_renews_its_hold(
        self, addr: tuple[str, int], namespace: str, g2: BalanceGuard
    ) -> None:
        """A call that outlives its lease keeps its hold."""
        provider = InMemoryProvider(100)
        async with make(addr, namespace, lease=0.15) as guard:
            hold = await acquire(guard, provider, Decimal(80))
            await asyncio.sleep(0.6)

            with pytest.raises(InsufficientBalance):
                await acquire(g2, provider, Decimal(80))
            await settle(hold, ok=False)

        assert await acquire(g2, provider, Decimal(80)) is not None

    async def test_renewal_reports_lost_holds(
        self,
        addr: tuple[str, int],
        namespace: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A hold found expired at renewal is logged."""
        provider = InMemoryProvider(100)
        async with make(addr, namespace, lease=0.3) as guard:
            await acquire(guard, provider, Decimal(10))
            # Another process prunes it as if this one had stalled.
            for key in await keys(addr, namespace):
                if key.endswith(":h"):
                    await guard.store.client.delete(key)  # type: ignore[attr-defined]

            with caplog.at_level(logging.WARNING, logger="guard"):
                await asyncio.sleep(0.25)

        assert "expired before being renewed" in caplog.text

    async def test_unanswered_check_leaves_no_hold(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy
    ) -> None:
        """A check whose replies were all lost doesn't leave its hold for a lease."""
        provider = InMemoryProvider(100)
        async with (
            make(("127.0.0.1", proxy.port), namespace, settle="debit") as guard,
            make(addr, namespace) as other,
        ):
            await settle(await acquire(guard, provider, Decimal(1)), ok=True)
            # The settle is sent in the background: its reply in first.
            await guard.balance(provider)
            # The check's reply, then every reconnection's first reply.
            proxy.lose = 4

            with pytest.raises(BalanceUnavailable):
                await acquire(guard, provider, Decimal(60))

            await eventually(
                lambda: fits(other, provider, 99), "the hold was dropped", limit=5
            )

    async def test_cancelled_settle_releases(self, server: RedisServer) -> None:
        """A settle cancelled while Redis is slow still releases its hold."""
        provider = InMemoryProvider(100)
        addr = ("127.0.0.1", server.port)
        # "invalidate": the settle awaits Redis (others are sent in the
        # background, see TestBackgroundSettle).
        async with (
            make(addr, "cancel", settle="invalidate") as guard,
            make(addr, "cancel") as other,
        ):
            hold = await acquire(guard, provider, Decimal(80))
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                settling = asyncio.create_task(settle(hold, ok=False))
                for _ in range(5):  # until it waits for Redis
                    await asyncio.sleep(0)
                settling.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await settling
            finally:
                server.process.send_signal(signal.SIGCONT)

            await eventually(
                lambda: fits(other, provider, 50), "the hold was released", limit=5
            )

    async def test_failed_release_is_retried(
        self,
        addr: tuple[str, int],
        namespace: str,
        proxy: RedisProxy,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A release that could not reach Redis is sent again once it can."""
        provider = InMemoryProvider(100)
        async with (
            make(("127.0.0.1", proxy.port), namespace) as guard,
            make(addr, namespace) as other,
        ):
            hold = await acquire(guard, provider, Decimal(80))
            proxy.refuse = True
            caplog.set_level(logging.WARNING, logger="guard")
            await settle(hold, ok=False)

            async def logged() -> bool:
                return "could not release a hold" in caplog.text

            await eventually(logged, "the failed release was logged", limit=5)
            proxy.refuse = False

            await eventually(
                lambda: fits(other, provider, 50), "the hold was released", limit=5
            )

        assert "could not release a hold" in caplog.text


async def holds_sum(addr: tuple[str, int], key: str) -> int:
    """
    Return the sum of the holds in Redis, asked directly (not via a proxy).
    """
    async with aioredis.Redis(host=addr[0], port=addr[1]) as client:
        return int(await client.get(key) or 0)


# Where a check is cancelled: after so many event-loop iterations (sending),
# or after so many ms while its replies come back 20 ms late (the hold is
# made, the reply, or the unlock of an unused fetch lock, is on its way).
CANCEL_AT = [("loop", n) for n in range(12)] + [("ms", t) for t in range(0, 50, 3)]


class TestCancelledCheck:
    @pytest.mark.parametrize("ticket", [False, True], ids=["warm", "after-a-miss"])
    async def test_cancelled_check_leaves_no_hold(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy, ticket: bool
    ) -> None:
        """A check cancelled at any await leaves no hold in Redis past 0.2 s."""
        provider = InMemoryProvider(1000)
        left: list[tuple[str, int, int]] = []
        async with (
            make(("127.0.0.1", proxy.port), namespace) as guard,
            aioredis.Redis(host=addr[0], port=addr[1]) as direct,
        ):
            store = guard.store
            assert isinstance(store, RedisStore)
            account = guard._track(provider).account
            keys = store._keys(account)
            for where, n in CANCEL_AT:
                proxy.delay = 0.0
                await direct.delete(keys[0], keys[4])
                if ticket:  # a miss took the fetch lock, then a balance came
                    assert None is await store.try_hold(account, Decimal(1))
                await direct.hset(keys[0], mapping={"u": 10**7, "f": "x", "t": 0})
                # Two connections ready, as in a warm process.
                await asyncio.gather(store.read(account), store.read(account))
                proxy.delay = 0.02
                checking = asyncio.create_task(store.try_hold(account, Decimal(60)))
                if where == "loop":
                    for _ in range(n):
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(n / 1000)
                checking.cancel()
                result = (await asyncio.gather(checking, return_exceptions=True))[0]
                if isinstance(result, Hold):  # done before the cancellation
                    await store.release(result, outcome="forget")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 0.2
                while (held := await holds_sum(addr, keys[3])) and (
                    loop.time() < deadline
                ):
                    await asyncio.sleep(0.01)
                if held:
                    left.append((where, n, held))
                    await direct.delete(keys[2], keys[3])
            proxy.delay = 0.0

        assert [] == left

    async def test_cancelled_call_leaves_no_hold(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy
    ) -> None:
        """A guarded call cancelled while its check waits for Redis holds nothing."""
        provider = InMemoryProvider(1000)
        async with (
            make(("127.0.0.1", proxy.port), namespace) as guard,
            make(addr, namespace) as other,
        ):
            await guard.balance(provider)
            proxy.delay = 0.05
            checking = asyncio.create_task(acquire(guard, provider, Decimal(1000)))
            await asyncio.sleep(0.02)  # the hold is made, its reply on its way
            checking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await checking

            await asyncio.sleep(0.2)
            assert await fits(other, provider, 1000)


class TestSingleFlight:
    async def test_one_fetch_for_two_guards(
        self, g1: BalanceGuard, g2: BalanceGuard
    ) -> None:
        """Two guards missing at once make one fetch; the other waits for it."""
        provider = InMemoryProvider(100, delay=0.3)

        one, two = await asyncio.gather(g1.balance(provider), g2.balance(provider))

        assert one == two
        assert 1 == provider.fetches

    async def test_fetch_before_invalidation_is_not_stored(
        self, g1: BalanceGuard, g2: BalanceGuard
    ) -> None:
        """A fetch that began before another guard invalidated is fetched again."""
        provider = InMemoryProvider(100, delay=0.3)
        fetching = asyncio.create_task(g1.balance(provider))
        await eventually(lambda: _true(provider.fetches == 1), "the fetch began")

        provider.balance = Decimal(40)
        await g2.invalidate(provider)

        assert Decimal(40) == (await fetching).amount
        assert 2 == provider.fetches
        assert Decimal(40) == (await g2.balance(provider)).amount

    async def test_waiter_takes_over_from_a_dead_fetcher(
        self, g1: BalanceGuard
    ) -> None:
        """A lock left by a dead fetcher holds others back only until it lapses."""
        provider = InMemoryProvider(100)
        lock = await _lock_key(g1, provider)
        await g1.store.client.set(lock, "dead", px=300)  # type: ignore[attr-defined]

        assert Decimal(100) == (await g1.balance(provider)).amount
        assert 1 == provider.fetches

    async def test_waiting_is_bounded(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """A waiter gives up after the fetch timeout with BalanceUnavailable."""
        provider = InMemoryProvider(100)
        async with make(addr, namespace, fetch_timeout=0.2) as guard:
            lock = await _lock_key(guard, provider)
            await guard.store.client.set(lock, "alive", px=10_000)  # type: ignore[attr-defined]

            with pytest.raises(BalanceUnavailable, match="another process"):
                await guard.balance(provider)

        assert 0 == provider.fetches

    async def test_failed_fetch_frees_the_lock(
        self, g1: BalanceGuard, g2: BalanceGuard
    ) -> None:
        """A fetch that fails gives up its lock at once."""
        provider = InMemoryProvider(100)
        provider.fail_next(times=3)

        with pytest.raises(BalanceUnavailable):
            await g1.balance(provider)

        assert Decimal(100) == (await g2.balance(provider)).amount

    async def test_thousand_calls_share_a_small_pool(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """1,000 concurrent calls through an 8-connection pool all get through."""
        provider = InMemoryProvider(10**6)
        async with make(addr, namespace, pool=8, settle="debit") as guard:

            async def call() -> None:
                async with guard.reserve(provider, 1):
                    await asyncio.sleep(0)

            await asyncio.gather(*(call() for _ in range(1000)))

            assert Decimal(10**6 - 1000) == (await guard.balance(provider)).amount
        assert 1 == provider.fetches


async def _true(value: bool) -> bool:
    return value


async def _lock_key(guard: BalanceGuard, provider: InMemoryProvider) -> str:
    store = guard.store
    assert isinstance(store, RedisStore)
    return store._keys(guard._track(provider).account)[4]


class TestRedisDown:
    async def test_down_fails_closed_then_recovers(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Redis down raises BalanceUnavailable; once back, calls work again."""
        provider = InMemoryProvider(100, name="oneclickdz")
        # After the restart, calls wait out the data-loss window (1.5 s).
        guard = make(("127.0.0.1", server.port), "down", fetch_timeout=2, lease=0.3)
        async with guard:
            hold = await acquire(guard, provider, Decimal(10))
            server.stop()

            with pytest.raises(BalanceUnavailable) as info:
                await acquire(guard, provider, Decimal(10))
            with caplog.at_level(logging.WARNING, logger="guard"):
                await settle(hold, ok=True)
            with pytest.raises(BalanceUnavailable):
                await guard.invalidate(provider)

            server.start()
            async with guard.reserve(provider, 90):
                pass

        assert "oneclickdz" == info.value.provider
        assert info.value.reason.startswith("cache unavailable: ")
        assert "could not release a hold" in caplog.text

    async def test_stalled_server_is_bounded(self, server: RedisServer) -> None:
        """A Redis that stops answering gives BalanceUnavailable after the timeout."""
        provider = InMemoryProvider(100)
        async with make(
            ("127.0.0.1", server.port), "stall", fetch_timeout=0.5
        ) as guard:
            hold = await acquire(guard, provider, Decimal(10))
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(BalanceUnavailable) as info:
                    await acquire(guard, provider, Decimal(10))
            finally:
                server.process.send_signal(signal.SIGCONT)
            await settle(hold, ok=False)
            # The unanswered hold may have been made after all: 90 still fit.
            async with guard.reserve(provider, 90):
                pass

        assert "cache unavailable: no answer within 0.5 s" == info.value.reason

    async def test_renewal_survives_an_outage(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Renewing while Redis is down logs a warning and keeps trying."""
        provider = InMemoryProvider(100)
        async with make(("127.0.0.1", server.port), "renew", lease=0.15) as guard:
            hold = await acquire(guard, provider, Decimal(10))
            server.stop()
            with caplog.at_level(logging.WARNING, logger="guard"):
                await asyncio.sleep(0.2)
            server.start()
            await settle(hold, ok=False)
            # One more round finds nothing left to renew.
            await asyncio.sleep(0.1)

        assert "could not renew holds" in caplog.text
        assert Decimal(0) == guard.held(provider)

    async def test_down_checks_per_process_under_open(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        With on_unavailable='open' and Redis down, calls are still checked
        against the provider, in process: said once per outage, not per call.
        """
        provider = InMemoryProvider(100)
        events: list[GuardEvent] = []
        async with make(
            ("127.0.0.1", server.port),
            "open",
            on_unavailable="open",
            hooks=[events.append],
        ) as guard:
            server.stop()
            with caplog.at_level(logging.WARNING, logger="guard"):
                async with guard.reserve(provider, 60), guard.reserve(provider, 30):
                    with pytest.raises(InsufficientBalance):
                        await guard.reserve(provider, 20).__aenter__()
            warnings = [r for r in caplog.records if "unreachable" in r.message]
            assert guard.store.down  # type: ignore[attr-defined]

            server.start()
            await asyncio.sleep(1.1)  # the shared store is tried again
            async with guard.reserve(provider, 10):
                assert not guard.store.down  # type: ignore[attr-defined]

        kinds = [e.kind for e in events]
        assert "failed_open" not in kinds
        assert 1 == kinds.count("degraded")
        assert 1 == kinds.count("refused")
        assert 1 == len(warnings)

    async def test_back_from_an_outage_counts_the_stand_ins_calls(
        self, server: RedisServer
    ) -> None:
        """
        Redis back while a call the stand-in admitted still runs: checks in
        Redis cover its amount too, until it settles.
        """
        provider = InMemoryProvider(100)
        async with make(
            ("127.0.0.1", server.port), "back", on_unavailable="open", settle="debit"
        ) as guard:
            server.stop()
            async with guard.reserve(provider, 60):
                server.start()
                await asyncio.sleep(1.1)  # the shared store is tried again
                with pytest.raises(InsufficientBalance):
                    await guard.reserve(provider, 50).__aenter__()
                assert not guard.store.down  # type: ignore[attr-defined]
            async with guard.reserve(provider, 50):
                pass

    async def test_down_with_the_provider_fails_open(self, server: RedisServer) -> None:
        """Only when the provider is unreachable too does a call go unchecked."""
        provider = InMemoryProvider(100)
        provider.fail_next(times=10)
        events: list[GuardEvent] = []
        async with make(
            ("127.0.0.1", server.port),
            "open2",
            on_unavailable="open",
            hooks=[events.append],
            retries=0,
        ) as guard:
            server.stop()
            ran = []
            async with guard.reserve(provider, 10):
                ran.append(True)

        assert [True] == ran
        assert ["degraded", "unavailable", "failed_open", "settled"] == [
            e.kind for e in events
        ]

    async def test_down_fails_closed_without_a_stand_in(
        self, server: RedisServer
    ) -> None:
        """Under 'closed' a Redis that is down refuses calls: no stand-in."""
        async with make(("127.0.0.1", server.port), "closed") as guard:
            assert isinstance(guard.store, RedisStore)

    async def test_restart_mid_run_stays_correct(
        self, server: RedisServer, emu: Emulator
    ) -> None:
        """Top-ups fail closed while Redis is down and never overspend after."""
        provider = emu.oneclickdz(KEY)
        results: dict[str, int] = {"ok": 0, "refused": 0, "unavailable": 0}
        async with (
            make(
                ("127.0.0.1", server.port), "restart", fetch_timeout=2, lease=0.6
            ) as guard,
            aiohttp.ClientSession() as session,
        ):

            async def topup(amount: int) -> None:
                async with guard.reserve(provider, amount):
                    await send(session, emu, amount)

            async def wave() -> None:
                async def one() -> None:
                    try:
                        await topup(400)
                        results["ok"] += 1
                    except InsufficientBalance:
                        results["refused"] += 1
                    except BalanceUnavailable:
                        results["unavailable"] += 1

                await asyncio.gather(*(one() for _ in range(10)))

            await wave()
            server.stop()
            await wave()
            server.start()
            await wave()
            await wave()

        # The wave while Redis is down fails closed; after the restart, what
        # went through is exactly what the provider debited, never more.
        assert 40 == sum(results.values())
        assert results["unavailable"] >= 10
        assert Decimal(10_000 - 400 * results["ok"]) == emu.balance(KEY)
        assert emu.balance(KEY) >= 0

    async def test_close_leaks_no_connection(self, server: RedisServer) -> None:
        """Closing the guard closes every connection it opened, without warnings."""
        provider = InMemoryProvider(100)
        async with make(("127.0.0.1", server.port), "close", pool=4) as guard:
            await asyncio.gather(*(guard.balance(provider) for _ in range(10)))
            assert 0 < server.connected_clients()

        assert 0 == server.connected_clients()

    async def test_fetch_from_before_a_data_loss_is_not_stored(
        self, server: RedisServer
    ) -> None:
        """A fetch that began before Redis lost its data is not stored after it."""
        provider = HeldBack(1000)
        addr = ("127.0.0.1", server.port)
        # Invalidating settles: each bumps the generation, as the loss must.
        async with (
            make(addr, "loss", settle="invalidate") as slow,
            make(addr, "loss", settle="invalidate") as other,
        ):
            for _ in range(3):
                await slow.invalidate(provider)
            fetching = asyncio.create_task(slow.balance(provider))
            await provider.answered.wait()
            server.stop()
            server.start()
            # As many invalidations as before the loss, each after a spend.
            for _ in range(3):
                async with other.reserve(provider, 300):
                    provider.spend(300)
            provider.go.set()

            assert Decimal(100) == (await fetching).amount
            with pytest.raises(InsufficientBalance):
                await acquire(other, provider, Decimal(300))

    async def test_holds_lost_by_redis_come_back(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Holds of running calls that Redis lost are put back and counted again."""
        provider = InMemoryProvider(1000)
        addr = ("127.0.0.1", server.port)
        async with (
            make(addr, "lost", lease=0.3) as running,
            make(addr, "lost", lease=0.3) as other,
        ):
            hold = await acquire(running, provider, Decimal(600))
            await other.balance(provider)
            server.stop()
            server.start()

            async def back() -> bool:
                return any(k.endswith(":h") for k in await keys(addr, "lost"))

            with caplog.at_level(logging.WARNING, logger="guard"):
                await eventually(back, "the hold was put back", limit=5)
            with pytest.raises(InsufficientBalance) as info:
                await acquire(other, provider, Decimal(600))
            await settle(hold, ok=False)

        assert Decimal(400) == info.value.available
        assert "put back" in caplog.text

    async def test_close_lets_calls_on_their_way_finish(
        self, server: RedisServer
    ) -> None:
        """Closing while settles wait for Redis lets them finish and leaks nothing."""
        provider = InMemoryProvider(1000)
        addr = ("127.0.0.1", server.port)
        guard = make(addr, "inflight", pool=4)
        holds = [await acquire(guard, provider, Decimal(1)) for _ in range(4)]
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            settles = [asyncio.create_task(settle(h, ok=True)) for h in holds]
            closing = asyncio.create_task(guard.aclose())
            for _ in range(10):  # until close waits for the settles
                await asyncio.sleep(0)
        finally:
            server.process.send_signal(signal.SIGCONT)
        await closing

        assert [None] * 4 == await asyncio.gather(*settles)
        assert 0 == server.connected_clients()
        assert not any(k.endswith(":h") for k in await keys(addr, "inflight"))

    def test_guard_moves_to_a_new_loop(self, server: RedisServer) -> None:
        """A guard whose event loop ended works on the next, queueing included."""
        provider = InMemoryProvider(10**6)
        guard = make(("127.0.0.1", server.port), "loops", pool=2, settle="debit")

        async def burst() -> None:
            async def one() -> None:
                hold = await acquire(guard, provider, Decimal(1))
                await settle(hold, ok=True)

            await asyncio.gather(*(one() for _ in range(20)))
            # A call this loop never settles.
            await acquire(guard, provider, Decimal(1))

        asyncio.run(burst())
        asyncio.run(burst())
        asyncio.run(guard.aclose())

        assert 0 == server.connected_clients()
        # The unsettled calls' holds were given back.
        assert Decimal(0) == guard.held(provider)
        with redis.Redis(port=server.port) as client:
            assert [] == client.keys("*loops*:h")

    async def test_another_running_loop_is_refused(self, g1: BalanceGuard) -> None:
        """The store, in use by a running loop, refuses calls from another one."""
        provider = InMemoryProvider(100)
        await g1.balance(provider)
        store = g1.store
        account = g1._track(provider).account

        def elsewhere() -> object:
            return asyncio.run(store.read(account))

        with pytest.raises(BalanceUnavailable, match="another loop"):
            await asyncio.to_thread(elsewhere)

    async def test_closed_store_refuses_calls(self, g1: BalanceGuard) -> None:
        """A closed store refuses calls; closing it again does nothing."""
        provider = InMemoryProvider(100)
        await g1.balance(provider)
        await g1.aclose()
        await g1.store.close()

        with pytest.raises(BalanceUnavailable, match="closed"):
            await g1.store.read(g1._track(provider).account)


class TestDataLoss:
    @pytest.mark.parametrize("how", ["restart", "flushall"])
    async def test_no_admission_until_holders_renew(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture, how: str
    ) -> None:
        """After Redis loses its data, a running call's amount is not admitted again."""
        provider = InMemoryProvider(1000)
        addr = ("127.0.0.1", server.port)
        # Renewals every second; the window after a loss is 1.5 s.
        async with (
            make(addr, "loss", lease=3) as holder,
            make(addr, "loss", lease=3) as other,
        ):
            async with other.reserve(provider, 1):  # it has used the account
                pass
            hold = await acquire(holder, provider, Decimal(800))
            if how == "restart":
                server.stop()
                server.start()
            else:
                with redis.Redis(port=server.port) as client:
                    client.flushall()

            with (
                caplog.at_level(logging.WARNING, logger="guard"),
                pytest.raises(InsufficientBalance) as info,
            ):
                await acquire(other, provider, Decimal(800))
            await settle(hold, ok=False)
            losses = (holder.store.data_losses, other.store.data_losses)  # type: ignore[attr-defined]

        assert Decimal(200) == info.value.available
        assert (1, 1) == losses
        assert 2 == caplog.text.count("Redis lost guard's data")

    async def test_new_account_is_admitted_at_once(self, server: RedisServer) -> None:
        """An account no process knew is used at once: no window without a loss."""
        provider = InMemoryProvider(1000)
        async with make(("127.0.0.1", server.port), "new", lease=60) as guard:
            async with asyncio.timeout(1):
                hold = await acquire(guard, provider, Decimal(800))
            await settle(hold, ok=False)

            assert 0 == guard.store.data_losses  # type: ignore[attr-defined]

    async def test_window_longer_than_the_wait_fails_fast(
        self, server: RedisServer
    ) -> None:
        """A loss window longer than the fetch timeout fails the check at once."""
        provider = InMemoryProvider(1000)
        async with make(
            ("127.0.0.1", server.port), "long", lease=60, fetch_timeout=1
        ) as guard:
            async with guard.reserve(provider, 1):
                pass
            server.stop()
            server.start()

            async with asyncio.timeout(0.5):
                with pytest.raises(BalanceUnavailable, match="lost its data") as info:
                    await acquire(guard, provider, Decimal(1))

        assert info.value.retry_after is not None
        assert 19 < info.value.retry_after <= 20.5


class LoopThread:
    """
    An event loop in a daemon thread, as the sync API runs guards on
    (``guard/_sync.py``): calls are submitted to it from other threads.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def in_child(job: Callable[[], object]) -> dict[str, Any]:
    """
    Run *job* in a child made by ``os.fork()``; return what it returned, or
    the error it raised, as the child reported it through a pipe.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - in the child
        signal.alarm(20)  # never outlive a hung job
        try:
            report = {"ok": job()}
        except BaseException as exc:  # reported to the parent
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(report, default=str).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert 0 == status, data
    result: dict[str, Any] = json.loads(data)
    return result


async def spend(guard: BalanceGuard, provider: InMemoryProvider, amount: int) -> str:
    """
    Run one guarded call of *amount*; say how it went.
    """
    try:
        async with guard.reserve(provider, amount):
            pass
    except InsufficientBalance as exc:
        return f"refused, {exc.available} available"
    return "spent"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
class TestFork:
    @pytest.mark.parametrize("in_flight", [False, True], ids=["idle", "in-flight"])
    def test_child_uses_the_guard_on_its_own_loop(
        self, addr: tuple[str, int], namespace: str, in_flight: bool
    ) -> None:
        """A forked child's calls work on its own loop; the parent's are untouched."""
        provider = InMemoryProvider(1000)
        guard = make(addr, namespace, settle="debit")
        portal = LoopThread()
        holding = threading.Event()
        done = threading.Event()

        async def hold_until_done() -> str:
            async with guard.reserve(provider, 600):
                holding.set()
                await asyncio.to_thread(done.wait, 10)
            return "spent"

        def child() -> list[str]:
            # What guard/_sync.py does in a child: forget the parent's loop,
            # and start a loop thread of its own.
            guard._forget_loop()
            own = LoopThread()
            return [
                own.run(spend(guard, provider, 300)),
                own.run(spend(guard, provider, 500)),
            ]

        try:
            assert "spent" == portal.run(spend(guard, provider, 1))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                running = pool.submit(portal.run, hold_until_done())
                if in_flight:
                    assert holding.wait(5)
                else:
                    done.set()
                    assert "spent" == running.result(5)

                report = in_child(child)

                done.set()
                assert "spent" == running.result(10)
            after = portal.run(spend(guard, provider, 1))
            portal.run(guard.aclose())
        finally:
            done.set()
            portal.stop()

        # 999 less the parent's 600 (held in flight, or spent before).
        assert {"ok": ["spent", "refused, 99 available"]} == report
        assert "spent" == after


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
class TestForkSyncAPI:
    @pytest.mark.parametrize("in_flight", [False, True], ids=["idle", "in-flight"])
    def test_child_calls_through_the_sync_api(
        self, addr: tuple[str, int], namespace: str, in_flight: bool
    ) -> None:
        """After a fork, the sync API works in the child, idle or not at the fork."""
        provider = InMemoryProvider(1000)
        guard = make(addr, namespace, settle="debit")
        holding = threading.Event()
        done = threading.Event()

        def hold_until_done() -> None:
            with require_balance(provider, 600, guard=guard):
                holding.set()
                done.wait(10)

        @require_balance(provider, 300, guard=guard)
        def send() -> str:
            return "spent"

        def child() -> list[str]:
            spent = send()
            try:
                with require_balance(provider, 500, guard=guard):
                    return [spent, "spent"]
            except InsufficientBalance as exc:
                return [spent, f"refused, {exc.available} available"]

        with require_balance(provider, 1, guard=guard):
            pass
        worker = threading.Thread(target=hold_until_done)
        worker.start()
        try:
            if in_flight:
                assert holding.wait(5)
            else:
                done.set()
                worker.join(5)
            report = in_child(child)
        finally:
            done.set()
            worker.join(10)
        with require_balance(provider, 1, guard=guard):
            pass
        close_guard(guard)

        assert {"ok": ["spent", "refused, 99 available"]} == report


class TestSetup:
    def test_needs_redis_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without redis-py a RedisCache names the extra to install."""
        cache = RedisCache()
        for name in list(sys.modules):
            if name.startswith("guard.stores.redis"):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "redis.asyncio", None)

        with pytest.raises(ConfigurationError, match=r"pip install guard\[redis\]"):
            BalanceGuard(cache=cache)

    async def test_lease_must_be_positive(self) -> None:
        """A lease of zero seconds is refused."""
        with pytest.raises(ConfigurationError, match="lease"):
            BalanceGuard(lease=0)

    async def test_repr(self, g1: BalanceGuard) -> None:
        """The store's repr shows its ttl and lease."""
        assert "<RedisStore ttl=30 lease=60>" == repr(g1.store)


# -- several processes ---------------------------------------------------------


async def send(session: aiohttp.ClientSession, emu: Emulator, amount: int) -> None:
    async with session.post(
        f"{emu.url}/v3/mobile/send",
        headers={"X-Access-Token": KEY},
        json={"plan_code": "TEST", "MSSIDN": "0550000000", "amount": amount},
    ) as response:
        body = await response.json()
    assert body["success"], body


async def spawn(job: dict[str, Any]) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        json.dumps(job),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )


async def outcome(process: asyncio.subprocess.Process) -> dict[str, Any]:
    out, _ = await process.communicate()
    assert 0 == process.returncode
    result: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return result


@pytest.fixture(name="job")
def _job(addr: tuple[str, int], namespace: str, emu: Emulator) -> dict[str, Any]:
    return {
        "host": addr[0],
        "port": addr[1],
        "namespace": namespace,
        "url": emu.url,
        "key": KEY,
    }


class TestProcesses:
    async def test_four_workers_never_overspend(
        self, job: dict[str, Any], emu: Emulator
    ) -> None:
        """4 processes x 100 concurrent top-ups spend the balance, never more."""
        workers = [
            await spawn(
                {**job, "job": "topups", "n": 100, "seed": i, "settle": "debit"}
            )
            for i in range(4)
        ]

        results = [await outcome(w) for w in workers]

        sent = sum(Decimal(r["sent"]) for r in results)
        assert [] == [code for r in results for code in r["emulator"]]
        assert 10_000 >= sent >= 10_000 - 300
        assert Decimal(10_000) - sent == emu.balance(KEY)
        assert 400 == sum(r["ok"] + r["refused"] for r in results)

    async def test_killed_holder_lapses(
        self, job: dict[str, Any], addr: tuple[str, int], namespace: str
    ) -> None:
        """A worker killed while holding blocks its amount only until its lease ends."""
        holder = await spawn({**job, "job": "hold", "amount": 9000, "lease": 1.0})
        assert holder.stdout is not None
        assert b"held\n" == await holder.stdout.readline()
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        async with make(addr, namespace) as guard:
            provider = OneClickDZ(KEY, base_url=job["url"])
            with pytest.raises(InsufficientBalance):
                await acquire(guard, provider, Decimal(2000))

            async def fits() -> bool:
                try:
                    hold = await acquire(guard, provider, Decimal(2000))
                except InsufficientBalance:
                    return False
                await settle(hold, ok=False)
                return True

            await eventually(fits, "the killed worker's hold lapsed")

    async def test_single_flight_across_processes(
        self, job: dict[str, Any], emu: Emulator
    ) -> None:
        """Two processes missing at once make one balance request."""
        emu.fail("oneclickdz.balance", Fault.slow(1.0))
        workers = [await spawn({**job, "job": "balance"}) for _ in range(2)]
        for worker in workers:
            assert worker.stdout is not None
            assert b"ready\n" == await worker.stdout.readline()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()

        results = [await outcome(w) for w in workers]

        assert [{"balance": "10000"}] * 2 == results
        assert 1 == emu.count("oneclickdz.balance")

    async def test_invalidation_beats_a_slow_fetch_across_processes(
        self, job: dict[str, Any], emu: Emulator, g1: BalanceGuard
    ) -> None:
        """A worker's fetch that began before our invalidation is not stored."""
        emu.fail("oneclickdz.balance", Fault.slow(1.0))
        worker = await spawn({**job, "job": "balance"})
        assert worker.stdout is not None
        assert worker.stdin is not None
        assert b"ready\n" == await worker.stdout.readline()
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
        await eventually(
            lambda: _true(emu.count("oneclickdz.balance") == 1), "the fetch began"
        )

        await g1.invalidate(OneClickDZ(KEY, base_url=job["url"]))

        assert {"balance": "10000"} == await outcome(worker)
        assert 2 == emu.count("oneclickdz.balance")
