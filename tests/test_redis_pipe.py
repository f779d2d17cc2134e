"""
The Redis store's shared connection (auto-pipelining) and the settles it
sends in the background, on a real Redis (through a proxy that can delay,
lose or refuse replies).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from _redis_server import RedisServer
from aiocache import RedisCache
from test_redis import _addr, _namespace, _proxy, make  # noqa: F401 - fixtures

from guard import BalanceGuard, BalanceUnavailable, InsufficientBalance
from guard.stores.redis._scripts import keys_of
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from _redis_server import RedisProxy

pytestmark = pytest.mark.redis


async def in_redis(
    addr: tuple[str, int], guard: BalanceGuard, provider: InMemoryProvider
) -> tuple[str | None, int]:
    """The balance's units and the sum held, read straight from Redis."""
    store: Any = guard.store
    store = getattr(store, "shared", store)  # a FallbackStore's
    keys = keys_of(store.key_prefix, guard._track(provider).account.key)
    async with aioredis.Redis(host=addr[0], port=addr[1], decode_responses=True) as r:
        units = await r.hget(keys[0], "u")
        return units, int(await r.get(keys[3]) or 0)


def units(amount: int) -> str:
    return str(amount * 10_000)


async def spend(guard: BalanceGuard, provider: InMemoryProvider, amount: int) -> None:
    async with guard.reserve(provider, amount):
        pass


class TestBackgroundSettle:
    @pytest.mark.parametrize("policy", ["closed", "open"])
    async def test_settle_returns_before_redis_answers(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy, policy: str
    ) -> None:
        """
        A debit settles without waiting for Redis (under either policy); the
        hold keeps the amount out of another process's reach until the
        release lands.
        """
        provider = InMemoryProvider(100)
        async with (
            make(
                ("127.0.0.1", proxy.port),
                namespace,
                settle="debit",
                on_unavailable=policy,
            ) as guard,
            make(addr, namespace) as other,
        ):
            await spend(guard, provider, 1)
            await guard.balance(provider)  # the first release has landed
            proxy.delay = 0.5
            block = guard.reserve(provider, 60)
            await block.__aenter__()
            loop = asyncio.get_running_loop()
            began = loop.time()
            await block.__aexit__(None, None, None)

            assert loop.time() - began < 0.25
            assert 0 == guard.held(provider)
            with pytest.raises(InsufficientBalance):
                async with other.reserve(provider, 50):
                    pass
            # Sent after the release on the same connection: it sees it.
            assert Decimal(39) == (await guard.balance(provider)).amount
            proxy.delay = 0
        assert (units(39), 0) == await in_redis(addr, guard, provider)

    async def test_settle_in_flight_at_close_lands(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy
    ) -> None:
        """
        Closing the guard waits for the settles on their way: one that has
        not reached Redis yet when close() begins lands.
        """
        provider = InMemoryProvider(100)
        async with make(("127.0.0.1", proxy.port), namespace, settle="debit") as guard:
            await spend(guard, provider, 1)
            await guard.balance(provider)
            proxy.delay_up = 0.3  # the proxy forwards it after 0.3 s
            await spend(guard, provider, 10)
        assert (units(89), 0) == await in_redis(addr, guard, provider)

    async def test_lost_settle_is_sent_again(
        self,
        addr: tuple[str, int],
        namespace: str,
        proxy: RedisProxy,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """
        A release that never reached Redis is sent again once Redis can be
        reached; meanwhile its hold keeps the amount reserved.
        """
        provider = InMemoryProvider(100)
        caplog.set_level(logging.WARNING, logger="guard")
        async with (
            make(("127.0.0.1", proxy.port), namespace, settle="debit") as guard,
            make(addr, namespace) as other,
        ):
            await spend(guard, provider, 1)
            await guard.balance(provider)
            block = guard.reserve(provider, 80)
            await block.__aenter__()
            proxy.refuse = True
            await block.__aexit__(None, None, None)
            for _ in range(100):
                if "could not release a hold" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            assert "could not release a hold" in caplog.text
            with pytest.raises(InsufficientBalance):
                async with other.reserve(provider, 50):
                    pass
            proxy.refuse = False

            for _ in range(150):  # retried every second
                if (await in_redis(addr, guard, provider))[1] == 0:
                    break
                await asyncio.sleep(0.02)
            assert (units(19), 0) == await in_redis(addr, guard, provider)

    async def test_settle_of_an_ended_loop_is_sent_from_the_next(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """
        A settle still queued when its event loop ended is sent again from
        the loop the guard is used on next.
        """
        provider = InMemoryProvider(100)
        guard = make(addr, namespace, settle="debit")

        async def first() -> None:
            await spend(guard, provider, 1)
            await guard.balance(provider)
            block = guard.reserve(provider, 10)
            await block.__aenter__()
            await block.__aexit__(None, None, None)
            # The loop ends before the release is written.

        async def second() -> tuple[str | None, int]:
            await guard.balance(provider)  # adopts this loop
            for _ in range(150):
                found = await in_redis(addr, guard, provider)
                if found[1] == 0:
                    break
                await asyncio.sleep(0.02)
            await guard.aclose()
            return found

        await asyncio.to_thread(asyncio.run, first())
        units_left, held = await asyncio.to_thread(asyncio.run, second())
        assert 0 == held
        # Sent again, it may have run before: the balance is debited, or was
        # dropped (and then fetched again by second()'s first call).
        assert units_left in (units(89), units(100), None)


class TestSharedConnection:
    @pytest.mark.parametrize("mode", ["debit", "refresh"])
    async def test_holds_stop_concurrent_overspend(
        self, addr: tuple[str, int], namespace: str, mode: str
    ) -> None:
        """
        50 concurrent 100 DZD spends on 1,000 DZD, settled in the
        background: 10 run, 40 are refused, the provider never goes below 0.
        """
        provider = InMemoryProvider(1000)
        async with make(addr, namespace, settle=mode) as guard:

            async def call() -> str:
                async with guard.reserve(provider, 100):
                    await asyncio.sleep(0.01)
                    provider.spend(100)
                    assert provider.balance >= 0
                return "sent"

            results = await asyncio.gather(
                *(call() for _ in range(50)), return_exceptions=True
            )
            again = await asyncio.gather(
                *(call() for _ in range(5)), return_exceptions=True
            )

        assert 10 == results.count("sent")
        assert 40 == sum(isinstance(r, InsufficientBalance) for r in results)
        assert all(isinstance(r, InsufficientBalance) for r in again)
        assert Decimal(0) == provider.balance

    async def test_concurrent_calls_share_one_connection_in_order(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """
        100 concurrent calls go out on one connection, and what each call
        sends after its settle sees that settle.
        """
        provider = InMemoryProvider(1000)
        async with make(addr, namespace, settle="debit") as guard:
            await spend(guard, provider, 1)
            seen: list[Decimal] = []

            async def call() -> None:
                async with guard.reserve(provider, 1):
                    await asyncio.sleep(0)
                seen.append((await guard.balance(provider)).amount)

            await asyncio.gather(*(call() for _ in range(100)))
            wire: Any = guard.store._wire  # type: ignore[attr-defined]
            pool = wire._main.pool
            connections = len(pool._in_use_connections) + len(
                pool._available_connections
            )

            assert Decimal(899) == (await guard.balance(provider)).amount
        assert 1 == provider.fetches  # no settle was lost or sent twice
        assert connections <= 2  # the first call's, made the shared one
        # Each call's read came after its own release and those before it.
        assert all(amount <= Decimal(998) for amount in seen)
        assert Decimal(899) == min(seen)

    async def test_late_reply_gives_the_connection_up(
        self, addr: tuple[str, int], namespace: str, proxy: RedisProxy
    ) -> None:
        """
        A reply later than the timeout fails the calls waiting on the shared
        connection; the next call connects afresh.
        """
        provider = InMemoryProvider(100)
        cache = RedisCache(endpoint="127.0.0.1", port=proxy.port, timeout=0.3)
        async with BalanceGuard(
            cache=cache, namespace=namespace, settle="debit"
        ) as guard:
            await spend(guard, provider, 1)
            proxy.delay = 1.0
            with pytest.raises(BalanceUnavailable, match=r"no answer within 0\.3 s"):
                await guard.balance(provider)
            proxy.delay = 0
            assert Decimal(100) == (await guard.balance(provider, fresh=True)).amount

    async def test_a_server_that_stops_answering(self) -> None:
        """
        Calls waiting on the shared connection of a server that stopped
        (SIGSTOP) fail within the timeout, and work again once it is back.
        """
        server = RedisServer()
        server.start()
        try:
            provider = InMemoryProvider(100)
            cache = RedisCache(endpoint="127.0.0.1", port=server.port, timeout=0.3)
            async with BalanceGuard(
                cache=cache, namespace="stop", settle="debit"
            ) as guard:
                await spend(guard, provider, 1)
                await guard.balance(provider)  # the release has landed
                assert server.process is not None
                server.process.send_signal(signal.SIGSTOP)
                try:
                    results = await asyncio.gather(
                        *(guard.balance(provider) for _ in range(5)),
                        return_exceptions=True,
                    )
                finally:
                    server.process.send_signal(signal.SIGCONT)
                assert all(isinstance(r, BalanceUnavailable) for r in results)
                assert Decimal(99) == (await guard.balance(provider)).amount
        finally:
            server.stop()

    async def test_without_hiredis(self, addr: tuple[str, int], namespace: str) -> None:
        """
        With redis-py's own reply parser (no hiredis), a task reads the
        shared connection's replies: calls and background settles work alike,
        and a lost connection is replaced.
        """
        from redis._parsers import _AsyncRESP2Parser

        provider = InMemoryProvider(1000)
        async with make(addr, namespace, settle="debit") as guard:
            wire: Any = guard.store._wire  # type: ignore[attr-defined]
            wire._main.pool.connection_kwargs["parser_class"] = _AsyncRESP2Parser
            await spend(guard, provider, 1)
            pipe = wire._main.pipe
            assert pipe is not None
            assert pipe._reader is not None

            await asyncio.gather(*(spend(guard, provider, 1) for _ in range(50)))
            assert Decimal(949) == (await guard.balance(provider)).amount

            pipe.conn._writer.transport.abort()  # the connection lost
            # Sent on it, then again on a pooled connection, which is then
            # shared in its place.
            assert Decimal(949) == (await guard.balance(provider)).amount
            assert pipe.error is not None
            assert wire._main.pipe is not pipe

    async def test_a_demoted_primary(self) -> None:
        """
        A server that turned replica (READONLY) gives the shared connection
        up: the call fails, and works again on the server once it is a
        primary again.
        """
        server = RedisServer()
        server.start()
        try:
            provider = InMemoryProvider(100)
            cache = RedisCache(endpoint="127.0.0.1", port=server.port)
            async with BalanceGuard(
                cache=cache, namespace="demoted", settle="debit"
            ) as guard:
                await spend(guard, provider, 1)
                wire: Any = guard.store._wire  # type: ignore[attr-defined]
                pipe = wire._main.pipe
                admin = aioredis.Redis(port=server.port)
                try:
                    await admin.replicaof("127.0.0.1", 1)  # a primary never found
                    with pytest.raises(BalanceUnavailable, match="read only replica"):
                        await spend(guard, provider, 1)
                    assert pipe.error is not None
                    await admin.replicaof("NO", "ONE")
                finally:
                    await admin.aclose()
                await spend(guard, provider, 1)
                assert Decimal(98) == (await guard.balance(provider)).amount
        finally:
            server.stop()
