"""
Regression tests for the engine races and edge cases found in review.

Each test replays one reviewer's reproduction deterministically: providers
and caches that stop at a gate stand in for a network answer that is on its
way while other calls run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.server
import logging
import threading
import warnings
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from _holds import hold, release
from _providers import During, Network
from aiocache import SimpleMemoryCache
from aiocache.serializers import PickleSerializer

from guard import (
    BalanceGuard,
    BalanceUnavailable,
    ConfigurationError,
    GuardError,
    GuardEvent,
    InsufficientBalance,
    ProviderAuthError,
    get_default_guard,
    require_balance,
    set_default_guard,
)
from guard.stores import Account, Hold, MemoryStore, Short
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _holds import Held


class FlakyCache(SimpleMemoryCache):  # type: ignore[misc]
    """
    A cache that refuses every command while `down` is true.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(timeout=None, **kwargs)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("cache down")

    async def _get(
        self, key: str, encoding: str = "utf-8", _conn: object = None
    ) -> object:
        self._check()
        return await super()._get(key, encoding=encoding, _conn=_conn)

    async def _set(self, key: str, value: object, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return await super()._set(key, value, *args, **kwargs)

    async def _delete(self, key: str, _conn: object = None) -> Any:
        self._check()
        return await super()._delete(key, _conn=_conn)


class HangingCache(SimpleMemoryCache):  # type: ignore[misc]
    """
    A non-Redis aiocache backend that stops answering writes and deletes
    while `hang` is true (a stuck connection, a wedged server).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hang = False
        self.stuck = 0

    async def _stop(self) -> None:
        if self.hang:
            self.stuck += 1
            await asyncio.Event().wait()

    async def _set(self, key: str, value: object, *args: Any, **kwargs: Any) -> Any:
        await self._stop()
        return await super()._set(key, value, *args, **kwargs)

    async def _delete(self, key: str, _conn: object = None) -> Any:
        await self._stop()
        return await super()._delete(key, _conn=_conn)


@pytest.fixture(name="network")
def _network() -> Network:
    return Network(100)


class TestFetchOverlappingSettle:
    @pytest.mark.parametrize("mode", ["debit", "invalidate"])
    async def test_recheck_fetch_counts_calls_settled_meanwhile(
        self, network: Network, mode: str
    ) -> None:
        """A recheck fetch answered before a call spent is stored less that call."""
        async with BalanceGuard(settle=mode, recheck_after=0) as guard:  # type: ignore[arg-type]
            await guard.balance(network)
            async with require_balance(network, 60, guard=guard):
                gate = network.slow_down()
                # Short against 100 - 60 held: refetches, and reads 100.
                second = asyncio.create_task(hold(guard, network, Decimal(50)))
                await network.asked.wait()
                network.spend(60)
            gate.set()

            with pytest.raises(InsufficientBalance) as info:
                await second

        assert Decimal(40) == info.value.available
        assert Decimal(40) == network.balance

    async def test_corrected_balance_is_read_again_before_refusing(
        self, network: Network
    ) -> None:
        """A balance lowered for a spend it already showed is re-read, not trusted."""
        async with BalanceGuard(recheck_after=60) as guard:
            await guard.balance(network)
            async with require_balance(network, 60, guard=guard):
                network.spend(60)
                gate = network.slow_down()
                fresh = asyncio.create_task(guard.balance(network, fresh=True))
                await network.asked.wait()  # it reads 40: the spend included
            gate.set()
            corrected = await fresh  # 40 less the 60 settled meanwhile

            async with require_balance(network, 30, guard=guard) as seen:
                assert seen is not None

        assert Decimal(-20) == corrected.amount
        assert Decimal(40) == seen.amount
        assert 3 == network.fetches

    async def test_ttl_refetch_counts_calls_settled_meanwhile(
        self, network: Network
    ) -> None:
        """A TTL refetch answered before a long call spent is stored less it."""
        async with BalanceGuard(settle="debit", ttl=0.02) as guard:
            await guard.balance(network)
            async with require_balance(network, 60, guard=guard):
                await asyncio.sleep(0.03)  # the cached balance expires
                gate = network.slow_down()
                second = asyncio.create_task(hold(guard, network, Decimal(60)))
                await network.asked.wait()
                network.spend(60)
            gate.set()

            with pytest.raises(InsufficientBalance) as info:
                await second

        assert Decimal(40) == info.value.available

    async def test_fresh_read_counts_calls_settled_meanwhile(
        self, network: Network, debit_guard: BalanceGuard
    ) -> None:
        """A balance(fresh=True) answered before a call spent is stored less it."""
        await debit_guard.balance(network)
        async with require_balance(network, 60, guard=debit_guard):
            gate = network.slow_down()
            monitor = asyncio.create_task(debit_guard.balance(network, fresh=True))
            await network.asked.wait()
            network.spend(60)
        gate.set()
        seen = await monitor

        assert Decimal(40) == seen.amount
        with pytest.raises(InsufficientBalance) as info:
            await hold(debit_guard, network, Decimal(60))
        # The corrected balance is read once more before the refusal.
        assert Decimal(40) == info.value.available
        assert 3 == network.fetches

    async def test_settles_during_each_fetch_store_it_once(self) -> None:
        """A call settling during a fetch doesn't drop it: one fetch serves."""
        holds: list[Held] = []

        async def settle_one() -> None:
            if holds:
                provider.spend(1)
                await release(holds.pop(), ok=True)

        provider = During(100, settle_one)
        async with BalanceGuard(settle="invalidate") as guard:
            await guard.balance(provider)
            holds.extend([await hold(guard, provider, Decimal(1)) for _ in range(50)])
            provider.spend(1)
            await release(holds.pop(), ok=True)  # the balance is dropped

            await hold(guard, provider, Decimal(1))
            cached = await guard.balance(provider)

        assert 2 == provider.fetches
        assert provider.balance == cached.amount

    async def test_settles_during_each_fetch_dont_fail_open(self) -> None:
        """Under on_unavailable="open" settles during fetches don't skip the check."""
        holds: list[Held] = []

        async def settle_one() -> None:
            if holds:
                await release(holds.pop(), ok=True)

        provider = During(100, settle_one)
        async with BalanceGuard(
            on_unavailable="open", fetch_timeout=0.05, settle="invalidate"
        ) as guard:
            await guard.balance(provider)
            holds.extend(
                [await hold(guard, provider, Decimal(0)) for _ in range(10_000)]
            )
            await release(holds.pop(), ok=True)

            async with require_balance(provider, 1, guard=guard) as balance:
                assert balance is not None

        assert 2 == provider.fetches


class GatedStore(MemoryStore):
    """
    A store whose next check is answered from the state at the time of the
    request, but reaches the caller only once the gate opens (a shared
    store's reply on its way back).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    def slow_down_next_check(self) -> asyncio.Event:
        """Hold the next check's answer until the returned gate is set."""
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()
        return self.gate

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        result = await super().try_hold(account, amount)
        gate, self.gate = self.gate, None
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return result


class TestStoreReads:
    async def test_miss_older_than_a_finished_fetch_checks_again(self) -> None:
        """A miss that a fetch finishing meanwhile made stale checks, not fetches."""
        provider = InMemoryProvider(100)
        store = GatedStore(ttl=0.02)
        async with BalanceGuard(store=store) as guard:
            await guard.balance(provider)
            await asyncio.sleep(0.03)  # the cached balance expires
            gate = store.slow_down_next_check()
            late = asyncio.create_task(hold(guard, provider, Decimal(1)))
            await store.reading.wait()
            await hold(guard, provider, Decimal(1))  # fetches the balance again
            gate.set()
            await late

            assert Decimal(2) == guard.held(provider)
        assert 2 == provider.fetches


class TestUncheckedCalls:
    async def test_unchecked_call_invalidates_on_settle(self) -> None:
        """A call let through unchecked drops a balance cached while it ran."""
        provider = InMemoryProvider(100)
        provider.fail_next()
        async with BalanceGuard(
            on_unavailable="open", retries=0, outage_backoff=0
        ) as guard:
            async with require_balance(provider, 60, guard=guard) as balance:
                assert balance is None
                await guard.balance(provider)  # cached: 100
                provider.spend(60)

            with pytest.raises(InsufficientBalance) as info:
                await hold(guard, provider, Decimal(50))

        assert Decimal(40) == info.value.available

    async def test_unchecked_call_counts_against_fetch_in_flight(
        self, network: Network
    ) -> None:
        """A fetch answered before an unchecked call spent is stored less it."""
        network.fail_next()
        async with BalanceGuard(
            on_unavailable="open", retries=0, outage_backoff=0
        ) as guard:
            async with require_balance(network, 60, guard=guard) as balance:
                assert balance is None
                gate = network.slow_down()
                second = asyncio.create_task(hold(guard, network, Decimal(50)))
                await network.asked.wait()
                network.spend(60)
            gate.set()

            with pytest.raises(InsufficientBalance):
                await second

    @pytest.mark.parametrize("policy", ["closed", "open"])
    async def test_failed_recheck_refuses_known_shortage(self, policy: str) -> None:
        """A short balance whose recheck fails refuses: the shortage is known."""
        provider = InMemoryProvider(100)
        async with BalanceGuard(
            on_unavailable=policy,  # type: ignore[arg-type]
            recheck_after=0,
            retries=0,
        ) as guard:
            await guard.balance(provider)
            provider.fail_next(BalanceUnavailable("503", provider="memory"))

            with pytest.raises(InsufficientBalance) as info:
                await hold(guard, provider, Decimal(150))

        assert Decimal(100) == info.value.available
        assert Decimal(0) == guard.held(provider)


class TestClosing:
    async def test_aclose_fails_waiters_as_unavailable(self, network: Network) -> None:
        """A call waiting on a fetch when the guard closes gets BalanceUnavailable."""
        guard = BalanceGuard()
        network.slow_down()
        waiter = asyncio.create_task(hold(guard, network, Decimal(1)))
        await network.asked.wait()

        await guard.aclose()

        assert network.cancelled
        with pytest.raises(BalanceUnavailable, match="the guard was closed"):
            await waiter

    async def test_aclose_fails_waiters_under_open_policy_too(
        self, network: Network
    ) -> None:
        """Closing never surfaces as a bare CancelledError in an uncancelled task."""
        guard = BalanceGuard(on_unavailable="open")
        network.slow_down()

        async def call() -> str:
            async with require_balance(network, 1, guard=guard):
                return "sent"

        caller = asyncio.create_task(call())
        await network.asked.wait()
        await guard.aclose()

        with contextlib.suppress(GuardError):
            await caller
        assert not caller.cancelled()

    async def test_closed_default_is_replaced(self) -> None:
        """get_default_guard() replaces a default that was closed."""
        with set_default_guard(None):
            first = get_default_guard()
            await first.aclose()
            second = get_default_guard()
            try:
                assert second is not first
                assert not second.closed
            finally:
                await second.aclose()


class TestEventLoops:
    def test_fetch_of_another_loop_is_replaced(self) -> None:
        """A fetch left pending on another event loop doesn't wedge the account."""
        provider = Network(100)
        first = asyncio.new_event_loop()
        session = first.run_until_complete(_new_session())
        guard = BalanceGuard(session=session)
        stranded = provider.slow_down()

        async def give_up() -> None:
            call = asyncio.create_task(hold(guard, provider, Decimal(1)))
            await provider.asked.wait()
            call.cancel()  # the shielded fetch stays pending on this loop
            with contextlib.suppress(asyncio.CancelledError):
                await call

        async def use() -> Decimal:
            async with guard:
                held = await hold(guard, provider, Decimal(1))
                await release(held, ok=True)
            return held.reservation.amount

        try:
            first.run_until_complete(give_up())
            provider.gate = None

            assert Decimal(1) == asyncio.run(use())
        finally:
            # Let the stranded fetch end on its own loop, then close that.
            stranded.set()
            first.run_until_complete(_drain(first))
            first.run_until_complete(session.close())
            first.close()
        assert 2 == provider.fetches

    def test_session_of_an_ended_loop_does_not_leak(self) -> None:
        """A guard used by two asyncio.run() calls leaves no unclosed session."""
        guard = BalanceGuard()
        provider = InMemoryProvider(5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(guard.balance(provider))
            asyncio.run(_balance_and_close(guard, provider))
            gc.collect()
            leaked = [str(w.message) for w in caught]

        assert [] == leaked
        assert 2 == provider.fetches

    @pytest.mark.xfail(
        strict=True,
        reason="an abandoned session's pooled keep-alive sockets are left for "
        "the garbage collector, which warns",
    )
    def test_connections_of_an_ended_loop_do_not_leak(self, server: str) -> None:
        """Keep-alive connections of an ended loop are closed, not left to warn."""
        guard = BalanceGuard()
        provider = HttpProvider(server)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(guard.balance(provider))
            asyncio.run(_balance_and_close(guard, provider))
            gc.collect()
            leaked = [str(w.message) for w in caught]

        assert [] == leaked


class TestRequireBalance:
    async def test_exit_in_another_task(self, guard: BalanceGuard) -> None:
        """An async with entered in one task and exited in another releases its hold."""
        provider = InMemoryProvider(100)
        requirement = require_balance(provider, 10, guard=guard)
        stack = contextlib.AsyncExitStack()
        await asyncio.create_task(stack.enter_async_context(requirement))
        assert Decimal(10) == guard.held(provider)

        await asyncio.create_task(stack.aclose())

        assert Decimal(0) == guard.held(provider)

    async def test_exit_settles_through_the_guard_that_held(self) -> None:
        """A default guard replaced during a call doesn't settle that call."""
        provider = InMemoryProvider(100)
        async with (
            BalanceGuard(settle="debit") as held_by,
            BalanceGuard(settle="invalidate") as other,
        ):
            with set_default_guard(held_by):
                await held_by.balance(provider)
                async with require_balance(provider, 10):
                    provider.spend(10)
                    set_default_guard(other)
            balance = await held_by.balance(provider)

        assert Decimal(0) == held_by.held(provider)
        assert Decimal(90) == balance.amount
        assert 1 == provider.fetches

    def test_bad_settle_is_a_configuration_error(self) -> None:
        """require_balance(settle=...) with a bad mode raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="settle must be"):
            require_balance(InMemoryProvider(), 1, settle="bogus")  # type: ignore[arg-type]


class TestCacheErrors:
    @pytest.mark.parametrize(
        ("serializer", "mode"),
        [(None, "invalidate"), (PickleSerializer(), "debit")],
    )
    async def test_settle_survives_an_outage(
        self,
        caplog: pytest.LogCaptureFixture,
        serializer: PickleSerializer | None,
        mode: str,
    ) -> None:
        """A cache that fails while a call runs doesn't replace the call's result."""
        provider = InMemoryProvider(100)
        cache = FlakyCache(serializer=serializer)
        async with BalanceGuard(cache=cache, settle=mode) as guard:  # type: ignore[arg-type]

            @require_balance(provider, 10, guard=guard)
            async def send() -> str:
                provider.spend(10)
                cache.down = True
                return "message-id-42"

            with caplog.at_level(logging.WARNING, logger="guard"):
                assert "message-id-42" == await send()
            assert Decimal(0) == guard.held(provider)
            cache.down = False

            with pytest.raises(InsufficientBalance) as info:
                await hold(guard, provider, Decimal(91))

        assert Decimal(90) == info.value.available

    async def test_write_outage_is_unavailable(self) -> None:
        """A cache that fails to take a fetched balance raises BalanceUnavailable."""
        provider = InMemoryProvider(100)
        cache = FlakyCache()
        async with BalanceGuard(cache=cache) as guard:
            await guard.balance(provider)
            cache.down = True
            # A warm check reads this process's state, not the cache.
            await release(await hold(guard, provider, Decimal(1)), ok=True)
            await guard.invalidate(provider)

            with pytest.raises(BalanceUnavailable, match="cache unavailable"):
                await hold(guard, provider, Decimal(1))
            cache.down = False

    async def test_read_outage_fails_open(self) -> None:
        """Under on_unavailable="open" a cache outage on a fetch lets the call by."""
        events: list[GuardEvent] = []
        provider = InMemoryProvider(100)
        cache = FlakyCache()
        async with BalanceGuard(
            cache=cache, on_unavailable="open", hooks=[events.append]
        ) as guard:
            await guard.balance(provider)
            await guard.invalidate(provider)
            cache.down = True
            async with require_balance(provider, 1, guard=guard) as balance:
                assert balance is None
            cache.down = False

        assert ["fetched", "failed_open", "settled"] == [e.kind for e in events]

    async def test_stuck_write_is_bounded(self) -> None:
        """A cache that stops answering a write fails the call as unavailable."""
        provider = InMemoryProvider(100)
        cache = HangingCache()
        cache.hang = True
        async with (
            asyncio.timeout(10),  # a hang fails here instead of hanging the run
            BalanceGuard(cache=cache, fetch_timeout=0.2) as guard,
        ):
            with pytest.raises(BalanceUnavailable, match="cache unavailable"):
                await hold(guard, provider, Decimal(1))
            assert Decimal(0) == guard.held(provider)
            cache.hang = False
            async with guard.reserve(provider, 100) as reservation:
                assert reservation.balance is not None

        assert 1 == cache.stuck

    async def test_stuck_delete_is_bounded(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A cache that stops answering a delete doesn't hang the settle."""
        provider = InMemoryProvider(100)
        cache = HangingCache()
        async with (
            asyncio.timeout(10),  # a hang fails here instead of hanging the run
            BalanceGuard(cache=cache, fetch_timeout=0.2) as guard,
        ):
            with caplog.at_level(logging.WARNING, logger="guard"):
                async with guard.reserve(provider, 10, settle="invalidate"):
                    cache.hang = True  # the settle's delete gets no answer
                await guard.invalidate(provider)  # nor does this one
            assert Decimal(0) == guard.held(provider)
            cache.hang = False
            async with guard.reserve(provider, 100):
                pass

        assert 2 == cache.stuck
        assert 2 == caplog.text.count("could not delete a cached balance")


class TestProviders:
    async def test_newest_provider_object_is_used(self, guard: BalanceGuard) -> None:
        """A new provider object for the same account (rotated secret) is used."""
        old = InMemoryProvider(5, account_id="acct")
        new = InMemoryProvider(7, account_id="acct")

        assert Decimal(5) == (await guard.balance(old)).amount
        assert Decimal(7) == (await guard.balance(new, fresh=True)).amount
        assert 1 == new.fetches

    async def test_new_provider_object_clears_auth_cooldown(
        self, guard: BalanceGuard
    ) -> None:
        """Corrected credentials are tried at once despite the old ones' cooldown."""
        old = InMemoryProvider(5, account_id="acct")
        old.fail_next(ProviderAuthError("bad password", provider="memory"))
        new = InMemoryProvider(7, account_id="acct")

        with pytest.raises(ProviderAuthError):
            await guard.balance(old)

        assert Decimal(7) == (await guard.balance(new)).amount

    async def test_provider_objects_are_not_kept(self, guard: BalanceGuard) -> None:
        """Provider objects built per request are freed, not kept by the guard."""
        refs = []
        for _ in range(100):
            provider = InMemoryProvider(100, account_id="same-account")
            async with require_balance(provider, 1, guard=guard):
                pass
            refs.append(weakref.ref(provider))
        del provider
        gc.collect()

        # The account keeps the newest provider object only.
        assert [] == [ref for ref in refs[:-1] if ref() is not None]


class TestConfiguration:
    @pytest.mark.parametrize(
        "options",
        [
            {"ttl": float("inf")},
            {"fetch_timeout": float("inf")},
            {"lease": float("inf")},
            {"recheck_after": float("-inf")},
        ],
    )
    def test_infinite_seconds_are_refused(self, options: dict[str, float]) -> None:
        """An infinite number of seconds is a ConfigurationError."""
        with pytest.raises(ConfigurationError, match="finite"):
            BalanceGuard(**options)  # type: ignore[arg-type]

    def test_async_hook_is_refused(self) -> None:
        """An async def hook, which would never be awaited, is refused."""

        async def hook(event: GuardEvent) -> None:
            pass

        with pytest.raises(ConfigurationError, match="not async"):
            BalanceGuard(hooks=[hook])  # type: ignore[list-item]

    def test_async_callable_hook_is_refused(self) -> None:
        """An object with an async __call__ (never awaited) is refused too."""

        class Hook:
            async def __call__(self, event: GuardEvent) -> None:
                pass

        with pytest.raises(ConfigurationError, match="not async"):
            BalanceGuard(hooks=[Hook()])  # type: ignore[list-item]


class HttpProvider:
    """
    A provider that reads its balance over loopback HTTP.
    """

    name = "http"
    currency = "DZD"
    account_id = "http-1"

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        async with session.get(self.url) as response:
            return Decimal(await response.text())


class _Balance(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the connection stays pooled

    def do_GET(self) -> None:
        body = b"100"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(name="server")
def _server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Balance)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/balance"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    others = asyncio.all_tasks(loop) - {asyncio.current_task()}
    await asyncio.gather(*others, return_exceptions=True)


async def _balance_and_close(guard: BalanceGuard, provider: Any) -> None:
    await guard.balance(provider, fresh=True)
    await guard.aclose()
