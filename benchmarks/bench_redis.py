"""
Measure what a guarded call costs on Redis: commands sent per call and
latency, next to one raw ``GET``.

Run from the repository root, in the dev environment, with a private
``redis-server`` it starts on a free port (or the Redis at ``REDIS_URL`` if
that is set or there is no ``redis-server``)::

    python benchmarks/bench_redis.py            # 2,000 calls per figure
    python benchmarks/bench_redis.py --calls 200 --check   # exit 1 on a miss
    python benchmarks/bench_redis.py --quick    # 300 calls, for CI

For ``settle="debit"`` and ``settle="invalidate"`` it prints:

- commands per guarded call: the change in ``INFO commandstats`` (every
  command but ``INFO`` itself; ``EVALSHA`` counts as one) over N warm calls,
  divided by N. The balance fetch is not a Redis command: the provider is an
  in-memory one. Targets: at most 3 (debit) and 4 (invalidate).
- latency: the median time of one guarded call (a static amount, a trivial
  ``async def``) over the median time of one ``GET`` of a present key,
  measured in the same run, interleaved. The ``GET`` is sent by the guard's
  own redis-py client, so on the same bounded, blocking pool, connection
  settings and reply parser (hiredis when it is installed) as the guarded
  call's scripts. Target: at most 3x with ``settle="debit"``. For
  reference it also prints the ``GET`` of a redis-py client with default
  settings (a 5 s socket timeout, which costs redis-py a task per command).

``INFO commandstats`` counts every client's commands: run it against a Redis
nothing else is using.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from aiocache import RedisCache
from redis.utils import HIREDIS_AVAILABLE

from guard import BalanceGuard
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Iterator

TARGETS = {"debit": 3.0, "invalidate": 4.0}
# Only with settle="debit": "invalidate" refetches the balance on every call.
LATENCY_TARGETS = {"debit": 3.0}


# What the scripts call inside Redis: commandstats counts these too, but
# they are not round trips. Everything else a client sends counts.
_IN_SCRIPTS = frozenset(
    f"cmdstat_{name}"
    for name in (
        *("time", "get", "set", "del", "incr", "incrby", "decrby", "pexpire"),
        *("hmget", "hget", "hset", "hincrby", "info"),
        *("zrangebyscore", "zremrangebyscore", "zadd", "zrem", "zscore"),
        *("sadd", "sismember"),
    )
)


async def _commands(client: aioredis.Redis) -> tuple[int, int]:
    """
    Return the commands clients sent so far (less INFO) and those the
    scripts ran.
    """
    stats: dict[str, Any] = await client.info("commandstats")
    sent = inner = 0
    for name, value in stats.items():
        if name in _IN_SCRIPTS:
            inner += int(value["calls"])
        else:
            sent += int(value["calls"])
    return sent, inner


async def _time_loop(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


async def run(url: str, calls: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    probe = aioredis.Redis.from_url(url)
    await probe.set("guard-bench:get", "x")
    host = probe.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    port = probe.connection_pool.connection_kwargs.get("port", 6379)
    try:
        for settle in ("debit", "invalidate"):
            namespace = f"guard-bench-{uuid.uuid4().hex[:8]}"
            provider = InMemoryProvider(10**12)
            cache = RedisCache(endpoint=host, port=port)
            async with BalanceGuard(
                cache=cache, namespace=namespace, settle=settle
            ) as guard:

                async def call(
                    guard: BalanceGuard = guard, provider: InMemoryProvider = provider
                ) -> None:
                    async with guard.reserve(provider, 1):
                        pass

                for _ in range(50):  # warm: scripts loaded, pool filled
                    await call()
                sent0, inner0 = await _commands(probe)
                for _ in range(calls):
                    await call()
                sent1, inner1 = await _commands(probe)
                per_call = (sent1 - sent0) / calls
                inner = (inner1 - inner0) / calls

                store: Any = guard.store
                get = functools.partial(store.client.get, "guard-bench:get")
                default_get = functools.partial(probe.get, "guard-bench:get")

                guarded, raw, default = [], [], []
                n = calls // repeats or 1
                for _ in range(repeats):
                    guarded.append(await _time_loop(call, n))
                    raw.append(await _time_loop(get, n))
                    default.append(await _time_loop(default_get, n))
                await store.client.delete(*store._keys(guard._track(provider).account))
            g, r = statistics.median(guarded), statistics.median(raw)
            rows.append(
                {
                    "settle": settle,
                    "commands": per_call,
                    "inner": inner,
                    "call_us": g * 1e6,
                    "get_us": r * 1e6,
                    "ratio": g / r,
                    "default_get_us": statistics.median(default) * 1e6,
                }
            )
    finally:
        await probe.delete("guard-bench:get")
        await probe.aclose()
    return rows


@contextlib.contextmanager
def _server() -> Iterator[str]:
    """
    Start a private redis-server if there is one to start, so that no other
    client's commands are counted; else use ``REDIS_URL``.
    """
    binary = shutil.which("redis-server")
    if binary is None or "REDIS_URL" in os.environ:
        yield os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        for _ in range(500):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, help="calls per figure (2,000)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--check", action="store_true", help="exit 1 on a miss")
    parser.add_argument(
        "--quick", action="store_true", help="300 calls per figure (for CI)"
    )
    args = parser.parse_args()
    if args.calls is None:
        args.calls = 300 if args.quick else 2000
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be positive")
    with _server() as url:
        rows = asyncio.run(run(url, args.calls, args.repeats))
    parser_name = "hiredis" if HIREDIS_AVAILABLE else "Python"
    print(f"redis-py {redis.__version__}, reply parser: {parser_name}")
    print(
        f"{'settle':<11} {'cmds/call':>9} {'target':>6} {'in Lua':>6}  "
        f"{'call µs':>8} {'GET µs':>7} {'ratio':>6} {'target':>6}  "
        f"{'default GET µs':>14}"
    )
    missed = False
    for row in rows:
        target = TARGETS[row["settle"]]
        latency = LATENCY_TARGETS.get(row["settle"])
        missed |= row["commands"] > target
        missed |= latency is not None and row["ratio"] > latency
        shown = "-" if latency is None else f"{latency:.0f}x"
        print(
            f"{row['settle']:<11} {row['commands']:>9.2f} {target:>6.0f} "
            f"{row['inner']:>6.1f}  "
            f"{row['call_us']:>8.1f} {row['get_us']:>7.1f} {row['ratio']:>5.2f}x "
            f"{shown:>6}  {row['default_get_us']:>14.1f}"
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
