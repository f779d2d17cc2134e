"""
Held and available with a Redis store: what the running calls of every
process hold, read from a real Redis by the Prometheus collector, the
OpenTelemetry instruments and ``watch``; absent (never 0) while Redis is
down, and the scrape still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from _redis_server import RedisServer, delete_namespace, machine_redis
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from test_otel import Sdk
from test_prometheus import labels, parse

from guard import BalanceGuard
from guard._everywhere import MAX_AGE, held_everywhere, refresh
from guard._watch import Watcher
from guard.otel import instrument
from guard.prometheus import GuardCollector, metrics_handler
from guard.stores import FallbackStore, MemoryStore, RedisStore
from guard.stores.redis._scripts import keys_of
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from test_prometheus import MakeClient

    from guard.typing import Provider

pytestmark = pytest.mark.redis

KEY = "metrics-redis-secret-key-0123"


Where = tuple[str, str]  # a Redis URL, and the test's own namespace


@pytest.fixture(name="where")
def _where() -> Iterator[Where]:
    host, port = machine_redis()
    namespace = f"guard-test-metrics-{uuid.uuid4().hex[:8]}"
    yield f"redis://{host}:{port}", namespace
    delete_namespace(host, port, namespace)


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 1000)
        yield emu


def guard_on(where: Where, **options: Any) -> BalanceGuard:
    """A guard with a Redis store of its own: what another process would have."""
    url, namespace = where
    return BalanceGuard(redis=url, namespace=namespace, **options)


@contextlib.asynccontextmanager
async def holding(
    guard: BalanceGuard, provider: Provider, amount: int
) -> AsyncIterator[None]:
    """A guarded call running (its amount held) while the block runs."""
    async with guard.reserve(provider, amount):
        yield


def foreign_holds(guard: BalanceGuard, provider: Provider) -> tuple[str, str]:
    """The sorted set of holds and their sum, as every process sees them."""
    store = guard.store
    if isinstance(store, FallbackStore):
        store = store.shared
    assert isinstance(store, RedisStore)
    account = guard._track(provider).account
    keys = keys_of(store.key_prefix, account.key)
    return keys[2], keys[3]


class TestRedisWide:
    async def test_scrape_from_either_process_shows_the_total(
        self, where: Where, emu: Emulator, aiohttp_client: MakeClient
    ) -> None:
        """
        Two guards with their own Redis clients (two processes) hold on one
        account: a scrape of either shows what both hold, plus a third
        process's live hold, but not a dead process's expired one.
        """
        oneclick = emu.oneclickdz(KEY)
        async with (
            guard_on(where) as one,
            # A FallbackStore over Redis: its figure is Redis's too.
            guard_on(where, on_unavailable="open") as two,
        ):
            assert isinstance(two.store, FallbackStore)
            zset, total = foreign_holds(one, oneclick)
            await one.balance(oneclick)
            async with holding(one, oneclick, 100), holding(two, oneclick, 250):
                now_ms = int(time.time() * 1000)
                with redis.Redis.from_url(where[0]) as client:
                    # A third process's call, running; a dead one's, lapsed.
                    client.zadd(zset, {"other-1:300000": now_ms + 60_000})
                    client.zadd(zset, {"dead-1:7770000": now_ms - 1_000})
                    client.incrby(total, 300000 + 7770000)
                pages = []
                for guard in (one, two):
                    app = web.Application()
                    app.router.add_get("/metrics", metrics_handler(guard))
                    client_ = await aiohttp_client(app)
                    response = await client_.get("/metrics")
                    assert 200 == response.status
                    pages.append(parse(await response.text()))
                    assert guard.held(oneclick) in (100, 250)  # this process's
        for got, guard in zip(pages, (one, two), strict=True):
            (state,) = guard.accounts()
            assert 1000 == got["guard_balance", labels(state)]
            assert 380 == got["guard_balance_held", labels(state)]
            assert 620 == got["guard_balance_available", labels(state)]

    async def test_collector_on_a_plain_registry(
        self, where: Where, emu: Emulator
    ) -> None:
        """
        Registered on a registry served elsewhere: scraped from another
        thread it reads Redis then and there; on the guard's own loop it
        can't wait, so the first scrape has no figure (absent, not 0) and
        starts a read for the next one.
        """
        oneclick = emu.oneclickdz(KEY)
        async with guard_on(where) as one, guard_on(where) as two:
            registry = CollectorRegistry()
            registry.register(GuardCollector(one))
            async with holding(one, oneclick, 40), holding(two, oneclick, 60):
                (state,) = one.accounts()
                on_loop = parse(generate_latest(registry).decode())
                assert ("guard_balance_held", labels(state)) not in on_loop
                assert ("guard_balance_available", labels(state)) not in on_loop
                assert 1000 == on_loop["guard_balance", labels(state)]
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    later = parse(generate_latest(registry).decode())
                    if ("guard_balance_held", labels(state)) in later:
                        break
                assert 100 == later["guard_balance_held", labels(state)]
                await asyncio.sleep(1.1)  # past the read's reuse
                text = await asyncio.to_thread(generate_latest, registry)
                threaded = parse(text.decode())
        assert 100 == threaded["guard_balance_held", labels(state)]
        assert 900 == threaded["guard_balance_available", labels(state)]

    async def test_old_figure_not_shown(
        self, where: Where, emu: Emulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A figure older than MAX_AGE is absent: nothing reads Redis any more."""
        oneclick = emu.oneclickdz(KEY)
        async with guard_on(where) as guard:
            registry = CollectorRegistry()
            registry.register(GuardCollector(guard))
            async with holding(guard, oneclick, 10):
                await asyncio.to_thread(generate_latest, registry)
                (state,) = guard.accounts()
                clock = time.monotonic() + MAX_AGE + 1
                monkeypatch.setattr(time, "monotonic", lambda: clock)
                monkeypatch.setattr(
                    "guard._everywhere._read", lambda guard, figures: None
                )
                got = parse(generate_latest(registry).decode())
        assert ("guard_balance_held", labels(state)) not in got
        assert 1000 == got["guard_balance", labels(state)]

    async def test_otel_and_watch(self, where: Where, emu: Emulator) -> None:
        """The OpenTelemetry gauges (read from the SDK's thread) and watch agree."""
        oneclick = emu.oneclickdz(KEY)
        sdk = Sdk()
        async with guard_on(where) as one, guard_on(where) as two:
            instrument(one, meter_provider=sdk.meters, tracer_provider=sdk.tracers)
            async with holding(one, oneclick, 70), holding(two, oneclick, 30):
                points = await asyncio.to_thread(sdk.points)
                (reading,) = await Watcher(two, [oneclick]).poll()
            (state,) = one.accounts()
        attributes = frozenset(
            {
                "guard.provider": "oneclickdz",
                "guard.account": state.account,
                "guard.currency": "DZD",
            }.items()
        )
        assert 100 == points["guard.balance.held", attributes]
        assert 900 == points["guard.balance.available", attributes]
        assert (100, 900) == (reading.held, reading.available)
        assert "100" == reading.to_json()["held"]

    async def test_read_from_another_loop(self, where: Where, emu: Emulator) -> None:
        """A read from another thread's loop runs on the guard's, where its store is."""
        oneclick = emu.oneclickdz(KEY)
        async with guard_on(where) as guard, holding(guard, oneclick, 15):
            await asyncio.to_thread(asyncio.run, refresh(guard))
            figures = held_everywhere(guard)
            (state,) = guard.accounts()
        assert {(state.provider, state.account): 15} == figures

    def test_loop_ended(self, where: Where, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        Once the guard's loop has ended, nothing can read Redis: the figures
        last read are shown while fresh (and none after MAX_AGE, as above).
        """

        async def run() -> BalanceGuard:
            async with Emulator() as emu:
                emu.add_oneclickdz(KEY, 1000)
                oneclick = emu.oneclickdz(KEY)
                async with guard_on(where) as guard, holding(guard, oneclick, 5):
                    await refresh(guard)
                return guard

        guard = asyncio.run(run())
        monkeypatch.setattr("guard._everywhere.FRESH", 0.0)  # read again if it could
        (state,) = guard.accounts()
        assert {(state.provider, state.account): 5} == held_everywhere(guard)

    async def test_memory_store_is_this_process(self, emu: Emulator) -> None:
        """A store of this process: its own holds, as before."""
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard(store=MemoryStore()) as guard:
            registry = CollectorRegistry()
            registry.register(GuardCollector(guard))
            async with holding(guard, oneclick, 25):
                got = parse(generate_latest(registry).decode())
            (state,) = guard.accounts()
        assert 25 == got["guard_balance_held", labels(state)]
        assert 975 == got["guard_balance_available", labels(state)]


class TestRedisDown:
    async def test_absent_and_the_scrape_answers(
        self, emu: Emulator, aiohttp_client: MakeClient
    ) -> None:
        """
        Redis gone: held and available are absent (never 0, never the last
        figure), the balance last seen stays, and /metrics answers 200.
        """
        server = RedisServer()
        server.start()
        oneclick = emu.oneclickdz(KEY)
        try:
            async with BalanceGuard(
                redis=f"redis://127.0.0.1:{server.port}", fetch_timeout=2
            ) as guard:
                app = web.Application()
                app.router.add_get("/metrics", metrics_handler(guard))
                client = await aiohttp_client(app)
                async with holding(guard, oneclick, 10):
                    before = parse(await (await client.get("/metrics")).text())
                (state,) = guard.accounts()
                assert 10 == before["guard_balance_held", labels(state)]
                server.stop()
                started = time.monotonic()
                response = await client.get("/metrics")
                took = time.monotonic() - started
                assert 200 == response.status
                got = parse(await response.text())
                (reading,) = await Watcher(guard, [oneclick]).poll()
        finally:
            server.stop()
        assert took < 3
        assert ("guard_balance_held", labels(state)) not in got
        assert ("guard_balance_available", labels(state)) not in got
        assert 1000 == got["guard_balance", labels(state)]
        assert (None, None) == (reading.held, reading.available)
        assert reading.to_json()["held"] is None
        assert "held -" in reading.line()
