"""
Measure what a guarded call costs and what it prevents, next to the naive
check-then-spend that people write with ``aiocache.cached``.

Run from the repository root, in the dev environment::

    python benchmarks/bench_guard.py            # full run, about half a minute
    python benchmarks/bench_guard.py --quick    # fewer iterations, for CI
    python benchmarks/bench_guard.py --check    # exit 1 if a target is missed

One run prints:

(a) the warm-path cost of one guarded call (``BalanceGuard(settle="debit")``,
    default memory cache, a static amount, a trivial ``async def``, a balance
    that never runs out), as a ratio to one
    ``SimpleMemoryCache(timeout=None).get`` on a present key and to a bare
    ``await`` of a trivial coroutine, for the decorator, for ``async with``
    on a ``require_balance(...)`` made once and written inline, for
    ``async with guard.reserve(...)``, and for the decorator on a guard
    whose account a ``BalanceMonitor`` watches (also as a ratio to the same
    call unwatched). Each figure is the median of several
    repeats of a tight loop; the repeats are interleaved so that noise from
    other processes hits every candidate alike. Target: at most 1.0x one get,
    for every form.
    The same decorated call on a guard whose metrics are exported
    (``guard.prometheus.GuardCollector`` and ``guard.otel.instrument`` with
    the OpenTelemetry SDK's in-memory reader, both scraped between repeats),
    as a ratio to the call without. Target: at most 1.05x.
(b) balance requests reaching the provider for 1,000 concurrent cold guarded
    calls on a fresh guard. Target: exactly 1.
(c) the same figures for the naive version (an ``@cached(ttl=30)`` balance
    reader and ``if await get_balance() >= amount:`` before spending), and the
    overspends each lets through: 50 concurrent 100 DZD spends against
    1,000 DZD, each spend taking a moment before it really debits the
    provider. Target for the guard: 0.

The provider is the loopback emulator from ``guard.testing`` when it is
importable (requests counted by the emulator; spends are real
``POST /v3/mobile/send`` calls, an ``INSUFFICIENT_BALANCE`` answer counting as
an overspend), otherwise ``guard.testing._memory.InMemoryProvider`` (spends
that take the balance below zero count as overspends). ``--backend`` picks one.

Times are wall-clock on whatever machine runs this, so compare ratios, not
microseconds; on a busy machine run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import platform
import statistics
import sys
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiocache
import aiohttp
from aiocache import SimpleMemoryCache, cached

import guard
from guard import (
    BalanceGuard,
    BalanceMonitor,
    InsufficientBalance,
    Threshold,
    require_balance,
)
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from guard.typing import Provider

    Loop = Callable[[int], Awaitable[None]]

TARGET_RATIO = 1.0
METRICS_TARGET = 1.05
COLD_CALLS = 1_000
SPENDERS = 50
SPEND = Decimal(100)
START = Decimal(1000)
# A provider answer and a spend take a moment, as they do over the network.
FETCH_DELAY = 0.005
SPEND_DELAY = 0.01
PLENTY = Decimal(10) ** 12


async def _noop() -> None:
    return None


# -- providers ----------------------------------------------------------------


class MemoryBackend:
    """
    Accounts are `InMemoryProvider` objects; a spend debits one in place.
    """

    name = "memory (guard.testing._memory.InMemoryProvider)"

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MemoryBackend:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.session is not None
        await self.session.close()

    def account(self, balance: Decimal, *, delay: float = FETCH_DELAY) -> Provider:
        return InMemoryProvider(balance, delay=delay)

    def balance_requests(self, provider: Provider) -> int:
        assert isinstance(provider, InMemoryProvider)
        return provider.fetches

    async def spend(self, provider: Provider, amount: Decimal) -> bool:
        """
        Debit *amount*; False if the balance did not cover it.
        """
        assert isinstance(provider, InMemoryProvider)
        return provider.spend(amount) >= 0


class EmulatorBackend:
    """
    Accounts live in the loopback emulator; a spend is a real top-up request.
    """

    name = "emulator (guard.testing, loopback HTTP)"

    def __init__(self) -> None:
        from guard.testing import Emulator

        self._emulator = Emulator()
        self._keys = (f"bench-key-{i}" for i in itertools.count())
        self._refs = (f"bench-{i}" for i in itertools.count())
        self._account_keys: dict[int, str] = {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EmulatorBackend:
        self.emu = await self._emulator.__aenter__()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.session is not None
        await self.session.close()
        await self._emulator.__aexit__(None, None, None)

    def account(self, balance: Decimal, *, delay: float = FETCH_DELAY) -> Provider:
        key = next(self._keys)
        self.emu.add_oneclickdz(key, balance)
        provider: Provider = self.emu.oneclickdz(key)
        self._account_keys[id(provider)] = key
        return provider

    def balance_requests(self, provider: Provider) -> int:
        # The emulator counts per route; each scenario uses a fresh account
        # and reads the count before and after.
        return int(self.emu.count("oneclickdz.balance"))

    async def spend(self, provider: Provider, amount: Decimal) -> bool:
        """
        Send a top-up; False if the emulator answered INSUFFICIENT_BALANCE.
        """
        assert self.session is not None
        key = self._account_keys[id(provider)]
        async with self.session.post(
            f"{self.emu.url}/v3/mobile/send",
            headers={"X-Access-Token": key},
            json={
                "plan_code": "PREPAID_MOBILIS",
                "MSSIDN": "0661234567",
                "amount": int(amount),
                "ref": next(self._refs),
            },
        ) as response:
            body = await response.json()
        if response.status == 200:
            return True
        code = body.get("error", {}).get("code")
        if code in ("INSUFFICIENT_BALANCE", "NO_BALANCE"):
            return False
        raise RuntimeError(f"top-up failed: {response.status} {body}")


Backend = MemoryBackend | EmulatorBackend


def _emulator_ready() -> bool:
    try:
        from guard.testing import Emulator  # noqa: F401
    except ImportError:
        return False
    return True


# -- the naive version ----------------------------------------------------------


class Refused(Exception):
    """
    The naive check found the cached balance too low.
    """


def naive_reader(
    backend: Backend, provider: Provider
) -> Callable[[], Awaitable[Decimal]]:
    """
    Return a fresh ``@cached`` balance reader for *provider*, the way it is
    written without guard.
    """
    session = backend.session
    assert session is not None

    @cached(ttl=30)  # type: ignore[untyped-decorator]  # aiocache is untyped
    async def get_balance() -> Decimal:
        return await provider.fetch_balance(session)

    reader: Callable[[], Awaitable[Decimal]] = get_balance
    return reader


# -- (a) warm path ----------------------------------------------------------------


async def _time(loop: Loop, calls: int) -> float:
    """
    Return the nanoseconds per iteration of one run of *loop*.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        await loop(calls)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / calls


async def warm_path(
    backend: Backend, calls: int, repeats: int
) -> tuple[dict[str, list[float]], int]:
    """
    Time the per-call loops; return the ns per call of each repeat, and the
    balance requests made meanwhile (the guard's and the naive reader's: one
    each, plus one each per 30 s ttl of run time).
    """
    cache = SimpleMemoryCache(timeout=None)
    await cache.set("balance", PLENTY)

    guard_ = BalanceGuard(settle="debit")
    provider = backend.account(PLENTY, delay=0)
    required = require_balance(provider, 1, guard=guard_)
    guarded = required(_noop)
    # The same call on a guard whose metrics are exported (Prometheus and,
    # through the SDK, OpenTelemetry) and scraped between repeats.
    metered_guard = BalanceGuard(settle="debit")
    scrape = _export(metered_guard)
    metered = require_balance(provider, 1, guard=metered_guard)(_noop)
    # The same call on a guard whose account a BalanceMonitor watches: its
    # hook sees every settled call.
    watched_guard = BalanceGuard(settle="debit")
    monitor = BalanceMonitor(guard=watched_guard)
    monitor.watch(provider, [Threshold(1), Threshold(2, level="critical")])
    await monitor.start_async()
    watched = require_balance(provider, 1, guard=watched_guard)(_noop)

    get_balance = naive_reader(backend, provider)
    amount = Decimal(1)

    async def bare(n: int) -> None:
        for _ in range(n):
            await _noop()

    async def cache_get(n: int) -> None:
        for _ in range(n):
            await cache.get("balance")

    async def decorator(n: int) -> None:
        for _ in range(n):
            await guarded()

    async def decorator_metered(n: int) -> None:
        for _ in range(n):
            await metered()

    async def decorator_monitored(n: int) -> None:
        for _ in range(n):
            await watched()

    async def context_manager(n: int) -> None:
        for _ in range(n):
            async with required:
                await _noop()

    async def context_manager_inline(n: int) -> None:
        for _ in range(n):
            async with require_balance(provider, 1, guard=guard_):
                await _noop()

    async def reserve(n: int) -> None:
        for _ in range(n):
            async with guard_.reserve(provider, 1):
                await _noop()

    async def naive(n: int) -> None:
        for _ in range(n):
            if await get_balance() >= amount:
                await _noop()

    loops: dict[str, Loop] = {
        "await": bare,
        "get": cache_get,
        "decorator": decorator,
        "decorator, metrics": decorator_metered,
        "monitored": decorator_monitored,
        "async with": context_manager,
        "async with, inline": context_manager_inline,
        "reserve": reserve,
        "naive": naive,
    }
    before = backend.balance_requests(provider)
    samples: dict[str, list[float]] = {name: [] for name in loops}
    try:
        # Warm up: the first call of each fetches, fills caches, creates
        # the guard's session.
        for loop in loops.values():
            await loop(min(calls, 1000))
        for repeat in range(repeats):
            # Rotate the order so no candidate always runs right after another.
            names = list(loops)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in names:
                samples[name].append(await _time(loops[name], calls))
            scrape()
        fetches = backend.balance_requests(provider) - before
    finally:
        await monitor.aclose()
        await watched_guard.aclose()
        await guard_.aclose()
        await metered_guard.aclose()
        await cache.close()
        await get_balance.cache.close()  # type: ignore[attr-defined]
    return samples, fetches


def _export(guard_: BalanceGuard) -> Callable[[], object]:
    """
    Export *guard_*'s metrics to Prometheus and OpenTelemetry (SDK readers);
    return a function that scrapes both once.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry, generate_latest

    from guard.otel import instrument
    from guard.prometheus import GuardCollector

    registry = CollectorRegistry()
    registry.register(GuardCollector(guard_))
    reader = InMemoryMetricReader()
    instrument(
        guard_,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=TracerProvider(),
    )

    def scrape() -> object:
        return generate_latest(registry), reader.get_metrics_data()

    return scrape


def _paired(samples: dict[str, list[float]], base: str) -> dict[str, float]:
    """
    Return each loop's cost relative to *base*: the median of the ratios
    within each repeat, so that a slow patch of the machine cancels out.
    """
    return {
        name: statistics.median(a / b for a, b in zip(s, samples[base], strict=True))
        for name, s in samples.items()
    }


# -- (b) cold calls -----------------------------------------------------------------


async def cold_guarded(backend: Backend) -> int:
    """
    Return the balance requests made by 1,000 concurrent guarded calls on a
    fresh guard.
    """
    provider = backend.account(PLENTY)
    before = backend.balance_requests(provider)
    async with BalanceGuard(settle="debit") as guard_:
        guarded = require_balance(provider, 1, guard=guard_)(_noop)
        await asyncio.gather(*(guarded() for _ in range(COLD_CALLS)))
    return backend.balance_requests(provider) - before


async def cold_naive(backend: Backend) -> int:
    """
    Return the balance requests made by 1,000 concurrent naive calls.
    """
    provider = backend.account(PLENTY)
    get_balance = naive_reader(backend, provider)
    amount = Decimal(1)

    async def spend() -> None:
        if await get_balance() >= amount:
            await _noop()

    before = backend.balance_requests(provider)
    try:
        await asyncio.gather(*(spend() for _ in range(COLD_CALLS)))
    finally:
        await get_balance.cache.close()  # type: ignore[attr-defined]
    return backend.balance_requests(provider) - before


# -- (c) overspending ---------------------------------------------------------------


async def overspend_guarded(backend: Backend) -> tuple[int, int, int]:
    """
    Run 50 concurrent guarded 100 DZD spends against 1,000 DZD; return
    (spends made, spends refused by the guard, spends the balance did not
    cover).
    """
    provider = backend.account(START)
    uncovered = 0

    async with BalanceGuard(settle="debit") as guard_:

        @require_balance(provider, SPEND, guard=guard_)
        async def spend() -> None:
            nonlocal uncovered
            await asyncio.sleep(SPEND_DELAY)
            if not await backend.spend(provider, SPEND):
                uncovered += 1

        results = await asyncio.gather(
            *(spend() for _ in range(SPENDERS)), return_exceptions=True
        )
    refused = sum(isinstance(r, InsufficientBalance) for r in results)
    _reraise(results, InsufficientBalance)
    return SPENDERS - refused, refused, uncovered


async def overspend_naive(backend: Backend) -> tuple[int, int, int]:
    """
    The same spends, checked the naive way.
    """
    provider = backend.account(START)
    get_balance = naive_reader(backend, provider)
    uncovered = 0

    async def spend() -> None:
        nonlocal uncovered
        if await get_balance() >= SPEND:
            await asyncio.sleep(SPEND_DELAY)
            if not await backend.spend(provider, SPEND):
                uncovered += 1
        else:
            raise Refused

    try:
        results = await asyncio.gather(
            *(spend() for _ in range(SPENDERS)), return_exceptions=True
        )
    finally:
        await get_balance.cache.close()  # type: ignore[attr-defined]
    refused = sum(isinstance(r, Refused) for r in results)
    _reraise(results, Refused)
    return SPENDERS - refused, refused, uncovered


def _reraise(results: list[Any], expected: type[BaseException]) -> None:
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, expected):
            raise result


# -- report ---------------------------------------------------------------------


LOOP_LABELS = {
    "await": "await trivial()",
    "get": "await SimpleMemoryCache(timeout=None).get(key)",
    "decorator": "await guarded()  # @require_balance(p, 1)",
    "decorator, metrics": "the same, metrics exported (Prometheus, OTel SDK)",
    "monitored": "the same, a BalanceMonitor watching p",
    "async with": "async with rb: await trivial()  # rb made once",
    "async with, inline": "async with require_balance(p, 1): await trivial()",
    "reserve": "async with guard.reserve(p, 1): await trivial()",
    "naive": "if await get_balance() >= 1: await trivial()",
}


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


async def run(args: argparse.Namespace) -> bool:
    """
    Run every measurement, print the report, and return whether every target
    was met.
    """
    backend_name = args.backend
    if backend_name == "auto":
        backend_name = "emulator" if _emulator_ready() else "memory"
    backend: Backend = (
        EmulatorBackend() if backend_name == "emulator" else MemoryBackend()
    )
    async with backend:
        samples, warm_fetches = await warm_path(backend, args.calls, args.repeats)
        cold_guard = await cold_guarded(backend)
        cold_plain = await cold_naive(backend)
        spent_guard = await overspend_guarded(backend)
        spent_plain = await overspend_naive(backend)

    per_get, per_await = _paired(samples, "get"), _paired(samples, "await")
    print(
        f"guard {guard.__version__}, Python {platform.python_version()}, "
        f"aiocache {aiocache.__version__}, aiohttp {aiohttp.__version__}, "
        f"{platform.machine()}"
    )
    print(f"provider: {backend.name}")
    print(
        f"(a) median of {args.repeats} interleaved repeats of {args.calls:,} "
        f"calls; balance requests while warm: {warm_fetches} (guard + naive)"
    )
    print()
    print(f"  {'loop body':<50} {'ns/call':>8} {'/ get':>7} {'/ await':>8}")
    for name, label in LOOP_LABELS.items():
        ns = statistics.median(samples[name])
        print(
            f"  {label:<50} {ns:>8,.0f} {per_get[name]:>6.2f}x {per_await[name]:>7.1f}x"
        )
    print()

    deco = per_get["decorator"]
    metered_ratio = _paired(samples, "decorator")["decorator, metrics"]
    rows: list[tuple[str, str, str, str, bool | None]] = [
        (
            "(a) warm call / aiocache get, decorator",
            _ratio(deco),
            _ratio(per_get["naive"]),
            f"<= {TARGET_RATIO:.1f}x",
            deco <= TARGET_RATIO,
        ),
        (
            "(a) warm call / aiocache get, monitor watching",
            _ratio(per_get["monitored"]),
            "",
            f"<= {TARGET_RATIO:.1f}x",
            per_get["monitored"] <= TARGET_RATIO,
        ),
        (
            "(a) warm call with / without a monitor",
            _ratio(_paired(samples, "decorator")["monitored"]),
            "",
            "",
            None,
        ),
        *(
            (
                f"(a) warm call / aiocache get, {label}",
                _ratio(per_get[name]),
                "",
                f"<= {TARGET_RATIO:.1f}x",
                per_get[name] <= TARGET_RATIO,
            )
            for name, label in (
                ("async with", "async with"),
                ("async with, inline", "inline async with"),
                ("reserve", "reserve()"),
            )
        ),
        (
            "(a) warm call with metrics / without",
            _ratio(metered_ratio),
            "",
            f"<= {METRICS_TARGET:.2f}x",
            metered_ratio <= METRICS_TARGET,
        ),
        (
            "(a) warm call / bare await, decorator",
            _ratio(per_await["decorator"]),
            _ratio(per_await["naive"]),
            "",
            None,
        ),
        (
            f"(b) balance requests, {COLD_CALLS:,} cold calls",
            str(cold_guard),
            str(cold_plain),
            "== 1",
            cold_guard == 1,
        ),
        (
            f"(c) {SPENDERS} x {SPEND} DZD on {START}: run/refused",
            f"{spent_guard[0]}/{spent_guard[1]}",
            f"{spent_plain[0]}/{spent_plain[1]}",
            "",
            None,
        ),
        (
            "(c) overspends (spends the balance missed)",
            str(spent_guard[2]),
            str(spent_plain[2]),
            "== 0",
            spent_guard[2] == 0,
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"  {'metric':<{width}} {'guard':>7} {'naive':>7} {'target':>8}  result")
    for metric, ours, naive, target, ok in rows:
        verdict = "" if ok is None else ("pass" if ok else "FAIL")
        print(f"  {metric:<{width}} {ours:>7} {naive:>7} {target:>8}  {verdict}")
    return all(row[4] is not False for row in rows)


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line, run the benchmark, and return the exit code.
    """
    parser = argparse.ArgumentParser(
        description="Benchmark guard against aiocache and the naive check."
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations (for CI)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed"
    )
    parser.add_argument("--calls", type=int, help="calls per timed loop")
    parser.add_argument("--repeats", type=int, help="timed repeats per loop")
    parser.add_argument(
        "--backend", choices=("auto", "memory", "emulator"), default="auto"
    )
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = 10_000 if args.quick else 30_000
    if args.repeats is None:
        args.repeats = 5 if args.quick else 7
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be positive")
    ok = asyncio.run(run(args))
    if not ok and args.check:
        print("\nsome targets were missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
