"""
Measure what the aiohttp client middleware costs per spend request when it
guards many accounts, as a ratio to the same middleware guarding one.

Run from the repository root, in the dev environment::

    python benchmarks/bench_client.py            # full run
    python benchmarks/bench_client.py --quick    # fewer requests, for CI
    python benchmarks/bench_client.py --check    # exit 1 if a target is missed

For each provider kind (OneClickDZ ``POST /v3/mobile/send``, Clickatell
legacy ``POST /http/sendmsg``, Clickatell Platform ``POST /messages``), real
spend requests go over loopback to the emulator from ``guard.testing``,
which runs in a thread of its own so that the client thread's CPU time is
the client's alone. The emulator holds 1,000 accounts of the kind, each with
its own credentials. The same requests are sent through
``guard_client_middleware`` given one account (the baseline) and given all
1,000, spending the first, a middle and the last of them.

One run prints, for each kind and account:

- **client CPU per request**: the client thread's CPU time for one
  ``session.post`` and the read of its answer (aiohttp's work, the
  middleware's and the guard's), and its ratio to the baseline's;
- **middleware CPU per request**: the part spent in the middleware itself,
  from two timing middlewares around it, and its ratio to the baseline's.

Each figure is the median over repeats; the configurations are interleaved
within each repeat, so noise from other processes hits them alike, and the
garbage collector is paused in the timed loops, as ``timeit`` does. Target:
both ratios at most 1.1x for every account spent. Each request is also
checked to have debited the account it named at the emulator, and no other.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import attrs

from guard import BalanceGuard
from guard.aiohttp import guard_client_middleware
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from _spends import Add, Spend
    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

    from guard.typing import Provider

TARGET = 1.1
PLENTY = Decimal(10) ** 12

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _spends import KINDS  # noqa: E402 - found on the path just set


@attrs.define
class Timer:
    """
    Two client middlewares around the guard's: the CPU time spent between
    them on the way out and on the way back is the guard middleware's.
    """

    spent: float = 0.0
    _entered: float = 0.0
    _sent: float = 0.0

    async def outer(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        self._entered = time.thread_time()
        response = await handler(request)
        self.spent += time.thread_time() - self._sent
        return response

    async def inner(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        self.spent += time.thread_time() - self._entered
        response = await handler(request)
        self._sent = time.thread_time()
        return response


class EmulatorThread:
    """
    The emulator served by an event loop in a thread of its own.
    """

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.emu.start(), self.loop).result()
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.emu.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@attrs.define
class Candidate:
    """
    One middleware spending on one account, and its figures per repeat.
    """

    label: str
    session: aiohttp.ClientSession
    timer: Timer
    provider: Provider
    client: list[float] = attrs.field(factory=list)
    own: list[float] = attrs.field(factory=list)


def _session(
    guard: BalanceGuard, providers: Sequence[Provider]
) -> tuple[aiohttp.ClientSession, Timer]:
    timer = Timer()
    middlewares: tuple[ClientMiddlewareType, ...] = (
        timer.outer,
        guard_client_middleware(guard, providers=providers),
        timer.inner,
    )
    return aiohttp.ClientSession(middlewares=middlewares), timer


async def _loop(spend: Spend, candidate: Candidate, n: int) -> None:
    candidate.timer.spent = 0.0
    gc.disable()
    try:
        started = time.thread_time()
        for _ in range(n):
            status = await spend(candidate.session, candidate.provider)
            assert 200 <= status < 300, status
        used = time.thread_time() - started
    finally:
        gc.enable()
    candidate.client.append(used / n)
    candidate.own.append(candidate.timer.spent / n)


async def measure(
    add: Add, spend: Spend, emu: Emulator, accounts: int, n: int, repeats: int
) -> list[Candidate]:
    """
    Interleaved repeats of *n* spends per candidate; the first candidate is
    the baseline (one account).
    """
    providers = [add(emu, i, PLENTY) for i in range(accounts)]
    async with BalanceGuard(settle="debit", retries=0) as guard:
        one, one_timer = _session(guard, providers[:1])
        many, many_timer = _session(guard, providers)
        candidates = [Candidate("1 of 1", one, one_timer, providers[0])]
        for label, index in (
            ("first", 0),
            ("middle", accounts // 2),
            ("last", accounts - 1),
        ):
            candidates.append(
                Candidate(
                    f"{label} of {accounts:,}", many, many_timer, providers[index]
                )
            )
        try:
            before = {id(p): emu.balance(p) for p in providers}
            for candidate in candidates:  # warm: balances, catalogues, pools
                await _loop(spend, candidate, max(n // 5, 5))
                candidate.client.clear()
                candidate.own.clear()
            for r in range(repeats):
                # Rotated, so that no candidate always follows the collection.
                shift = r % len(candidates)
                for candidate in candidates[shift:] + candidates[:shift]:
                    await _loop(spend, candidate, n)
                gc.collect()
            spent = {c.provider for c in candidates}
            for provider in providers:
                moved = emu.balance(provider) != before[id(provider)]
                assert moved == (provider in spent), "a spend reached another account"
        finally:
            await one.close()
            await many.close()
    return candidates


def report(kind: str, candidates: list[Candidate]) -> bool:
    met = True
    for candidate in candidates:
        client = statistics.median(candidate.client)
        own = statistics.median(candidate.own)
        client_ratio = statistics.median(
            c / b for c, b in zip(candidate.client, candidates[0].client, strict=True)
        )
        own_ratio = statistics.median(
            c / b for c, b in zip(candidate.own, candidates[0].own, strict=True)
        )
        ok = client_ratio <= TARGET and own_ratio <= TARGET
        met = met and ok
        print(
            f"  {kind:<11} {candidate.label:<16} "
            f"{client * 1e6:8.0f} µs {client_ratio:6.2f}x   "
            f"{own * 1e6:8.0f} µs {own_ratio:6.2f}x"
            + ("" if ok else "   target missed")
        )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--check", action="store_true", help="exit 1 on a miss")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n = args.requests or (100 if args.quick else 300)
    repeats = args.repeats or (5 if args.quick else 9)
    print(
        f"client middleware, {args.accounts:,} accounts against 1: {repeats} "
        f"repeats of {n} spends per account (median; target ≤ {TARGET}x)"
    )
    print(
        f"  {'kind':<11} {'account':<16} {'client CPU/request':>21}   "
        f"{'middleware CPU/request':>21}"
    )
    met = True
    emu = Emulator()
    with EmulatorThread(emu):
        for kind, (add, spend) in KINDS.items():
            candidates = asyncio.run(
                measure(add, spend, emu, args.accounts, n, repeats)
            )
            met = report(kind, candidates) and met
    print("targets met" if met else "a target was missed")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
