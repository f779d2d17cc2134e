"""
The public guarded-call API: `BalanceGuard.reserve` and its `Reservation`,
one `require_balance` object shared by tasks and threads, the stores a guard
takes, what `BalanceGuard.accounts` counts, hooks, and the outage back-off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from _providers import LoopRecorder
from aiocache import SimpleMemoryCache

from guard import (
    AmountError,
    BalanceGuard,
    BalanceUnavailable,
    ConfigurationError,
    GuardEvent,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
    RequireBalance,
    Reservation,
    _fetch,
    _sync,
    require_balance,
)
from guard.stores import MemoryStore
from guard.testing import Emulator, Fault, InMemoryProvider, Route
from guard.typing import Store

if TYPE_CHECKING:
    from collections.abc import Iterator

    from guard.providers import OneClickDZ
    from guard.stores import Account, Entry, Hold, Outcome, Short, Ticket

KEY = "sk_reserve_0123456789"


class Boom(Exception):
    """What a guarded block raises in these tests."""


def settled(events: list[GuardEvent]) -> list[bool | None]:
    """The ``ok`` of every settled event, in order."""
    return [e.ok for e in events if e.kind == "settled"]


class TestReserve:
    async def test_holds_on_entry_releases_on_return(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """The amount is held inside the block and released when it returns."""
        async with guard.reserve(provider, 300) as reservation:
            assert Decimal(300) == guard.held(provider)
            with pytest.raises(InsufficientBalance):
                async with guard.reserve(provider, 701):
                    pass

        assert Decimal(0) == guard.held(provider)
        assert isinstance(reservation, Reservation)
        assert provider is reservation.provider
        assert Decimal(300) == reservation.amount
        assert reservation.balance is not None
        assert Decimal(1000) == reservation.balance.amount
        assert "DZD" == reservation.balance.currency

    async def test_releases_on_exception(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A block that raises releases its hold and settles as a failure."""
        events: list[GuardEvent] = []
        guard.add_hook(events.append)

        with pytest.raises(Boom):
            async with guard.reserve(provider, 300):
                raise Boom

        assert Decimal(0) == guard.held(provider)
        assert [False] == settled(events)

    async def test_releases_on_cancellation(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A block cancelled while it runs releases its hold."""
        inside = asyncio.Event()

        async def run() -> None:
            async with guard.reserve(provider, 300):
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(run())
        await inside.wait()
        assert Decimal(300) == guard.held(provider)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert Decimal(0) == guard.held(provider)

    async def test_cancelled_on_entry_holds_nothing(self, guard: BalanceGuard) -> None:
        """A block cancelled while its balance is fetched leaves no hold."""
        provider = InMemoryProvider(1000, delay=0.05)

        async def run() -> None:
            async with guard.reserve(provider, 300):
                pass  # pragma: no cover - cancelled before

        task = asyncio.create_task(run())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.08)  # the fetch finishes

        assert Decimal(0) == guard.held(provider)
        async with guard.reserve(provider, 1000):
            pass

    async def test_failed_settles_as_failure(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """failed() makes a block that returned settle as a failed spend."""
        events: list[GuardEvent] = []
        guard.add_hook(events.append)

        async with guard.reserve(provider, 300) as reservation:
            reservation.failed()
        async with guard.reserve(provider, 200):
            pass

        assert [False, True] == settled(events)
        (state,) = guard.accounts()
        assert Decimal(200) == state.spent
        assert Decimal(0) == guard.held(provider)

    async def test_debit_unless_failed(
        self, debit_guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """With settle="debit" a failed() block invalidates instead of debiting."""
        async with debit_guard.reserve(provider, 300):
            pass
        # Debited: no fetch.
        assert Decimal(700) == (await debit_guard.balance(provider)).amount
        assert 1 == provider.fetches

        async with debit_guard.reserve(provider, 300) as reservation:
            reservation.failed()
        # Invalidated: the provider is asked again.
        assert Decimal(1000) == (await debit_guard.balance(provider)).amount
        assert 2 == provider.fetches

    async def test_per_call_settle(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """settle= on one reserve() overrides the guard's."""
        async with guard.reserve(provider, 300, settle="debit"):
            pass

        assert Decimal(700) == (await guard.balance(provider)).amount
        assert 1 == provider.fetches
        with pytest.raises(ConfigurationError, match="settle"):
            guard.reserve(provider, 1, settle="later")  # type: ignore[arg-type]

    async def test_read_only(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A Reservation can't be changed, and its repr names no balance."""
        async with guard.reserve(provider, 300) as reservation:
            for name in ("amount", "provider", "balance"):
                with pytest.raises(AttributeError, match="read-only"):
                    setattr(reservation, name, Decimal(1))
            with pytest.raises(AttributeError):
                reservation.other = 1  # type: ignore[attr-defined]

        assert Decimal(300) == reservation.amount
        assert "amount=300" in repr(reservation)
        assert "failed=False" in repr(reservation)

    async def test_enter_twice(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A reserve() block is entered once: again, open or closed, raises."""
        block = guard.reserve(provider, 300)
        async with block:
            with pytest.raises(RuntimeError, match="only once"):
                await block.__aenter__()
        with pytest.raises(RuntimeError, match="only once"):
            async with block:
                pass  # pragma: no cover - not entered

        assert Decimal(0) == guard.held(provider)

    async def test_exit_unentered(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """Exiting a reserve() block that was never entered raises."""
        block = guard.reserve(provider, 300)

        with pytest.raises(RuntimeError, match="without being entered"):
            await block.__aexit__(None, None, None)

        assert 0 == provider.fetches

    @pytest.mark.parametrize("amount", [-1, "ten", float("nan"), True, None])
    async def test_bad_amount_at_once(
        self, guard: BalanceGuard, provider: InMemoryProvider, amount: object
    ) -> None:
        """A bad amount raises AmountError from reserve() itself, before any await."""
        with pytest.raises(AmountError, match="amount"):
            guard.reserve(provider, amount)  # type: ignore[arg-type]

        assert 0 == provider.fetches
        assert () == guard.accounts()

    async def test_from_another_loop_runs_at_home(self, guard: BalanceGuard) -> None:
        """reserve() from another thread's loop checks, holds and settles at home."""
        provider = LoopRecorder(100)
        await guard.balance(provider)
        await guard.invalidate(provider)
        inside = threading.Event()
        leave = threading.Event()

        async def elsewhere() -> Reservation:
            async with guard.reserve(provider, 60) as reservation:
                inside.set()
                await asyncio.to_thread(leave.wait)
            return reservation

        task = asyncio.create_task(asyncio.to_thread(asyncio.run, elsewhere()))
        await asyncio.to_thread(inside.wait)
        try:
            assert Decimal(60) == guard.held(provider)
            with pytest.raises(InsufficientBalance):
                async with guard.reserve(provider, 41):
                    pass
        finally:
            leave.set()
            reservation = await task

        assert Decimal(0) == guard.held(provider)
        assert reservation.balance is not None
        assert Decimal(100) == reservation.balance.amount
        # Its fetches (and the refresh after it settled) ran at home.
        assert {asyncio.get_running_loop()} == set(provider.loops)

    @pytest.mark.parametrize("where", ["entering", "inside"])
    async def test_cancelled_from_another_loop_holds_nothing(
        self, guard: BalanceGuard, where: str
    ) -> None:
        """A reserve() from another loop cancelled on entry or inside holds nothing."""
        provider = LoopRecorder(100, delay=0.05)
        await guard.balance(provider)
        await guard.invalidate(provider)

        async def elsewhere() -> None:
            inside = asyncio.Event()

            async def run() -> None:
                async with guard.reserve(provider, 60):
                    inside.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(run())
            if where == "entering":
                await asyncio.sleep(0.01)  # the fetch is under way at home
            else:
                await inside.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        await asyncio.to_thread(asyncio.run, elsewhere())
        await asyncio.sleep(0.1)  # the home loop finishes what it was doing

        assert Decimal(0) == guard.held(provider)
        assert {asyncio.get_running_loop()} == set(provider.loops)


class TestSharedRequirement:
    """
    One `require_balance` object entered many times at once: each exit
    releases one hold and settles the entry it closes.

    Each test tells entries apart by the cached balance each was held
    against: with ``settle="debit"`` a successful exit debits the balance
    its own hold was checked against if it is still the cached one, and
    invalidates it otherwise.
    """

    async def test_many_tasks(
        self,
        debit_guard: BalanceGuard,
        provider: InMemoryProvider,
        events: list[GuardEvent],
    ) -> None:
        """Many tasks in one object at once: each exit settles with its own outcome."""
        requirement = require_balance(provider, 10, guard=debit_guard)
        all_in = asyncio.Barrier(50)

        async def use(i: int) -> None:
            async with requirement:
                await all_in.wait()
                if i % 2:
                    raise Boom

        results = await asyncio.gather(
            *(use(i) for i in range(50)), return_exceptions=True
        )

        assert 25 == sum(isinstance(r, Boom) for r in results)
        assert Decimal(0) == debit_guard.held(provider)
        assert [False, True] == sorted(set(settled(events)))
        assert 25 == settled(events).count(True)
        assert Decimal(250) == debit_guard.accounts()[0].spent

    async def test_tasks_settle_their_own_entry(
        self, debit_guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A task's exit settles its own entry, not the one another task opened."""
        requirement = require_balance(provider, 100, guard=debit_guard)
        first_in = asyncio.Event()
        second_out = asyncio.Event()

        async def first() -> None:
            async with requirement:  # held against the first fetch
                first_in.set()
                await second_out.wait()
                raise Boom

        async def second() -> Decimal:
            await first_in.wait()
            await debit_guard.invalidate(provider)
            async with requirement:  # held against a second fetch
                pass
            second_out.set()
            # Its own hold's balance, debited: no fetch.
            return (await debit_guard.balance(provider)).amount

        one, two = await asyncio.gather(first(), second(), return_exceptions=True)

        assert isinstance(one, Boom)
        assert Decimal(900) == two
        assert 2 == provider.fetches
        assert Decimal(0) == debit_guard.held(provider)

    async def test_nested_in_one_task(
        self,
        debit_guard: BalanceGuard,
        provider: InMemoryProvider,
        events: list[GuardEvent],
    ) -> None:
        """Nested in one task, the inner exit settles the inner entry."""
        requirement = require_balance(provider, 100, guard=debit_guard)

        async with requirement as outer:
            await debit_guard.invalidate(provider)
            async with requirement as inner:
                assert Decimal(200) == debit_guard.held(provider)
            assert Decimal(100) == debit_guard.held(provider)
            # The inner hold's balance was debited: no fetch.
            assert Decimal(900) == (await debit_guard.balance(provider)).amount
            assert 2 == provider.fetches
        # The outer hold's balance is no longer the cached one: invalidated.
        assert Decimal(1000) == (await debit_guard.balance(provider)).amount
        assert 3 == provider.fetches

        assert outer is not None
        assert inner is not None
        assert Decimal(0) == debit_guard.held(provider)
        assert [True, True] == settled(events)

    async def test_exit_in_another_task(
        self, debit_guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """An AsyncExitStack closed in another task settles with that exit's outcome."""
        requirement = require_balance(provider, 100, guard=debit_guard)

        for outcome in ("ok", "failed"):
            stack = contextlib.AsyncExitStack()
            await asyncio.create_task(stack.enter_async_context(requirement))
            assert Decimal(100) == debit_guard.held(provider)
            if outcome == "ok":
                await asyncio.create_task(stack.aclose())
            else:
                error = Boom()
                exit_ = stack.__aexit__(Boom, error, None)
                assert not await asyncio.create_task(exit_)
            assert Decimal(0) == debit_guard.held(provider)
            seen = (await debit_guard.balance(provider)).amount
            if outcome == "ok":
                # Debited: no fetch.
                assert (Decimal(900), 1) == (seen, provider.fetches)
            else:
                # Invalidated: fetched again.
                assert (Decimal(1000), 2) == (seen, provider.fetches)

    async def test_exit_unentered(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """Exiting a require_balance object that holds nothing raises."""
        requirement = require_balance(provider, 100, guard=guard)

        with pytest.raises(RuntimeError, match="without being entered"):
            await requirement.__aexit__(None, None, None)
        async with requirement:
            pass
        with pytest.raises(RuntimeError, match="without being entered"):
            await requirement.__aexit__(None, None, None)

        assert Decimal(0) == guard.held(provider)

    async def test_many_stacks_closed_elsewhere(
        self,
        debit_guard: BalanceGuard,
        provider: InMemoryProvider,
        events: list[GuardEvent],
    ) -> None:
        """Stacks entered in many tasks and closed in another leave nothing held."""
        requirement = require_balance(provider, 100, guard=debit_guard)
        stacks = [contextlib.AsyncExitStack() for _ in range(5)]

        await asyncio.gather(
            *(
                asyncio.create_task(stack.enter_async_context(requirement))
                for stack in stacks
            )
        )
        assert Decimal(500) == debit_guard.held(provider)
        # Closed in the order entered, but not by the tasks that entered.
        for stack in reversed(stacks):
            await stack.aclose()

        assert Decimal(0) == debit_guard.held(provider)
        assert [True] * 5 == settled(events)
        assert Decimal(500) == debit_guard.accounts()[0].spent


class TestSharedRequirementInThreads:
    def test_many_threads(
        self,
        sync_guard: BalanceGuard,
        provider: InMemoryProvider,
        events: list[GuardEvent],
    ) -> None:
        """Many threads in one object at once (sync with): no hold left, no error."""
        requirement = require_balance(provider, 10, guard=sync_guard, settle="debit")
        threads = 32
        all_in = threading.Barrier(threads)
        errors: list[BaseException] = []

        def use(i: int) -> None:
            try:
                with requirement:
                    all_in.wait(timeout=30)
                    if i % 2:
                        raise Boom
            except Boom:
                pass
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=use, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)

        assert [] == errors
        assert Decimal(0) == sync_guard.held(provider)
        assert threads // 2 == settled(events).count(True)
        assert threads // 2 == settled(events).count(False)

    def test_threads_racing_to_enter_a_fresh_object(
        self, sync_guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """Threads that enter a fresh object at the same moment each get an entry."""
        errors: list[BaseException] = []
        with _switching_often():
            for _ in range(30):
                requirement = require_balance(provider, 10, guard=sync_guard)
                errors += _enter_together(requirement, threads=4)

        assert [] == errors
        assert Decimal(0) == sync_guard.held(provider)

    def test_threads_settle_their_own_entry(
        self, sync_guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A thread's exit settles its own entry, not another thread's."""
        requirement = require_balance(provider, 100, guard=sync_guard, settle="debit")
        first_in = threading.Event()
        second_out = threading.Event()
        seen: list[object] = []

        def first() -> None:
            try:
                with requirement:  # held against the first fetch
                    first_in.set()
                    second_out.wait(timeout=30)
                    raise Boom
            except Boom as exc:
                seen.append(exc)

        def second() -> None:
            first_in.wait(timeout=30)
            _sync.run(sync_guard.invalidate, provider, guard=sync_guard)
            with requirement:  # held against a second fetch
                pass
            second_out.set()
            balance = _sync.run(sync_guard.balance, provider, guard=sync_guard)
            seen.append(balance.amount)

        workers = [threading.Thread(target=first), threading.Thread(target=second)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)

        # The second thread's own hold's balance was debited: no fetch.
        assert Decimal(900) in seen
        assert any(isinstance(s, Boom) for s in seen)
        assert 2 == provider.fetches
        assert Decimal(0) == sync_guard.held(provider)


def _enter_together(
    requirement: RequireBalance, *, threads: int
) -> list[BaseException]:
    """
    Enter *requirement* from *threads* threads started together, all inside
    at once before any leaves; return what they raised.
    """
    start = threading.Barrier(threads)
    inside = threading.Barrier(threads)
    errors: list[BaseException] = []

    def use() -> None:
        try:
            start.wait(timeout=30)
            with requirement:
                inside.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=use) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return errors


@contextlib.contextmanager
def _switching_often() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can."""
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


class CountingStore:
    """
    A store of the user's own: a thin wrapper around a `MemoryStore` that
    counts the calls a guard makes.
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.inner = MemoryStore(ttl=ttl)
        self.calls: collections.Counter[str] = collections.Counter()

    @property
    def ttl(self) -> float:
        return self.inner.ttl

    async def read(self, account: Account) -> Entry | None:
        self.calls["read"] += 1
        return await self.inner.read(account)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        self.calls["try_hold"] += 1
        return await self.inner.try_hold(account, amount)

    def held(self, account: Account) -> Decimal:
        self.calls["held"] += 1
        return self.inner.held(account)

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
        self.calls["begin_fetch"] += 1
        return await self.inner.begin_fetch(account)

    async def abort_fetch(self, account: Account, ticket: Ticket) -> None:
        self.calls["abort_fetch"] += 1
        await self.inner.abort_fetch(account, ticket)

    async def put(
        self, account: Account, amount: Decimal, ticket: Ticket
    ) -> Entry | None:
        self.calls["put"] += 1
        return await self.inner.put(account, amount, ticket)

    async def release(self, hold: Hold, *, outcome: Outcome) -> None:
        self.calls["release"] += 1
        await self.inner.release(hold, outcome=outcome)

    async def invalidate(self, account: Account) -> None:
        self.calls["invalidate"] += 1
        await self.inner.invalidate(account)

    async def close(self) -> None:
        self.calls["close"] += 1
        await self.inner.close()


class TestStores:
    async def test_memory_store(self, provider: InMemoryProvider) -> None:
        """A MemoryStore passed as store= is the guard's store, with its ttl."""
        store = MemoryStore(ttl=7)
        async with BalanceGuard(store=store) as guard:
            async with guard.reserve(provider, 300):
                assert Decimal(300) == guard.held(provider)
            assert store is guard.store
            assert 7 == guard.ttl

    async def test_user_store(self, provider: InMemoryProvider) -> None:
        """A store of the user's own serves the guard through the Store protocol."""
        store = CountingStore(ttl=9)
        assert isinstance(store, Store)
        async with BalanceGuard(store=store) as guard:
            async with guard.reserve(provider, 300):
                assert Decimal(300) == guard.held(provider)
            with pytest.raises(InsufficientBalance):
                async with guard.reserve(provider, 1001):
                    pass
            assert 9 == guard.ttl
            assert store is guard.store

        # Each call misses (the first call's settle invalidated the
        # balance), fetches, and checks again.
        assert {
            "try_hold": 4,
            "begin_fetch": 2,
            "put": 2,
            "release": 1,
            "held": 1,
            "close": 1,
        } == dict(store.calls)

    async def test_user_store_closed_once(self) -> None:
        """A guard closes the store it was given, once."""
        store = CountingStore()
        guard = BalanceGuard(store=store)
        await guard.aclose()
        await guard.aclose()

        assert 1 == store.calls["close"]

    @pytest.mark.parametrize(
        ("options", "words"),
        [
            ({"cache": SimpleMemoryCache()}, "cache or store"),
            ({"ttl": 5}, "ttl"),
        ],
    )
    def test_store_with_cache_or_ttl(
        self, options: dict[str, object], words: str
    ) -> None:
        """store= can't be combined with cache= or ttl=: those make a store."""
        with pytest.raises(ConfigurationError, match=words):
            BalanceGuard(store=MemoryStore(), **options)  # type: ignore[arg-type]

    @pytest.mark.parametrize("store", [object(), SimpleMemoryCache(), "memory"])
    def test_not_a_store(self, store: object) -> None:
        """A store= that isn't a Store is refused, naming the protocol."""
        with pytest.raises(ConfigurationError, match=r"store must implement"):
            BalanceGuard(store=store)  # type: ignore[arg-type]

    def test_cache_by_name(self) -> None:
        """cache="redis" is refused with a ConfigurationError naming cache."""
        with pytest.raises(ConfigurationError, match=r"^cache must be an aiocache"):
            BalanceGuard(cache="redis")  # type: ignore[arg-type]


class TestAccounts:
    async def test_counters_after_a_known_sequence(self) -> None:
        """accounts() counts calls, fetches and spending by outcome."""
        events: list[GuardEvent] = []
        provider = InMemoryProvider(1000, name="memory", currency="DZD")
        async with BalanceGuard(
            on_unavailable="open",
            retries=0,
            auth_cooldown=0,
            outage_backoff=0,
            settle="invalidate",  # no background refreshes: counts are exact
            hooks=[events.append],
        ) as guard:
            assert () == guard.accounts()
            async with guard.reserve(provider, 100):  # allowed, spent
                pass
            async with guard.reserve(provider, 100) as reservation:  # allowed
                reservation.failed()
            with pytest.raises(InsufficientBalance):  # refused
                async with guard.reserve(provider, 5000):
                    pass
            await guard.invalidate(provider)

            # Refused credentials and unreadable answers raise even "open".
            provider.fail_next(ProviderAuthError("refused", provider="memory"))
            with pytest.raises(ProviderAuthError):
                async with guard.reserve(provider, 1):
                    pass
            provider.fail_next(ProviderResponseError("garbage", provider="memory"))
            with pytest.raises(ProviderResponseError):
                async with guard.reserve(provider, 1):
                    pass
            provider.fail_next()  # transient: fails open, unchecked, spent
            async with guard.reserve(provider, 1) as unchecked:
                assert unchecked.balance is None
            (down,) = guard.accounts()
            async with guard.reserve(provider, 1):  # allowed, spent
                pass
            (state,) = guard.accounts()

        assert {
            "allowed": 3,
            "refused": 1,
            "unavailable": 2,
            "failed_open": 1,
        } == state.calls
        assert {"ok": 4, "unavailable": 1, "auth": 1, "bad_response": 1} == (
            state.fetches
        )
        assert Decimal(102) == state.spent
        assert "memory" == state.provider
        assert "DZD" == state.currency
        assert Decimal(0) == state.held
        assert state.balance is not None
        assert Decimal(1000) == state.balance.amount
        assert Decimal(1000) == state.available
        assert 7 == state.fetch_seconds_count
        assert 0 <= state.fetch_seconds_sum
        assert (10.0, 7) == state.fetch_seconds_buckets[-1]
        bounds = [bound for bound, _ in state.fetch_seconds_buckets]
        assert sorted(bounds) == bounds
        counts = [count for _, count in state.fetch_seconds_buckets]
        assert sorted(counts) == counts  # cumulative
        assert down.unavailable_since is not None
        assert state.unavailable_since is None
        assert {state.account} == {e.account for e in events}
        assert [
            "fetched",
            "settled",
            "fetched",
            "settled",
            "fetched",
            "refused",
            "auth_cooldown",
            "unavailable",
            "failed_open",
            "settled",
            "fetched",
            "settled",
        ] == [e.kind for e in events]

    async def test_held_and_available(self, guard: BalanceGuard) -> None:
        """An account's state shows this process's holds and what is left."""
        provider = InMemoryProvider(1000)
        async with guard.reserve(provider, 300):
            (state,) = guard.accounts()

        assert Decimal(300) == state.held
        assert Decimal(700) == state.available
        (after,) = guard.accounts()
        assert Decimal(0) == after.held

    async def test_never_learned(self, guard: BalanceGuard) -> None:
        """An account whose balance was never learned has none, and no available."""
        provider = InMemoryProvider(1000)
        provider.fail_next(times=3)
        with pytest.raises(BalanceUnavailable):
            await guard.balance(provider)

        (state,) = guard.accounts()
        assert state.balance is None
        assert state.available is None
        assert 1 == state.fetches["unavailable"]

    async def test_two_provider_objects_one_account(self, guard: BalanceGuard) -> None:
        """Two provider objects of one account are one account state."""
        one = InMemoryProvider(1000, account_id="acct-1")
        two = InMemoryProvider(1000, account_id="acct-1")
        async with guard.reserve(one, 1), guard.reserve(two, 2):
            pass

        (state,) = guard.accounts()
        assert 2 == state.calls["allowed"]
        assert Decimal(3) == state.spent


class TestHooks:
    async def test_settled_event(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """A settled event tells the amount, whether it spent, and the account."""
        events: list[GuardEvent] = []
        guard.add_hook(events.append)
        async with guard.reserve(provider, 300):
            pass
        with pytest.raises(Boom):
            async with guard.reserve(provider, 200):
                raise Boom

        ok, failed = [e for e in events if e.kind == "settled"]
        (state,) = guard.accounts()
        assert (
            GuardEvent(
                kind="settled",
                provider="memory",
                account_id=provider.account_id,
                account=state.account,
                currency="DZD",
                amount=Decimal(300),
                ok=True,
            )
            == ok
        )
        assert (Decimal(200), False) == (failed.amount, failed.ok)

    async def test_add_and_remove(
        self, guard: BalanceGuard, provider: InMemoryProvider
    ) -> None:
        """Hooks are called in the order added, until removed."""
        seen: list[str] = []

        def first(event: GuardEvent) -> None:
            seen.append(f"first:{event.kind}")

        def second(event: GuardEvent) -> None:
            seen.append(f"second:{event.kind}")

        guard.add_hook(first)
        guard.add_hook(second)
        await guard.balance(provider)
        guard.remove_hook(first)
        guard.remove_hook(first)  # not there any more: nothing
        await guard.balance(provider, fresh=True)
        guard.remove_hook(second)
        await guard.balance(provider, fresh=True)

        assert ["first:fetched", "second:fetched", "second:fetched"] == seen

    def test_async_hook_refused(self, guard: BalanceGuard) -> None:
        """add_hook refuses what isn't a plain callable."""

        async def hook(event: GuardEvent) -> None:
            pass  # pragma: no cover

        for bad in (hook, "print"):
            with pytest.raises(ConfigurationError, match="hooks must be"):
                guard.add_hook(bad)  # type: ignore[arg-type]


@pytest.fixture(name="down")
def _down(emu: Emulator) -> OneClickDZ:
    """An emulated OneClickDZ account whose balance route answers 503 for now."""
    emu.add_oneclickdz(KEY, 1000)
    emu.fail(
        Route.ONECLICKDZ_BALANCE,
        Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"),
        times=None,
    )
    return emu.oneclickdz(KEY)


class TestOutageBackoff:
    async def test_an_outage_is_not_hammered(
        self, emu: Emulator, down: OneClickDZ
    ) -> None:
        """300 calls over 3 s into a 503 without Retry-After ask only a few times."""
        async with BalanceGuard() as guard:
            results = await asyncio.gather(
                *(_call(guard, down) for _ in range(150)), return_exceptions=True
            )
            for _ in range(150):
                results.append(await _call(guard, down))
                await asyncio.sleep(0.02)

        assert all(isinstance(r, BalanceUnavailable) for r in results)
        # Fetches of three tries (two retries) about 0, 1.3, 3.6 and 7.9 s in
        # (the back-off doubles from 1 s): 3 of them, 9 requests, in the
        # 4 s this takes; one more for a slow machine. Without the back-off:
        # 453 (each caller starts a fetch).
        assert emu.count(Route.ONECLICKDZ_BALANCE) <= 12

    async def test_fails_fast_with_the_time_left(
        self, emu: Emulator, down: OneClickDZ
    ) -> None:
        """Calls inside the back-off raise at once, with the time left to wait."""
        async with BalanceGuard(retries=0, outage_backoff=1.0) as guard:
            first = await _call(guard, down)
            asked = emu.count(Route.ONECLICKDZ_BALANCE)
            soon = await _call(guard, down)
            await asyncio.sleep(0.2)
            later = await _call(guard, down)

        assert 1 == asked
        assert 1 == emu.count(Route.ONECLICKDZ_BALANCE)
        assert 503 == first.status
        assert first.retry_after is None  # the provider gave no hint
        assert soon.retry_after is not None
        assert later.retry_after is not None
        assert 0.2 <= soon.retry_after - later.retry_after
        assert 0.5 < soon.retry_after <= 1.0
        assert 503 == soon.status
        assert "SERVICE_UNAVAILABLE" in soon.reason

    async def test_grows_and_is_capped(
        self, emu: Emulator, down: OneClickDZ, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The back-off doubles while the outage lasts, up to its cap."""
        monkeypatch.setattr(_fetch, "MAX_OUTAGE_BACKOFF", 0.4)
        waits: list[float] = []
        async with BalanceGuard(retries=0, outage_backoff=0.1) as guard:
            for _ in range(5):
                await _call(guard, down)  # asks, and fails
                fast = await _call(guard, down)
                assert fast.retry_after is not None
                waits.append(fast.retry_after)
                await asyncio.sleep(fast.retry_after + 0.02)

        assert 5 == emu.count(Route.ONECLICKDZ_BALANCE)
        for seen, expected in zip(waits, [0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
            assert expected / 2 < seen <= expected

    async def test_recovery(self, emu: Emulator, down: OneClickDZ) -> None:
        """Once the back-off passed, the first call asks and succeeds; it resets."""
        async with BalanceGuard(retries=0, outage_backoff=0.2) as guard:
            await _call(guard, down)
            emu.clear_faults()
            during = await _call(guard, down)  # still inside the back-off
            assert 1 == emu.count(Route.ONECLICKDZ_BALANCE)
            assert during.retry_after is not None
            await asyncio.sleep(during.retry_after + 0.02)

            async with guard.reserve(down, 100) as reservation:
                assert reservation.balance is not None
            assert 2 == emu.count(Route.ONECLICKDZ_BALANCE)

            # Reset: the next outage starts from the first back-off again.
            emu.fail(
                Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(503, "SERVICE_UNAVAILABLE")
            )
            await guard.invalidate(down)
            await _call(guard, down)
            again = await _call(guard, down)

        assert again.retry_after is not None
        assert again.retry_after <= 0.2
        assert 3 == emu.count(Route.ONECLICKDZ_BALANCE)

    async def test_off(self, emu: Emulator, down: OneClickDZ) -> None:
        """outage_backoff=0 asks the provider on every fetch."""
        async with BalanceGuard(retries=0, outage_backoff=0) as guard:
            for _ in range(3):
                await _call(guard, down)

        assert 3 == emu.count(Route.ONECLICKDZ_BALANCE)


async def _call(guard: BalanceGuard, provider: OneClickDZ) -> BalanceUnavailable:
    """Make one guarded call that must fail as unavailable; return its error."""
    with pytest.raises(BalanceUnavailable) as info:
        async with guard.reserve(provider, 100):
            pass  # pragma: no cover - refused
    return info.value
