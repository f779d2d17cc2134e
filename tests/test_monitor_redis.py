"""
Fleet-wide alerts: the alert state in a real Redis, changed by one script
per reading, so that several processes each running a monitor on one
account deliver each alert once between them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from _redis_server import delete_namespace, machine_redis

from guard import BalanceAlert, BalanceGuard, BalanceMonitor, Threshold
from guard.monitor._redis_state import (
    KEEP_SECONDS,
    RedisAlertState,
    alerts_key,
    redis_of,
)
from guard.monitor._state import Wish
from guard.stores import MemoryStore
from guard.testing import InMemoryProvider

pytestmark = pytest.mark.redis

PROCESSES = 4
START = 5000
SPEND = 250
THRESHOLDS = (("3000", "warning"), ("1000", "critical"), ("4000", "notice"))


@pytest.fixture(name="server")
def _server() -> Iterator[tuple[str, int, str]]:
    host, port = machine_redis()
    namespace = f"guard-test-monitor-{uuid.uuid4().hex[:8]}"
    try:
        yield host, port, namespace
    finally:
        delete_namespace(host, port, namespace)


class SharedAlertsStore(MemoryStore):
    """
    Balances and holds in this process, alert state in Redis: what a
    Redis-backed store offers the monitor (``client``, ``key_prefix``),
    without depending on one.
    """

    def __init__(self, client: aioredis.Redis, key_prefix: str) -> None:
        super().__init__()
        self.client = client
        self.key_prefix = key_prefix

    async def close(self) -> None:
        await super().close()
        await self.client.aclose()


class TestAccessor:
    def test_memory_store_has_no_redis(self) -> None:
        """A store without a redis-py client keeps the alert state in memory."""
        assert redis_of(MemoryStore()) is None

        class Odd(MemoryStore):
            client = object()

        assert redis_of(Odd()) is None

    async def test_redis_client_and_prefix(self) -> None:
        """A store with a redis-py client shares its alert state, under its prefix."""
        client = aioredis.Redis()
        try:
            store = SharedAlertsStore(client, "p:")
            assert (client, "p:") == redis_of(store)
            store.key_prefix = None  # type: ignore[assignment]
            assert (client, "") == redis_of(store)
        finally:
            await client.aclose()
        assert "{p:guard:oneclickdz:abc}:alerts" == alerts_key(
            "p:", "guard:oneclickdz:abc"
        )


class TestScript:
    async def test_compare_and_set(self, server: tuple[str, int, str]) -> None:
        """Only a wish that changes the state is a transition; stale ones are not."""
        host, port, namespace = server
        client = aioredis.Redis(host=host, port=port)
        try:
            state = RedisAlertState(client, "")
            account = f"{namespace}:oneclickdz:abc"
            fire = [Wish("a", fire=True), Wish("b", fire=True)]
            first = await state.apply(account, 1000, fire)
            assert (("a", "b"), (), frozenset({"a", "b"})) == (
                first.fired,
                first.armed,
                first.now_fired,
            )
            again = await state.apply(account, 1000, fire)
            assert ((), ()) == (again.fired, again.armed)
            stale = await state.apply(account, 999, [Wish("a", fire=False)])
            assert stale.now_fired is None
            arm = await state.apply(account, 2000, [Wish("a", fire=False)])
            assert (("a",), frozenset({"b"})) == (arm.armed, arm.now_fired)
            key = alerts_key("", account)
            assert 0 < await client.ttl(key) <= KEEP_SECONDS
            assert {b"@t": b"2000", b"a": b"0", b"b": b"1"} == await client.hgetall(key)
        finally:
            await client.aclose()

    async def test_redis_down(self, caplog: pytest.LogCaptureFixture) -> None:
        """Redis unreachable: the reading is skipped with a WARNING, nothing breaks."""
        client = aioredis.Redis(port=1, socket_connect_timeout=0.2)
        provider = InMemoryProvider(500, name="memory")
        store = SharedAlertsStore(client, "")
        async with BalanceGuard(store=store) as g, BalanceMonitor(guard=g) as monitor:
            monitor.watch(provider, [Threshold(1000)])
            await g.balance(provider)
            await monitor.flush()
            assert monitor.level("memory", g.accounts()[0].account) is None
        assert "alert state not updated" in caplog.text
        assert "could not be updated: ConnectionError" in caplog.text


def _walk() -> list[int]:
    steps = [START - SPEND * i for i in range(1, START // SPEND + 1)]
    assert 0 == steps[-1]
    return steps


def _worker(
    host: str,
    port: int,
    namespace: str,
    barrier: Any,
    results: Any,
    redis_guard: bool,
) -> None:
    """
    One process of the fleet: a guard, a monitor, the same walk as the
    others. With *redis_guard*, the guard's own store is Redis (balances,
    holds and alert state shared); otherwise only the alert state is.
    """

    async def main() -> list[tuple[str, str, str]]:
        delivered: list[BalanceAlert] = []
        provider = InMemoryProvider(START, name="oneclickdz", account_id="fleet")
        loop = asyncio.get_running_loop()

        async def step() -> None:
            await monitor.flush()
            await loop.run_in_executor(None, barrier.wait, 30)

        if redis_guard:
            from aiocache import RedisCache

            # Each settle forgets the balance, so every process's next call
            # reads the walk's balance from the provider.
            made = BalanceGuard(
                cache=RedisCache(endpoint=host, port=port),
                namespace=namespace,
                settle="invalidate",
            )
            assert redis_of(made.store) is not None
        else:
            store = SharedAlertsStore(aioredis.Redis(host=host, port=port), "")
            made = BalanceGuard(store=store, namespace=namespace, settle="invalidate")
        async with made as g:
            monitor = BalanceMonitor(guard=g, interval=300)
            monitor.watch(
                provider,
                [Threshold(b, level=lv) for b, lv in THRESHOLDS],
                notify=[delivered.append],
            )
            async with monitor:
                await g.balance(provider)
                await step()
                # With a shared store the four hold on one balance at once:
                # each holds its share of the step, and spends it on its copy.
                share = Decimal(SPEND) / PROCESSES if redis_guard else SPEND
                for balance in _walk():
                    async with g.reserve(provider, share):
                        provider.spend(SPEND)
                    if redis_guard:
                        # Nobody reads its spent copy into the shared store
                        # before every process has held on the step before.
                        await loop.run_in_executor(None, barrier.wait, 30)
                    await g.balance(provider)  # what the next call would fetch
                    assert Decimal(balance) == provider.balance
                    await step()
                provider.balance = Decimal(START)
                await g.balance(provider, fresh=True)
                await step()
        return [(a.kind, a.level, str(a.threshold)) for a in delivered]

    results.put(asyncio.run(main()))


def _fleet(host: str, port: int, namespace: str, *, redis_guard: bool) -> None:
    """Run the walk in 4 processes; check the alerts delivered between them."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(host, port, namespace, barrier, results, redis_guard),
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    delivered = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert 0 == worker.exitcode
    every = sorted(alert for one in delivered for alert in one)
    assert [
        ("low", "critical", "1000"),
        ("low", "notice", "4000"),
        ("low", "warning", "3000"),
        ("recovered", "notice", "4000"),
    ] == every


class TestFleet:
    def test_four_processes_deliver_each_alert_once(
        self, server: tuple[str, int, str]
    ) -> None:
        """4 processes walking one account 5,000 -> 0 -> 5,000: 3 low + 1 recovered."""
        _fleet(*server, redis_guard=False)

    def test_four_redis_guards_deliver_each_alert_once(
        self, server: tuple[str, int, str]
    ) -> None:
        """The same with Redis-backed guards: the alert state follows their store."""
        host, port, namespace = server
        _fleet(host, port, namespace, redis_guard=True)
        keys = machine_keys(host, port, f"*{namespace}*:alerts")
        assert 1 == len(keys)
        assert keys[0].startswith("{")
        assert keys[0].endswith("}:alerts")


def machine_keys(host: str, port: int, pattern: str) -> list[str]:
    """The keys of the machine's Redis matching *pattern*."""
    import redis

    with redis.Redis(host=host, port=port) as client:
        return [k.decode() for k in client.scan_iter(match=pattern)]
