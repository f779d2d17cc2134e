"""
Measure what a guarded call costs on Redis: commands sent per call and
latency, next to one raw ``GET``.

Run from the repository root, in the dev environment, with a private
``redis-server`` it starts on a free port (or the Redis at ``REDIS_URL`` if
that is set or there is no ``redis-server``)::

    python benchmarks/bench_redis.py            # 2,000 calls per figure
    python benchmarks/bench_redis.py --calls 200 --check   # exit 1 on a miss
    python benchmarks/bench_redis.py --quick    # 300 calls, for CI
    python benchmarks/bench_redis.py --topology single   # skip the cluster

It measures one Redis and a 3-master Redis Cluster (with replicas) that it
starts on free loopback ports (``tests/_redis_server.py``), in the same run.
On the cluster the guard is given a ``redis.asyncio.RedisCluster``; its
baseline ``GET`` is sent on the guard's own connection to the node that owns
the account's slot, and redis-py's own cluster ``GET`` is printed beside it.

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
  call's scripts. Target: at most 2x with ``settle="debit"``. For
  reference it also prints the ``GET`` of a redis-py client with default
  settings (a 5 s socket timeout, which costs redis-py a task per command).
- throughput under 100 concurrent callers (``settle="debit"``): guarded
  calls per second over ``GET`` replies per second, 100 tasks each looping, on the
  same client. Target: at least 0.8x.

A warm guarded call waits for one script (check-and-hold); its release is
sent without waiting, in the same write as the next call's check. The
guard's scripts share one connection per node (what concurrent callers
send in one turn of the event loop goes out in one write); the ``GET`` s
each take a pooled connection, as redis-py sends them.

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
from pathlib import Path
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
LATENCY_TARGETS = {"debit": 2.0}
THROUGHPUT_TARGET = 0.8
CONCURRENCY = 100

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


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


async def _commands(clients: list[aioredis.Redis]) -> tuple[int, int]:
    """
    Return the commands clients sent so far (less INFO and CLUSTER) and
    those the scripts ran, over every server.
    """
    sent = inner = 0
    for client in clients:
        stats: dict[str, Any] = await client.info("commandstats")
        for name, value in stats.items():
            if name in _IN_SCRIPTS:
                inner += int(value["calls"])
            elif not name.startswith("cmdstat_cluster"):
                sent += int(value["calls"])
    return sent, inner


async def _throughput(fn: Any, seconds: float) -> float:
    """Calls per second of *fn* from CONCURRENCY tasks looping for *seconds*."""
    done = 0
    end = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await fn()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


async def _time_loop(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


async def run(
    where: str | list[tuple[str, int]], calls: int, repeats: int, seconds: float
) -> list[dict[str, Any]]:
    """
    Measure on one Redis (*where* a URL) or a cluster (its nodes).
    """
    rows = []
    cluster = not isinstance(where, str)
    if isinstance(where, str):
        probes = [aioredis.Redis.from_url(where)]
    else:
        # The masters: replicas count what is replicated to them too.
        probes = []
        for host, port in where:
            probe = aioredis.Redis(host=host, port=port)
            if (await probe.info("replication"))["role"] == "master":
                probes.append(probe)
            else:
                await probe.aclose()
    for settle in ("debit", "invalidate"):
        namespace = f"guard-bench-{uuid.uuid4().hex[:8]}"
        provider = InMemoryProvider(10**12)
        options: dict[str, Any]
        if isinstance(where, str):
            user: Any = aioredis.Redis.from_url(where)
            kwargs = user.connection_pool.connection_kwargs
            options = {
                "cache": RedisCache(endpoint=kwargs["host"], port=kwargs["port"])
            }
        else:
            user = aioredis.RedisCluster(host=where[0][0], port=where[0][1])
            options = {"redis": user}
        async with BalanceGuard(namespace=namespace, settle=settle, **options) as guard:
            call = functools.partial(_reserve, guard, provider)
            for _ in range(50):  # warm: scripts loaded, pool filled
                await call()
            sent0, inner0 = await _commands(probes)
            for _ in range(calls):
                await call()
            sent1, inner1 = await _commands(probes)
            per_call = (sent1 - sent0) / calls
            inner = (inner1 - inner0) / calls

            store: Any = guard.store
            account = guard._track(provider).account
            keys = store._keys(account)
            get_key = f"{keys[0]}:get"  # in the account's slot
            await user.set(get_key, "x")
            if cluster:
                wire = store._wire
                pool: Any = wire._table[wire.slot(account, keys[0])].pool
            else:
                pool = store.client.connection_pool
            # The GET: redis-py's client on a pool like the guard's (same
            # connection class, settings, size and reply parser), to the node
            # that owns the account; a pool of its own, as the guard keeps
            # its connections out of its pool between calls.
            own = aioredis.Redis(
                connection_pool=aioredis.BlockingConnectionPool(
                    max_connections=pool.max_connections,
                    timeout=5,
                    connection_class=pool.connection_class,
                    **pool.connection_kwargs,
                )
            )
            get = functools.partial(own.get, get_key)
            default_get = functools.partial(user.get, get_key)

            guarded, raw, default = [], [], []
            n = calls // repeats or 1
            for _ in range(repeats):
                guarded.append(await _time_loop(call, n))
                raw.append(await _time_loop(get, n))
                default.append(await _time_loop(default_get, n))
            flows: dict[str, float] = {}
            if settle == "debit":
                guarded_flow, get_flow = [], []
                for _ in range(3):
                    guarded_flow.append(await _throughput(call, seconds))
                    get_flow.append(await _throughput(get, seconds))
                flows = {
                    "calls_per_s": statistics.median(guarded_flow),
                    "gets_per_s": statistics.median(get_flow),
                }
            await own.aclose()
            await user.delete(get_key)
            for key in keys:
                await user.delete(key)
        await user.aclose()
        g, r = statistics.median(guarded), statistics.median(raw)
        rows.append(
            {
                "where": "cluster" if cluster else "single",
                "settle": settle,
                "commands": per_call,
                "inner": inner,
                "call_us": g * 1e6,
                "get_us": r * 1e6,
                "ratio": g / r,
                "default_get_us": statistics.median(default) * 1e6,
                **flows,
            }
        )
    for probe in probes:
        await probe.aclose()
    return rows


async def _reserve(guard: BalanceGuard, provider: InMemoryProvider) -> None:
    async with guard.reserve(provider, 1):
        pass


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
    parser.add_argument(
        "--topology",
        choices=("both", "single", "cluster"),
        default="both",
        help="one Redis, a Redis Cluster, or both (the default)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 on a miss")
    parser.add_argument(
        "--quick", action="store_true", help="300 calls per figure (for CI)"
    )
    args = parser.parse_args()
    if args.calls is None:
        args.calls = 300 if args.quick else 2000
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be positive")
    seconds = 0.5 if args.quick else 2.0
    rows = []
    if args.topology in ("both", "single"):
        with _server() as url:
            rows += asyncio.run(run(url, args.calls, args.repeats, seconds))
    if args.topology in ("both", "cluster"):
        from _redis_server import ClusterServers

        servers = ClusterServers()
        try:
            servers.start()
            rows += asyncio.run(run(servers.nodes, args.calls, args.repeats, seconds))
        finally:
            servers.stop()
    parser_name = "hiredis" if HIREDIS_AVAILABLE else "Python"
    print(f"redis-py {redis.__version__}, reply parser: {parser_name}")
    print(
        f"{'redis':<8} {'settle':<11} {'cmds/call':>9} {'target':>6} {'in Lua':>6}  "
        f"{'call µs':>8} {'GET µs':>7} {'ratio':>6} {'target':>6}  "
        f"{'client GET µs':>13}  {'x100 calls/s ÷ GETs/s':>21} {'target':>6}"
    )
    missed = False
    for row in rows:
        target = TARGETS[row["settle"]]
        latency = LATENCY_TARGETS.get(row["settle"])
        missed |= row["commands"] > target
        missed |= latency is not None and row["ratio"] > latency
        shown = "-" if latency is None else f"{latency:.0f}x"
        flow = flow_target = "-"
        if "calls_per_s" in row:
            ratio = row["calls_per_s"] / row["gets_per_s"]
            missed |= ratio < THROUGHPUT_TARGET
            flow = (
                f"{row['calls_per_s']:,.0f} ÷ {row['gets_per_s']:,.0f} = {ratio:.2f}x"
            )
            flow_target = f"{THROUGHPUT_TARGET}x"
        print(
            f"{row['where']:<8} {row['settle']:<11} {row['commands']:>9.2f} "
            f"{target:>6.0f} {row['inner']:>6.1f}  "
            f"{row['call_us']:>8.1f} {row['get_us']:>7.1f} {row['ratio']:>5.2f}x "
            f"{shown:>6}  {row['default_get_us']:>13.1f}  {flow:>21} {flow_target:>6}"
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
