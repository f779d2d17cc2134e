from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from decimal import Decimal

import aiohttp
import pytest
from _holds import hold
from _providers import LoopRecorder, Network
from aiocache import SimpleMemoryCache
from aiocache.serializers import PickleSerializer

import guard as guard_module
from guard import (
    AmountError,
    Balance,
    BalanceGuard,
    BalanceUnavailable,
    ConfigurationError,
    GuardEvent,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
    get_default_guard,
    require_balance,
    set_default_guard,
)
from guard.testing import InMemoryProvider


async def spend(provider: InMemoryProvider, amount: int, *, pause: float = 0) -> str:
    if pause:
        await asyncio.sleep(pause)
    provider.spend(amount)
    return "sent"


class TestCheck:
    async def test_refuses_with_amounts(self, guard: BalanceGuard) -> None:
        """A call the balance can't cover raises InsufficientBalance and doesn't run."""
        provider = InMemoryProvider(Decimal("320.50"), name="oneclickdz")
        ran = []

        @require_balance(provider, 500, guard=guard)
        async def topup() -> None:
            ran.append(1)

        with pytest.raises(InsufficientBalance) as info:
            await topup()

        assert [] == ran
        assert Decimal(500) == info.value.required
        assert Decimal("320.50") == info.value.available
        assert "DZD" == info.value.currency
        assert "oneclickdz" == info.value.provider

    async def test_runs_when_covered(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A covered call runs and returns its result."""
        guarded = require_balance(provider, 100, guard=guard)(spend)

        assert "sent" == await guarded(provider, 100)
        assert Decimal(900) == provider.balance

    async def test_exact_amount_passes(self, guard: BalanceGuard) -> None:
        """A balance equal to the amount covers it."""
        provider = InMemoryProvider("12.5")

        async with require_balance(provider, "12.50", guard=guard) as balance:
            assert balance is not None
            assert Decimal("12.5") == balance.amount

    async def test_holds_stop_concurrent_overspend(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """50 concurrent 100 DZD calls on 1,000 DZD: 10 run, 40 are refused."""
        guarded = require_balance(provider, 100, guard=guard)(spend)

        results = await asyncio.gather(
            *(guarded(provider, 100, pause=0.01) for _ in range(50)),
            return_exceptions=True,
        )

        assert 10 == results.count("sent")
        assert 40 == sum(isinstance(r, InsufficientBalance) for r in results)
        assert Decimal(0) == provider.balance
        assert Decimal(0) == guard.held(provider)

    async def test_single_flight(self, guard: BalanceGuard) -> None:
        """1,000 concurrent cold calls make one balance fetch."""
        provider = InMemoryProvider(10**6, delay=0.05)
        asked: list[int] = []

        @require_balance(provider, 1, guard=guard)
        async def call() -> None:
            asked.append(provider.fetches)
            await asyncio.sleep(0.01)

        await asyncio.gather(*(call() for _ in range(1000)))

        # Every call ran on the one fetch (the settles then refresh it).
        assert [1] * 1000 == asked

    async def test_cached_within_ttl(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """Reads within the TTL don't fetch again; a refused call needn't either."""
        assert Decimal(1000) == (await guard.balance(provider)).amount
        assert Decimal(1000) == (await guard.balance(provider)).amount

        assert 1 == provider.fetches

    async def test_ttl_expiry_fetches_again(self) -> None:
        """A balance older than the TTL is fetched again."""
        provider = InMemoryProvider(5)
        async with BalanceGuard(ttl=0.05) as guard:
            await guard.balance(provider)
            await asyncio.sleep(0.08)
            await guard.balance(provider)

        assert 2 == provider.fetches

    async def test_recheck_sees_refill(self) -> None:
        """An old cached balance is fetched once more before refusing."""
        provider = InMemoryProvider(10)
        async with BalanceGuard(recheck_after=0) as guard:
            await guard.balance(provider)
            provider.balance = Decimal(1000)

            async with require_balance(provider, 500, guard=guard):
                pass

        assert 2 == provider.fetches

    async def test_young_balance_refuses_without_fetch(self) -> None:
        """A recent cached balance refuses at once: refusals don't hammer the API."""
        provider = InMemoryProvider(10)
        async with BalanceGuard(recheck_after=60) as guard:
            await guard.balance(provider)
            for _ in range(20):
                with pytest.raises(InsufficientBalance):
                    async with require_balance(provider, 500, guard=guard):
                        pass

        assert 1 == provider.fetches


class TestSettle:
    async def test_invalidates_after_return(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """With settle="invalidate", the next call fetches a fresh balance."""
        guarded = require_balance(provider, 100, guard=guard, settle="invalidate")(
            spend
        )

        await guarded(provider, 100)
        balance = await guard.balance(provider)

        assert 2 == provider.fetches
        assert Decimal(900) == balance.amount

    async def test_invalidates_after_exception(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A call that raises releases its hold and invalidates the balance."""

        @require_balance(provider, 100, guard=guard, settle="debit")
        async def boom() -> None:
            raise RuntimeError("provider said no")

        with pytest.raises(RuntimeError, match="provider said no"):
            await boom()
        await guard.balance(provider)

        assert Decimal(0) == guard.held(provider)
        assert 2 == provider.fetches

    async def test_cancellation_leaves_no_hold(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A cancelled call releases its hold and invalidates the balance."""
        started = asyncio.Event()

        @require_balance(provider, 600, guard=guard, settle="invalidate")
        async def slow() -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(slow())
        await started.wait()
        assert Decimal(600) == guard.held(provider)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert Decimal(0) == guard.held(provider)
        async with require_balance(provider, 1000, guard=guard):
            pass
        assert 2 == provider.fetches

    async def test_debit_keeps_cache(self, provider: InMemoryProvider) -> None:
        """settle="debit" lowers the cached balance instead of fetching again."""
        async with BalanceGuard(settle="debit") as guard:
            guarded = require_balance(provider, 100, guard=guard)(spend)
            for _ in range(5):
                await guarded(provider, 100)
            balance = await guard.balance(provider)

        assert 1 == provider.fetches
        assert Decimal(500) == balance.amount

    async def test_debit_per_call_option(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """settle= on require_balance overrides the guard's mode."""
        guarded = require_balance(provider, 100, guard=guard, settle="debit")(spend)

        await guarded(provider, 100)
        await guarded(provider, 100)

        assert 1 == provider.fetches
        assert Decimal(800) == (await guard.balance(provider)).amount

    async def test_debit_skips_entry_refetched_meanwhile(
        self, provider: InMemoryProvider
    ) -> None:
        """A balance fetched while the call ran is dropped, not debited."""
        async with BalanceGuard(settle="debit") as guard:
            async with require_balance(provider, 100, guard=guard):
                provider.spend(100)
                await guard.balance(provider, fresh=True)
            await guard.balance(provider)

        assert 3 == provider.fetches

    async def test_serialized_cache_debit(self, provider: InMemoryProvider) -> None:
        """A cache that serializes values is debited by read-modify-write."""
        cache = SimpleMemoryCache(serializer=PickleSerializer(), timeout=None)
        async with BalanceGuard(cache=cache, settle="debit") as guard:
            guarded = require_balance(provider, 100, guard=guard)(spend)
            await asyncio.gather(*(guarded(provider, 100) for _ in range(3)))
            balance = await guard.balance(provider)
            with pytest.raises(InsufficientBalance):
                async with require_balance(provider, 800, guard=guard):
                    pass

        assert 1 == provider.fetches
        assert Decimal(700) == balance.amount

    async def test_serialized_cache_ignores_foreign_entries(
        self, provider: InMemoryProvider
    ) -> None:
        """An entry written by another guard (process) is not taken as ours."""
        cache = SimpleMemoryCache(serializer=PickleSerializer(), timeout=None)
        async with BalanceGuard(cache=cache) as first:
            await first.balance(provider)
            async with BalanceGuard(cache=cache) as second:
                await second.balance(provider)
                await second.balance(provider)

        assert 2 == provider.fetches


class TestRace:
    async def test_invalidated_between_fetch_and_check(
        self, guard: BalanceGuard
    ) -> None:
        """Calls that never yield all check against the fetch they waited for."""
        provider = InMemoryProvider(10**6, delay=0.001)
        guarded = require_balance(provider, 1, guard=guard, settle="invalidate")(spend)

        results = await asyncio.gather(*(guarded(provider, 1) for _ in range(1000)))

        assert ["sent"] * 1000 == results
        assert 1 == provider.fetches

    async def test_fetch_racing_invalidation_is_not_stored(self) -> None:
        """A balance fetched before an invalidation is never cached after it."""
        provider = Network(1000)
        async with BalanceGuard() as guard:
            gate = provider.slow_down()
            reading = asyncio.create_task(guard.balance(provider))
            await provider.asked.wait()  # it read 1000; the answer is on its way
            provider.balance = Decimal(100)
            await guard.invalidate(provider)
            gate.set()
            first = await reading
            second = await guard.balance(provider)

        # The reader that raced is served a fresh fetch, not the stale 1000.
        assert Decimal(100) == first.amount
        assert Decimal(100) == second.amount
        assert 2 == provider.fetches

    async def test_spend_during_fetch_is_not_overspent(self) -> None:
        """A call that settles while a fetch is in flight can't be counted twice."""
        provider = Network(1000)
        async with BalanceGuard(ttl=0.02) as guard:
            async with require_balance(provider, 600, guard=guard):
                await asyncio.sleep(0.03)  # the cached balance expires
                gate = provider.slow_down()
                second = asyncio.create_task(
                    require_balance(provider, 600, guard=guard)(spend)(provider, 600)
                )
                await provider.asked.wait()  # its fetch read 1000
                provider.spend(600)
            gate.set()  # ... and answers after the first call settled
            with pytest.raises(InsufficientBalance) as info:
                await second

        assert Decimal(400) == info.value.available
        assert Decimal(400) == provider.balance


class TestPolicy:
    async def test_closed_raises(self, guard: BalanceGuard) -> None:
        """By default an unknown balance refuses the call."""
        provider = InMemoryProvider(1000)
        provider.fail_next(times=10)

        with pytest.raises(BalanceUnavailable, match="injected failure"):
            async with require_balance(provider, 1, guard=guard):
                pass

    async def test_open_proceeds_and_warns(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """on_unavailable="open" runs the call, logs a warning, emits an event."""
        events: list[GuardEvent] = []
        provider = InMemoryProvider(1000)
        provider.fail_next(times=10)
        ran = []
        async with BalanceGuard(
            on_unavailable="open", retries=0, hooks=[events.append]
        ) as guard:
            with caplog.at_level(logging.WARNING, logger="guard"):
                async with require_balance(provider, 1, guard=guard) as balance:
                    ran.append(balance)

        assert [None] == ran
        assert "proceeding unchecked" in caplog.text
        assert ["unavailable", "failed_open", "settled"] == [e.kind for e in events]

    @pytest.mark.parametrize(
        "error",
        [
            ProviderAuthError("bad key", provider="memory", code="INVALID"),
            ProviderResponseError("truncated", provider="memory"),
        ],
    )
    async def test_open_still_raises_auth_and_garbage(
        self, error: BalanceUnavailable
    ) -> None:
        """Refused credentials and unreadable answers raise whatever the policy."""
        provider = InMemoryProvider(1000)
        provider.fail_next(error)
        async with BalanceGuard(on_unavailable="open") as guard:
            with pytest.raises(type(error)):
                async with require_balance(provider, 1, guard=guard):
                    pass

    async def test_retries_transient(self, guard: BalanceGuard) -> None:
        """Transient failures are retried within the fetch."""
        provider = InMemoryProvider(1000)
        provider.fail_next(times=2)

        assert Decimal(1000) == (await guard.balance(provider)).amount
        assert 3 == provider.fetches

    async def test_retry_after_is_capped(self) -> None:
        """A huge Retry-After is capped by max_retry_after."""
        provider = InMemoryProvider(1000)
        provider.fail_next(
            BalanceUnavailable("429", provider="memory", retry_after=86400)
        )
        async with BalanceGuard(max_retry_after=0.01) as guard:
            balance = await asyncio.wait_for(guard.balance(provider), 5)

        assert Decimal(1000) == balance.amount

    async def test_retry_after_beyond_timeout_gives_up(self) -> None:
        """A retry that would end after the fetch timeout isn't attempted."""
        provider = InMemoryProvider(1000)
        provider.fail_next(BalanceUnavailable("429", provider="memory", retry_after=30))
        async with BalanceGuard(fetch_timeout=0.5, max_retry_after=30) as guard:
            with pytest.raises(BalanceUnavailable, match="429"):
                await guard.balance(provider)

        assert 1 == provider.fetches

    async def test_timeout(self) -> None:
        """A fetch slower than fetch_timeout fails as BalanceUnavailable."""
        provider = InMemoryProvider(1000, delay=10)
        async with BalanceGuard(fetch_timeout=0.05) as guard:
            with pytest.raises(BalanceUnavailable, match=r"no balance within 0\.05 s"):
                await guard.balance(provider)

    async def test_auth_cooldown(self) -> None:
        """After refused credentials the account isn't asked again until cooldown."""
        provider = InMemoryProvider(1000)
        provider.fail_next(ProviderAuthError("bad key", provider="memory"), times=5)
        async with BalanceGuard(auth_cooldown=0.1) as guard:
            for _ in range(20):
                with pytest.raises(ProviderAuthError):
                    async with require_balance(provider, 1, guard=guard):
                        pass
            assert 1 == provider.fetches
            with pytest.raises(ProviderAuthError) as info:
                await guard.balance(provider)
            assert info.value.retry_after is not None
            assert 0 < info.value.retry_after <= 0.1  # the cooldown left
            await asyncio.sleep(0.12)
            with pytest.raises(ProviderAuthError):
                await guard.balance(provider)

        assert 2 == provider.fetches

    async def test_hook_errors_are_logged(
        self, caplog: pytest.LogCaptureFixture, provider: InMemoryProvider
    ) -> None:
        """A hook that raises is logged and does not break the call."""

        def bad_hook(event: GuardEvent) -> None:
            raise RuntimeError("hook bug")

        async with BalanceGuard(hooks=[bad_hook]) as guard:
            await guard.balance(provider)

        assert "hook bug" in caplog.text

    async def test_provider_returning_garbage(self, guard: BalanceGuard) -> None:
        """A user's provider returning a non-number gives an unreadable answer."""

        class Weird(InMemoryProvider):
            async def fetch_balance(self, session: object) -> Decimal:  # type: ignore[override]
                return float("nan")  # type: ignore[return-value]

        with pytest.raises(ProviderResponseError, match="not a finite Decimal"):
            await guard.balance(Weird())


class TestDecorator:
    async def test_amount_from_arguments(self, guard: BalanceGuard) -> None:
        """A callable amount receives the guarded function's arguments."""
        provider = InMemoryProvider(100)

        @require_balance(provider, amount=lambda phone, amount: amount, guard=guard)
        async def send_topup(phone: str, amount: Decimal) -> str:
            return phone

        assert "0550000000" == await send_topup("0550000000", Decimal(100))
        with pytest.raises(InsufficientBalance):
            await send_topup("0550000000", amount=Decimal("100.01"))

    async def test_async_amount(self, guard: BalanceGuard) -> None:
        """An async callable amount is awaited."""
        provider = InMemoryProvider(100)

        async def price(sku: str) -> str:
            return {"big": "150", "small": "50"}[sku]

        @require_balance(provider, price, guard=guard)
        async def buy(sku: str) -> str:
            return sku

        assert "small" == await buy("small")
        with pytest.raises(InsufficientBalance):
            await buy("big")

    async def test_bad_computed_amount(self, guard: BalanceGuard) -> None:
        """A computed amount that isn't a number fails naming amount."""
        provider = InMemoryProvider(100)

        @require_balance(provider, lambda: None, guard=guard)
        async def buy() -> None:
            pass

        with pytest.raises(AmountError, match="amount must be an int"):
            await buy()

    async def test_method(self, guard: BalanceGuard) -> None:
        """The decorator works on methods; the amount callable gets self too."""
        provider = InMemoryProvider(100)

        class Sender:
            @require_balance(provider, lambda self, n: n, guard=guard)
            async def send(self, n: int) -> int:
                return n

        assert 100 == await Sender().send(100)
        with pytest.raises(InsufficientBalance):
            await Sender().send(101)

    def test_keeps_signature(self) -> None:
        """The wrapped function keeps its name, docstring and signature."""

        async def send_topup(phone: str, amount: Decimal) -> str:
            """Send a top-up."""
            return phone

        guarded = require_balance(InMemoryProvider(), 1)(send_topup)

        assert "send_topup" == guarded.__name__
        assert "Send a top-up." == guarded.__doc__
        assert inspect.signature(send_topup) == inspect.signature(guarded)
        assert inspect.iscoroutinefunction(guarded)

    async def test_context_manager_needs_static_amount(self) -> None:
        """A computed amount can't be used with async with: it has no arguments."""
        with pytest.raises(TypeError, match="decorator"):
            async with require_balance(InMemoryProvider(), lambda x: x):
                pass

    def test_rejects_non_provider(self) -> None:
        """require_balance names what it expected when given something else."""
        with pytest.raises(TypeError, match=r"guard\.typing\.Provider"):
            require_balance("oneclickdz", 5)  # type: ignore[arg-type]

    async def test_same_requirement_in_many_tasks(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """One require_balance object can be entered by several tasks at once."""
        requirement = require_balance(provider, 100, guard=guard)

        async def use() -> None:
            async with requirement:
                await asyncio.sleep(0.01)

        await asyncio.gather(*(use() for _ in range(5)))

        assert Decimal(0) == guard.held(provider)

    def test_repr(self, provider: InMemoryProvider) -> None:
        """The requirement's repr names the provider and the amount."""
        assert "<require_balance memory amount=5>" == repr(require_balance(provider, 5))


class TestDefaultGuard:
    async def test_set_default_restores(self, provider: InMemoryProvider) -> None:
        """set_default_guard swaps the default and restores the previous one."""
        before = get_default_guard()
        async with BalanceGuard(settle="debit") as mine:
            with set_default_guard(mine):
                assert mine is get_default_guard()
                await require_balance(provider, 1)(spend)(provider, 1)
            assert before is get_default_guard()

        assert Decimal(999) == mine.held(provider) + provider.balance

    def test_rejects_non_guard(self) -> None:
        """set_default_guard refuses what is not a BalanceGuard."""
        with pytest.raises(TypeError, match="BalanceGuard"):
            set_default_guard(object())  # type: ignore[arg-type]


class TestConfiguration:
    @pytest.mark.parametrize(
        ("options", "words"),
        [
            ({"ttl": 0}, "ttl must be a finite positive number"),
            ({"ttl": "30"}, "ttl must be a number"),
            ({"settle": "refund"}, "settle must be .refresh., .invalidate. or .debit."),
            ({"on_unavailable": "maybe"}, "on_unavailable must be .closed. or .open."),
            ({"retries": -1}, "retries must be a non-negative int"),
            (
                {"fetch_timeout": float("nan")},
                "fetch_timeout must be a finite positive",
            ),
            (
                {"fetch_timeout": float("inf")},
                "fetch_timeout must be a finite positive",
            ),
            ({"recheck_after": -1}, "recheck_after must be a finite non-negative"),
            ({"namespace": ""}, "namespace must be a non-empty string"),
            ({"hooks": [42]}, "hooks must be plain"),
        ],
    )
    def test_bad_options(self, options: dict[str, object], words: str) -> None:
        """Bad options raise ConfigurationError (a ValueError) naming the option."""
        with pytest.raises(ConfigurationError, match=words):
            BalanceGuard(**options)  # type: ignore[arg-type]

    async def test_closed_guard_refuses_fetches(
        self, provider: InMemoryProvider
    ) -> None:
        """A closed guard says so instead of opening a new session."""
        guard = BalanceGuard()
        await guard.aclose()
        await guard.aclose()

        with pytest.raises(RuntimeError, match="closed"):
            await guard.balance(provider)

    def test_repr(self) -> None:
        """The guard's repr shows its settings."""
        assert "settle='refresh'" in repr(BalanceGuard())

    async def test_balance_value(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """balance() returns a frozen Balance with the provider's unit."""
        balance = await guard.balance(provider)

        assert isinstance(balance, Balance)
        assert "DZD" == balance.currency
        assert 0 <= balance.age < 5
        assert guard_module.Balance is Balance


class TestUserProviders:
    async def test_stray_network_errors_are_transient(
        self, guard: BalanceGuard
    ) -> None:
        """Stray aiohttp or OS errors from a provider are retried, then unavailable."""

        class Leaky(InMemoryProvider):
            async def fetch_balance(self, session: object) -> Decimal:  # type: ignore[override]
                self.fetches += 1
                if self.fetches == 1:
                    raise ConnectionResetError("reset by peer")
                if self.fetches == 2:
                    raise aiohttp.ClientPayloadError("truncated")
                return self.balance

        provider = Leaky(7)
        assert Decimal(7) == (await guard.balance(provider)).amount
        assert 3 == provider.fetches

        provider = Leaky(7)
        async with BalanceGuard(retries=0) as strict:
            with pytest.raises(
                BalanceUnavailable, match="ConnectionResetError"
            ) as info:
                await strict.balance(provider)
        assert isinstance(info.value.__cause__, ConnectionResetError)


class TestEventLoops:
    async def test_calls_from_another_loop_run_at_home(
        self, guard: BalanceGuard
    ) -> None:
        """A call from another thread's loop runs on the guard's loop, holds shared."""
        provider = LoopRecorder(100, delay=0.01)
        await guard.balance(provider)
        home_session = guard._fetcher._session
        await guard.invalidate(provider)
        inside = threading.Event()
        leave = threading.Event()

        async def elsewhere() -> None:
            async with require_balance(provider, 60, guard=guard):
                inside.set()
                await asyncio.to_thread(leave.wait)

        thread = threading.Thread(target=asyncio.run, args=(elsewhere(),))
        thread.start()
        await asyncio.to_thread(inside.wait)
        try:
            assert Decimal(60) == guard.held(provider)
            with pytest.raises(InsufficientBalance):
                async with require_balance(provider, 60, guard=guard):
                    pass
        finally:
            leave.set()
            await asyncio.to_thread(thread.join)

        assert Decimal(0) == guard.held(provider)
        assert home_session is guard._fetcher._session
        # Its fetches (the second call's, and the refresh after the first
        # settled) ran at home.
        assert {asyncio.get_running_loop()} == set(provider.loops)

    async def test_cancelled_call_from_another_loop_leaves_no_hold(
        self, guard: BalanceGuard
    ) -> None:
        """Cancelling a call forwarded from another loop leaves nothing held."""
        provider = LoopRecorder(100, delay=0.05)
        await guard.balance(provider)
        await guard.invalidate(provider)

        async def elsewhere() -> None:
            task = asyncio.create_task(hold(guard, provider, Decimal(10)))
            await asyncio.sleep(0.01)  # the fetch is under way at home
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        await asyncio.to_thread(asyncio.run, elsewhere())
        await asyncio.sleep(0.1)  # the home loop finishes the fetch

        assert Decimal(0) == guard.held(provider)
        assert {asyncio.get_running_loop()} == set(provider.loops)

    def test_adopts_the_next_loop(self, provider: InMemoryProvider) -> None:
        """A guard whose loop has ended works on the next one (asyncio.run again)."""
        guard = BalanceGuard(settle="invalidate")

        async def use() -> Decimal:
            async with require_balance(provider, 1, guard=guard) as seen:
                assert seen is not None
                return seen.amount

        assert Decimal(1000) == asyncio.run(use())
        assert Decimal(1000) == asyncio.run(use())
        asyncio.run(guard.aclose())

    async def test_reads_from_another_loop_run_at_home(
        self, guard: BalanceGuard
    ) -> None:
        """balance, invalidate and aclose from another loop run on the home loop."""
        provider = LoopRecorder(100)
        await guard.balance(provider)

        async def elsewhere() -> Decimal:
            await guard.invalidate(provider)
            amount = (await guard.balance(provider)).amount
            await guard.aclose()
            return amount

        assert Decimal(100) == await asyncio.to_thread(asyncio.run, elsewhere())
        # Its fetches (the second call's, and the refresh after the first
        # settled) ran at home.
        assert {asyncio.get_running_loop()} == set(provider.loops)
        assert guard.closed

    async def test_forgets_its_loop(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """After _forget_loop (a forked child) the running loop is adopted."""
        await guard.balance(provider)
        guard._forget_loop()

        assert Decimal(1000) == (await guard.balance(provider, fresh=True)).amount


class TestUnusualProviders:
    async def test_without_weakref(self, guard: BalanceGuard) -> None:
        """A provider object that can't be weakly referenced still works."""

        class Slotted:
            __slots__ = ()
            name = "slotted"
            currency = "credits"
            account_id = "acct-1"

            async def fetch_balance(self, session: object) -> Decimal:
                return Decimal(3)

        async with require_balance(Slotted(), 2, guard=guard) as seen:  # type: ignore[arg-type]
            assert seen is not None
        assert Decimal(3) == seen.amount

    @pytest.mark.parametrize("raw", [7, "7.50"])
    async def test_int_or_str_balance(self, guard: BalanceGuard, raw: object) -> None:
        """A user's provider may return an int or a str: read exactly."""

        class Plain(InMemoryProvider):
            async def fetch_balance(self, session: object) -> Decimal:  # type: ignore[override]
                return raw  # type: ignore[return-value]

        assert Decimal(str(raw)) == (await guard.balance(Plain())).amount

    async def test_auth_error_on_recheck(self) -> None:
        """Refused credentials on the recheck before a refusal are raised."""
        provider = InMemoryProvider(10)
        async with BalanceGuard(recheck_after=0) as guard:
            await guard.balance(provider)
            provider.fail_next(ProviderAuthError("key revoked", provider="memory"))
            with pytest.raises(ProviderAuthError, match="key revoked"):
                async with require_balance(provider, 50, guard=guard):
                    pass
