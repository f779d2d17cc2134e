"""
Measure what recording a history costs a guarded call, and how long an
import of 10,000 OneClickDZ transactions takes.

Run from the repository root, in the dev environment::

    python benchmarks/bench_history.py            # full run
    python benchmarks/bench_history.py --quick    # fewer iterations, for CI

One run prints:

(a) a warm guarded call (``settle="debit"``, memory store, an in-memory
    provider) with ``history=SQLiteHistory(...)`` as a ratio to the same
    call without a history, the repeats interleaved so that noise from other
    processes hits both alike. The recorder only queues a record in the
    call; the writes happen in one task and one thread. Target: at most 1.5x.
(b) seconds (wall and CPU) to import 10,000 emulated transactions, 100 pages,
    into a new SQLite history, and how many a second import adds (0).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from guard import BalanceGuard
from guard.history import SQLiteHistory, import_oneclickdz
from guard.testing import Emulator, InMemoryProvider


async def _loop(guard: BalanceGuard, provider: InMemoryProvider, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        async with guard.reserve(provider, 1):
            pass
    return (time.perf_counter() - started) / n


async def hot_path(n: int, repeats: int, folder: Path) -> float:
    provider = InMemoryProvider(10**15, name="memory", currency="DZD")
    async with (
        SQLiteHistory(folder / "bench.db", queue_size=10**7) as history,
        BalanceGuard(settle="debit") as plain,
        BalanceGuard(settle="debit", history=history) as recorded,
    ):
        await _loop(plain, provider, 100)
        await _loop(recorded, provider, 100)
        ratios = []
        for _ in range(repeats):
            base = await _loop(plain, provider, n)
            with_history = await _loop(recorded, provider, n)
            ratios.append(with_history / base)
            await history.flush()  # the writes, outside the timed loops
    return statistics.median(ratios)


async def import_time(folder: Path) -> tuple[float, float, int, int]:
    async with Emulator() as emu:
        account = emu.add_oneclickdz("bench-key-0123456789", 0)
        for i in range(10_000):
            emu.set_balance(account, account.balance + (7 if i % 2 == 0 else -3))
        async with SQLiteHistory(folder / "import.db") as history:
            provider = emu.oneclickdz("bench-key-0123456789")
            started, cpu = time.perf_counter(), time.process_time()
            first = await import_oneclickdz(history, provider)
            wall = time.perf_counter() - started
            used = time.process_time() - cpu
            again = await import_oneclickdz(history, provider)
    return wall, used, first.added, again.added


async def main(quick: bool) -> int:
    n, repeats = (2_000, 5) if quick else (20_000, 9)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ratio = await hot_path(n, repeats, folder)
        print(f"(a) warm guarded call with a history / without: {ratio:.2f}x")
        wall, cpu, added, again = await import_time(folder)
        print(
            f"(b) import of {added:,} transactions (100 pages): {wall:.2f} s "
            f"({cpu:.2f} s CPU); a second import added {again}"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
