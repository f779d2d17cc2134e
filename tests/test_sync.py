from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

from guard import BalanceGuard, InsufficientBalance, _sync, require_balance
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(name="wallet")
def _wallet() -> InMemoryProvider:
    return InMemoryProvider(100, name="memory", currency="DZD")


class TestDecorator:
    def test_runs_and_releases(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """A guarded def runs in the caller's thread and leaves no hold."""

        @require_balance(wallet, 30, guard=sync_guard)
        def pay(phone: str) -> tuple[str, int]:
            wallet.spend(30)
            return phone, threading.get_ident()

        assert ("0550000000", threading.get_ident()) == pay("0550000000")
        assert Decimal(70) == wallet.balance
        assert Decimal(0) == sync_guard.held(wallet)

    def test_refuses_before_running(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """A call the balance cannot cover raises and never runs."""
        calls: list[int] = []

        @require_balance(wallet, 101, guard=sync_guard)
        def pay() -> None:
            calls.append(1)

        with pytest.raises(InsufficientBalance) as info:
            pay()

        assert [] == calls
        assert Decimal(100) == info.value.available
        assert Decimal(101) == info.value.required

    def test_amount_from_arguments(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """A sync amount callable receives the call's arguments."""

        @require_balance(wallet, lambda amount: amount, guard=sync_guard)
        def pay(amount: Decimal) -> Decimal:
            return amount

        assert Decimal(100) == pay(Decimal(100))
        with pytest.raises(InsufficientBalance):
            pay(Decimal("100.01"))

    def test_async_amount_runs_on_the_private_loop(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """An async amount callable is awaited on the one private loop."""
        loops: list[asyncio.AbstractEventLoop] = []

        async def price(n: int) -> int:
            loops.append(asyncio.get_running_loop())
            return n

        @require_balance(wallet, price, guard=sync_guard)
        def pay(n: int) -> int:
            return n

        assert 1 == pay(1)
        assert 2 == pay(2)
        assert [_sync.portal_loop()] * 2 == loops

    def test_exception_releases_the_hold(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """A call that raises still releases its hold."""

        @require_balance(wallet, 60, guard=sync_guard)
        def pay() -> None:
            raise RuntimeError("gateway down")

        with pytest.raises(RuntimeError, match="gateway down"):
            pay()
        assert Decimal(0) == sync_guard.held(wallet)

    def test_default_guard(self, wallet: InMemoryProvider) -> None:
        """Without a guard, the default guard is used."""

        @require_balance(wallet, 100)
        def pay() -> str:
            return "sent"

        assert "sent" == pay()

    def test_generator_refused(self, wallet: InMemoryProvider) -> None:
        """A generator function cannot be guarded: its body runs later."""

        def numbers() -> Iterator[int]:
            yield 1

        with pytest.raises(TypeError, match="generator"):
            require_balance(wallet, 1)(numbers)

    async def test_refused_inside_a_running_loop(
        self, wallet: InMemoryProvider
    ) -> None:
        """The sync API called from a running loop says to use the async form."""

        @require_balance(wallet, 1)
        def pay() -> None:
            pass

        with pytest.raises(RuntimeError, match="async with require_balance"):
            pay()
        with (
            pytest.raises(RuntimeError, match="use the async form"),
            require_balance(wallet, 1),
        ):
            pass


class TestContextManager:
    def test_holds_while_inside(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """``with`` holds the amount inside and returns the balance."""
        with require_balance(wallet, 40, guard=sync_guard) as balance:
            assert balance is not None
            assert Decimal(100) == balance.amount
            assert Decimal(40) == sync_guard.held(wallet)
        assert Decimal(0) == sync_guard.held(wallet)

    def test_refuses(self, sync_guard: BalanceGuard, wallet: InMemoryProvider) -> None:
        """``with`` raises InsufficientBalance before its body runs."""
        entered = False
        with (
            pytest.raises(InsufficientBalance),
            require_balance(wallet, 500, guard=sync_guard),
        ):
            entered = True
        assert not entered

    def test_exception_releases(
        self, sync_guard: BalanceGuard, wallet: InMemoryProvider
    ) -> None:
        """A body that raises releases its hold."""
        guarded = require_balance(wallet, 40, guard=sync_guard)
        with pytest.raises(KeyError), guarded:
            raise KeyError("boom")
        assert Decimal(0) == sync_guard.held(wallet)

    def test_callable_amount_refused(self, wallet: InMemoryProvider) -> None:
        """A computed amount needs a decorated function's arguments."""
        with (
            pytest.raises(TypeError, match="decorator"),
            require_balance(wallet, lambda: 1),
        ):
            pass


class TestThreads:
    def test_no_overspend(self, sync_guard: BalanceGuard) -> None:
        """Concurrent threads never spend more than the balance, and leave no hold."""
        wallet = InMemoryProvider(100, name="memory", currency="DZD")
        spend_lock = threading.Lock()
        threads: set[int] = set()

        @require_balance(wallet, 10, guard=sync_guard)
        def pay() -> None:
            threads.add(threading.get_ident())
            time.sleep(0.001)  # let calls overlap
            with spend_lock:
                wallet.spend(10)

        def attempt(_: int) -> bool:
            try:
                pay()
            except InsufficientBalance:
                return False
            return True

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(attempt, range(40)))

        assert 10 == results.count(True)
        assert Decimal(0) == wallet.balance
        assert Decimal(0) == sync_guard.held(wallet)
        assert len(threads) > 1

    def test_one_loop_for_every_thread(self, sync_guard: BalanceGuard) -> None:
        """Every thread's guard work runs on the same private loop thread."""
        wallet = InMemoryProvider(1000, name="memory", currency="DZD")
        seen: set[tuple[int, int]] = set()

        async def price() -> int:
            loop = asyncio.get_running_loop()
            seen.add((id(loop), threading.get_ident()))
            return 1

        def pay() -> None:
            with require_balance(wallet, 1, guard=sync_guard):
                pass
            require_balance(wallet, price, guard=sync_guard)(lambda: None)()

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: pay(), range(20)))

        loop = _sync.portal_loop()
        assert loop is not None
        assert 1 == len(seen)
        assert id(loop) == next(iter(seen))[0]


class SoftTimeLimit(BaseException):
    """Like Celery's SoftTimeLimitExceeded: raised in the caller's thread."""


class SlowWallet:
    """A provider whose first balance read waits until the test lets it go."""

    name = "memory"
    currency = "DZD"
    account_id = "slow-1"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()

    async def fetch_balance(self, session: object) -> Decimal:
        self.started.set()
        while not self.go.is_set():
            await asyncio.sleep(0.005)
        return Decimal(100)


class TestInterrupted:
    def test_interrupted_wait_leaves_no_hold(self, sync_guard: BalanceGuard) -> None:
        """An exception in the caller's thread while it waits leaks no hold."""
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signals are delivered to the main thread")
        wallet = SlowWallet()
        main = threading.get_ident()

        def interrupt(signum: int, frame: object) -> None:
            raise SoftTimeLimit

        @require_balance(wallet, 60, guard=sync_guard)
        def pay() -> str:
            return "sent"

        def when_waiting() -> None:
            wallet.started.wait()
            signal.pthread_kill(main, signal.SIGUSR1)

        previous = signal.signal(signal.SIGUSR1, interrupt)
        try:
            threading.Thread(target=when_waiting).start()
            with pytest.raises(SoftTimeLimit):
                pay()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        wallet.go.set()

        # With a hold of 60 left over, this one could not have 60 more.
        assert "sent" == pay()
        assert Decimal(0) == sync_guard.held(wallet)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
class TestFork:
    @pytest.mark.parametrize("explicit", [False, True], ids=["default", "given"])
    def test_child_after_fork(self, sync_guard: BalanceGuard, explicit: bool) -> None:
        """A child forked after the sync API ran uses it too (prefork workers)."""
        wallet = InMemoryProvider(100, name="memory", currency="DZD")

        @require_balance(wallet, 10, guard=sync_guard if explicit else None)
        def pay() -> str:
            return "sent"

        assert "sent" == pay()
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork in a threaded process: the reason
            # for the fix tested here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 3
            try:
                signal.alarm(20)  # hung: SIGALRM ends it
                code = 0 if "sent" == pay() else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)

        assert not os.WIFSIGNALED(status), "the child hung"
        assert 0 == os.WEXITSTATUS(status)


EXIT_SCRIPT = """
import asyncio, threading
from guard import InsufficientBalance, require_balance
from guard.testing import InMemoryProvider

wallet = InMemoryProvider(100, name="memory", currency="DZD")
started = threading.Event()

async def never() -> int:
    started.set()
    await asyncio.Event().wait()
    return 1

@require_balance(wallet, lambda: never())
def pay() -> None:
    pass

threading.Thread(target=pay, daemon=True).start()
started.wait()
print("exiting", flush=True)
"""


def test_exit_does_not_wait_for_the_private_loop(tmp_path: Path) -> None:
    """Interpreter exit cancels what still runs on the private loop."""
    script = tmp_path / "exits.py"
    script.write_text(EXIT_SCRIPT)

    # The timeout only turns a hang into a failure.
    done = subprocess.run(  # noqa: S603
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )

    assert (0, "exiting\n") == (done.returncode, done.stdout)
