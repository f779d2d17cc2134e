"""
The lane (``guard/_lane.py``): a warm in-process balance checked, held and
settled without awaiting. Every form of a guarded call takes it when it
can; these tests hold it to what the general path does.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

from guard import (
    BalanceGuard,
    GuardEvent,
    InsufficientBalance,
    require_balance,
)
from guard._loops import HomeLoop
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from guard.typing import Provider


async def _noop() -> None:
    pass


def lane_taken(guard: BalanceGuard, provider: Provider) -> int:
    """How many calls the lane admitted on *provider*'s account so far."""
    return guard._lane(provider).tracked.stats.allowed


class TestHere:
    def test_home_loop_in_its_thread(self) -> None:
        """here() is true on the home loop, false before it has one."""
        loops = HomeLoop()

        async def main() -> tuple[bool, bool]:
            before = loops.here()
            loops.at_home()
            return before, loops.here()

        assert (False, True) == asyncio.run(main())

    def test_other_loop_in_another_thread(self) -> None:
        """A loop running in another thread is not home."""
        loops = HomeLoop()
        seen: list[bool] = []

        async def other() -> None:
            seen.append(loops.here())

        async def main() -> None:
            loops.at_home()
            thread = threading.Thread(target=asyncio.run, args=(other(),))
            thread.start()
            await asyncio.to_thread(thread.join)

        asyncio.run(main())
        assert [False] == seen

    def test_ended_home_loop(self) -> None:
        """A new loop in the home loop's thread, after it ended, is not home."""
        loops = HomeLoop()

        async def adopt() -> None:
            loops.at_home()

        async def later() -> tuple[bool, bool]:
            return loops.here(), loops.at_home() and loops.here()

        asyncio.run(adopt())
        assert (False, True) == asyncio.run(later())

    def test_any_other_loop_type(self) -> None:
        """A loop that does not say its thread is compared with the running one."""
        loops = HomeLoop()

        async def main() -> bool:
            loops.at_home()
            loops.native = False
            return loops.here()

        assert asyncio.run(main())


class TestLane:
    async def test_every_form_takes_it(self, provider: InMemoryProvider) -> None:
        """Decorator, async with (made once or inline) and reserve() all take it."""
        async with BalanceGuard(settle="debit") as guard:
            guarded = require_balance(provider, 10, guard=guard)(_noop)
            made_once = require_balance(provider, 10, guard=guard)
            await guarded()  # fetches: the general path
            taken = lane_taken(guard, provider)

            await guarded()
            async with made_once:
                pass
            async with require_balance(provider, 10, guard=guard):
                pass
            async with guard.reserve(provider, 10):
                pass

            assert taken + 4 == lane_taken(guard, provider)
            assert Decimal(950) == (await guard.balance(provider)).amount
            assert 1 == provider.fetches

    async def test_balance_is_the_one_checked(self, provider: InMemoryProvider) -> None:
        """The balance a block sees is before its own spend, as on the general path."""
        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            async with require_balance(provider, 100, guard=guard) as first:
                pass
            async with guard.reserve(provider, 100) as second:
                pass
            async with require_balance(provider, 100, guard=guard) as third:
                pass

        assert first is not None
        assert third is not None
        assert second.balance is not None
        amounts = [first.amount, second.balance.amount, third.amount]
        assert [Decimal(1000), Decimal(900), Decimal(800)] == amounts
        assert "DZD" == third.currency
        assert not third.sandbox

    async def test_failed_call_forgets_with_debit(
        self, provider: InMemoryProvider
    ) -> None:
        """A call that raised forgets the balance: the next call fetches."""
        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            with pytest.raises(RuntimeError):
                async with require_balance(provider, 100, guard=guard):
                    raise RuntimeError("the send failed")
            async with require_balance(provider, 100, guard=guard):
                pass

            assert 2 == provider.fetches
            assert Decimal(900) == (await guard.balance(provider)).amount

    async def test_refresh_counts_a_failure_as_spent(
        self, provider: InMemoryProvider
    ) -> None:
        """Under "refresh" a failed call is taken off too, and a refresh runs."""
        async with BalanceGuard(refresh_interval=60) as guard:
            await guard.balance(provider)
            with pytest.raises(RuntimeError):
                async with guard.reserve(provider, 100):
                    raise RuntimeError("the send failed")

            state = guard.accounts()[0]
            assert state.balance is not None
            assert Decimal(900) == state.balance.amount
            assert Decimal(0) == state.spent
            for _ in range(100):  # the background refresh
                if provider.fetches == 2:
                    break
                await asyncio.sleep(0.01)
            assert 2 == provider.fetches

    async def test_shortage_takes_the_general_path(
        self, provider: InMemoryProvider
    ) -> None:
        """A call the balance can't cover is refused with the amounts, as ever."""
        async with (
            BalanceGuard(settle="debit") as guard,
            guard.reserve(provider, 900),
        ):
            with pytest.raises(InsufficientBalance) as info:
                async with require_balance(provider, 200, guard=guard):
                    pass

        assert (Decimal(200), Decimal(100)) == (
            info.value.required,
            info.value.available,
        )

    async def test_expired_balance_is_fetched(self, provider: InMemoryProvider) -> None:
        """A balance older than ttl is not used by the lane."""
        async with BalanceGuard(settle="debit", ttl=0.05) as guard:
            await guard.balance(provider)
            await asyncio.sleep(0.1)
            async with require_balance(provider, 1, guard=guard):
                pass

            assert 2 == provider.fetches

    async def test_a_hook_wanting_settled_events_gets_them(
        self, provider: InMemoryProvider
    ) -> None:
        """Calls a settled hook would miss on the lane go the general path."""
        events: list[GuardEvent] = []
        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            async with require_balance(provider, 1, guard=guard):
                guard.add_hook(events.append, kinds=["settled"])
            async with require_balance(provider, 1, guard=guard):
                pass

        settled = [(e.amount, e.ok) for e in events]
        assert [(Decimal(1), True), (Decimal(1), True)] == settled
        assert events[1].duration is not None

    async def test_accounts_show_the_debited_balance(
        self, provider: InMemoryProvider
    ) -> None:
        """accounts() shows the balance less what the lane's calls spent."""
        async with BalanceGuard(settle="debit") as guard:
            guarded = require_balance(provider, 25, guard=guard)(_noop)
            for _ in range(4):
                await guarded()
            state = guard.accounts()[0]

        assert state.balance is not None
        assert Decimal(900) == state.balance.amount
        assert Decimal(100) == state.spent
        assert 4 == state.calls["allowed"]
        assert Decimal(0) == state.held

    async def test_held_while_running(self, provider: InMemoryProvider) -> None:
        """What running calls hold on the lane is held() and blocks others."""
        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            async with require_balance(provider, 600, guard=guard):
                assert Decimal(600) == guard.held(provider)
                with pytest.raises(InsufficientBalance):
                    async with guard.reserve(provider, 401):
                        pass
            assert Decimal(0) == guard.held(provider)

    async def test_from_another_loop(self, provider: InMemoryProvider) -> None:
        """A call from a loop in another thread is forwarded, and settles at home."""
        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            rb = require_balance(provider, 100, guard=guard)

            async def elsewhere() -> None:
                async with rb:
                    pass
                async with guard.reserve(provider, 100):
                    pass

            await asyncio.to_thread(asyncio.run, elsewhere())

            assert Decimal(800) == (await guard.balance(provider)).amount
            assert Decimal(0) == guard.held(provider)


class TestMadeOnce:
    async def test_same_arguments_same_object(self, provider: InMemoryProvider) -> None:
        """require_balance() with the arguments of the last call returns its object."""
        async with BalanceGuard() as guard:
            first = require_balance(provider, 5, guard=guard)
            assert first is require_balance(provider, 5, guard=guard)
            assert first is not require_balance(provider, 6, guard=guard)
            assert first is not require_balance(provider, "5", guard=guard)
            assert first is not require_balance(
                provider, 5, guard=guard, settle="debit"
            )
            assert first is not require_balance(InMemoryProvider(1000), 5, guard=guard)

    async def test_one_object_many_tasks(self, provider: InMemoryProvider) -> None:
        """Tasks entering the same object at once each settle their own entry."""
        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            gate = asyncio.Event()

            async def spend(fail: bool) -> None:
                async with require_balance(provider, 100, guard=guard):
                    await gate.wait()
                    if fail:
                        raise RuntimeError("failed")

            tasks = [asyncio.create_task(spend(n == 3)) for n in range(5)]
            await asyncio.sleep(0.01)
            assert Decimal(500) == guard.held(provider)
            gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)

            assert 1 == sum(isinstance(r, RuntimeError) for r in results)
            assert Decimal(0) == guard.held(provider)
            state = guard.accounts()[0]
            assert Decimal(400) == state.spent


class TestRecorders:
    async def test_a_failing_recorder_is_logged(
        self, provider: InMemoryProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A recorder that raises is logged; the call settles all the same."""
        told: list[tuple[Decimal, bool, float | None]] = []

        def record(
            tracked: object, amount: Decimal, ok: bool, duration: float | None
        ) -> None:
            told.append((amount, ok, duration))

        def broken(*args: object) -> None:
            raise RuntimeError("recorder bug")

        async with BalanceGuard(settle="debit") as guard:
            await guard.balance(provider)
            guard._hooks.record(broken)
            guard._hooks.record(record)
            async with require_balance(provider, 10, guard=guard):
                pass
            guard._hooks.unrecord(broken)
            guard._hooks.unrecord(record)
            async with require_balance(provider, 10, guard=guard):
                pass
            assert Decimal(980) == (await guard.balance(provider)).amount

        assert 1 == len(told)
        assert (Decimal(10), True) == told[0][:2]
        assert told[0][2] is not None
        assert "recorder" in caplog.text
        assert "recorder bug" in caplog.text
