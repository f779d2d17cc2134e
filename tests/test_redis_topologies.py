"""
Redis as users run it: ``BalanceGuard(redis=...)`` with a client, a URL, a
Redis Cluster or a Sentinel-managed primary, failovers under load from
several processes, replicas waited for, and a process never waiting on its
own fetch lock.

The cluster and the Sentinel set are real redis-servers the tests start on
loopback (``tests/_redis_server.py``); in CI none of these tests may skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio as aioredis
from _redis_server import (
    ClusterServers,
    SentinelServers,
    delete_namespace,
    machine_redis,
    topology_client,
)
from aiocache import RedisCache
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from guard import (
    BalanceGuard,
    BalanceUnavailable,
    ConfigurationError,
    InsufficientBalance,
)
from guard.providers import OneClickDZ
from guard.stores import RedisStore
from guard.stores.redis._scripts import keys_of
from guard.testing import Emulator, InMemoryProvider, Plan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("_redis_worker.py")
PLANS = (Plan("TEST", "Test plan", "mobilis", min_amount=Decimal(1)),)


@pytest.fixture(name="addr")
def _addr() -> tuple[str, int]:
    return machine_redis()


@pytest.fixture(name="namespace")
def _namespace(addr: tuple[str, int]) -> Iterator[str]:
    namespace = f"guard-topo-{uuid.uuid4().hex[:12]}"
    yield namespace
    delete_namespace(*addr, namespace)


async def spend(guard: BalanceGuard, provider: Any, amount: int) -> None:
    async with guard.reserve(provider, amount):
        pass


async def holds_are_shared(guard: BalanceGuard, provider: Any) -> None:
    """60 of 100 held: another 60 is refused, 40 fits."""
    async with guard.reserve(provider, 60):
        with pytest.raises(InsufficientBalance):
            await spend(guard, provider, 60)
        await spend(guard, provider, 40)


# -- configuration ------------------------------------------------------------


class TestConfiguration:
    async def test_client_is_used_and_left_open(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """A redis.asyncio.Redis works, and the guard doesn't close it."""
        client = aioredis.Redis(host=addr[0], port=addr[1])
        provider = InMemoryProvider(100)
        async with BalanceGuard(redis=client, namespace=namespace) as guard:
            assert isinstance(guard.store, RedisStore)
            await holds_are_shared(guard, provider)
        assert await client.ping()
        await client.aclose()

    async def test_url(self, addr: tuple[str, int], namespace: str) -> None:
        """A redis:// URL works; the guard closes what it made."""
        provider = InMemoryProvider(100)
        url = f"redis://{addr[0]}:{addr[1]}/0"
        async with BalanceGuard(redis=url, namespace=namespace) as guard:
            await holds_are_shared(guard, provider)

    def test_url_kinds_are_read(self) -> None:
        """rediss:// and unix:// URLs keep their TLS and socket settings."""
        tls = RedisStore("rediss://user:pw@example.invalid:6380/2")
        unix = RedisStore("unix:///run/redis.sock?db=3")
        assert "SSLConnection" == tls._wire.target.connection_class.__name__
        assert {"host": "example.invalid", "port": 6380, "db": 2} == {
            k: tls._wire.target.settings[k] for k in ("host", "port", "db")
        }
        assert "/run/redis.sock" == unix._wire.target.settings["path"]

    @pytest.mark.parametrize(
        ("value", "match"),
        [
            (42, "redis must be a redis.asyncio client.*not builtins.int"),
            (redis.Redis(), "redis must be a redis.asyncio client.*redis.client.Redis"),
            ("http://localhost", r"redis://, rediss:// or unix://, got 'http'"),
        ],
    )
    def test_wrong_kind_names_the_option(self, value: object, match: str) -> None:
        """Anything else is a ConfigurationError naming the option."""
        with pytest.raises(ConfigurationError, match=match):
            BalanceGuard(redis=value)

    def test_one_store_option(self) -> None:
        """redis and cache (or store) are exclusive."""
        with pytest.raises(ConfigurationError, match="one of cache, store and redis"):
            BalanceGuard(redis="redis://localhost", cache=RedisCache())

    async def test_redis_cache_on_a_sentinel_pool(
        self, sentinel_servers: SentinelServers, namespace: str
    ) -> None:
        """A RedisCache built on a SentinelConnectionPool works (no KeyError)."""
        sentinel = Sentinel(sentinel_servers.sentinels)
        cache = RedisCache(
            connection_pool_class=SentinelConnectionPool,
            connection_pool_kwargs={
                "service_name": sentinel_servers.SERVICE,
                "sentinel_manager": sentinel,
            },
        )
        provider = InMemoryProvider(100)
        try:
            async with BalanceGuard(cache=cache, namespace=namespace) as guard:
                await holds_are_shared(guard, provider)
        finally:
            for client in sentinel.sentinels:
                await client.aclose()

    async def test_transport_failure_is_one_line(self) -> None:
        """Nothing listening: a BalanceUnavailable with a one-line reason."""
        client = aioredis.Redis(host="127.0.0.1", port=1)
        provider = InMemoryProvider(100)
        async with BalanceGuard(redis=client) as guard:
            with pytest.raises(BalanceUnavailable) as caught:
                await spend(guard, provider, 1)
        assert "cache unavailable: ConnectionError" in caught.value.reason
        assert "\n" not in str(caught.value)
        await client.aclose()


# -- the topologies -------------------------------------------------------------


@pytest.fixture(name="where", params=["cluster", "sentinel"])
async def _where(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with topology_client(request, request.param) as client:
        yield client


class TestTopologies:
    async def test_every_account_works(self, where: Any) -> None:
        """50 accounts, wherever their slots are: every call is checked."""
        namespace = f"t{uuid.uuid4().hex[:8]}"
        providers = [
            InMemoryProvider(100, name="memory", account_id=f"a{i}") for i in range(50)
        ]
        async with BalanceGuard(redis=where, namespace=namespace) as guard:
            for provider in providers:
                await holds_are_shared(guard, provider)
            assert all(guard.held(p) == 0 for p in providers)

    async def test_client_is_left_open(self, where: Any) -> None:
        """The guard closes its own pools, not the user's client."""
        async with BalanceGuard(redis=where, namespace="open") as guard:
            await spend(guard, InMemoryProvider(10), 1)
        assert await where.ping()


class TestCluster:
    async def test_moved_is_followed(self, cluster_servers: ClusterServers) -> None:
        """A stale slot map (MOVED) and a missing script are handled."""
        host, port = cluster_servers.nodes[0]
        client = aioredis.RedisCluster(host=host, port=port)
        provider = InMemoryProvider(100)
        try:
            async with BalanceGuard(redis=client, namespace="moved") as guard:
                await spend(guard, provider, 10)
                wire = guard.store._wire  # type: ignore[attr-defined]
                account = guard._track(provider).account
                slot = wire.slot(account, keys_of("", account.key)[0])
                owner = wire._table[slot]
                wrong = next(n for n in set(wire._table) if n is not owner)
                wire._table[slot] = wrong  # as if the slot had moved away
                for node in list(wire._nodes.values()):
                    await wire.call(b"*2\r\n$6\r\nSCRIPT\r\n$5\r\nFLUSH\r\n", node)
                await spend(guard, provider, 10)
                assert wire._table[slot] is owner
        finally:
            await client.aclose()

    async def test_ask_is_followed(self, cluster_servers: ClusterServers) -> None:
        """
        A slot being migrated: ASK, then TRYAGAIN, then MOVED are followed
        within the call's timeout.
        """
        host, port = cluster_servers.nodes[0]
        client = aioredis.RedisCluster(host=host, port=port)
        provider = InMemoryProvider(100, name="memory", account_id="ask")
        sync = {p: redis.Redis(port=p) for p in cluster_servers.ports}
        try:
            async with BalanceGuard(redis=client, namespace="ask") as guard:
                account = guard._track(provider).account
                key = keys_of("", account.key)[0]
                source = cluster_servers.owner(key)
                target = next(
                    p
                    for p in cluster_servers.ports
                    if p != source and sync[p].info("replication")["role"] == "master"
                )
                slot = redis.crc.key_slot(key.encode())
                ids = {p: sync[p].execute_command("CLUSTER MYID") for p in sync}
                sync[target].execute_command(
                    "CLUSTER SETSLOT", slot, "IMPORTING", ids[source]
                )
                sync[source].execute_command(
                    "CLUSTER SETSLOT", slot, "MIGRATING", ids[target]
                )

                def finish() -> None:
                    time.sleep(0.3)
                    for p in (target, source):
                        sync[p].execute_command(
                            "CLUSTER SETSLOT", slot, "NODE", ids[target]
                        )

                # The source has none of the keys: ASK; the target has not
                # all of them: TRYAGAIN, until the migration ends: MOVED.
                began = time.monotonic()
                await asyncio.gather(
                    spend(guard, provider, 10), asyncio.to_thread(finish)
                )
                assert time.monotonic() - began >= 0.3
                assert sync[target].exists(key)
        finally:
            await client.aclose()
            for c in sync.values():
                c.close()


class TestReplicas:
    async def test_wait_for_a_replica(
        self, sentinel_servers: SentinelServers, request: pytest.FixtureRequest
    ) -> None:
        """replicas=1: holds and releases are on the replica before a call runs."""
        provider = InMemoryProvider(100)
        async with topology_client(request, "sentinel") as client:
            store = RedisStore(client, replicas=1, replica_timeout=1.0)
            async with (
                BalanceGuard(store=store, namespace="wait") as guard,
                guard.reserve(provider, 10),
            ):
                key = keys_of("", guard._track(provider).account.key)[2]
                primary = sentinel_servers.current()
                port = next(p for p in sentinel_servers.processes if p != primary)
                if port == sentinel_servers.sentinel:
                    port = sentinel_servers.replica
                with redis.Redis(port=port) as replica:
                    assert 1 == replica.zcard(key)

    async def test_too_few_replicas_refuse(
        self, request: pytest.FixtureRequest
    ) -> None:
        """A hold no replica acknowledged in time is dropped and refused."""
        provider = InMemoryProvider(100)
        async with topology_client(request, "sentinel") as client:
            store = RedisStore(client, replicas=2, replica_timeout=0.05)
            async with BalanceGuard(store=store, namespace="wait2") as guard:
                with pytest.raises(BalanceUnavailable, match=r"\d of 2 replica"):
                    await spend(guard, provider, 10)
                await asyncio.sleep(0.1)  # the drop runs in a task
                assert Decimal(0) == guard.held(provider)


class TestSentinel:
    async def test_demoted_primary_is_left(
        self, sentinel_servers: SentinelServers, request: pytest.FixtureRequest
    ) -> None:
        """
        A planned failover: the old primary answers READONLY on the guard's
        open connections; the next call asks the Sentinels and goes on.
        """
        provider = InMemoryProvider(100)
        async with (
            topology_client(request, "sentinel") as client,
            BalanceGuard(redis=client, namespace="demoted") as guard,
        ):
            await holds_are_shared(guard, provider)
            old = sentinel_servers.current()
            with redis.Redis(port=sentinel_servers.sentinel) as sentinel:
                sentinel.execute_command("SENTINEL FAILOVER", sentinel_servers.SERVICE)

            def demoted() -> bool:
                with redis.Redis(port=old, socket_timeout=1) as demoted:
                    return bool(
                        sentinel_servers.current() != old
                        and demoted.info("replication")["role"] == "slave"
                    )

            await asyncio.to_thread(wait_for, demoted, "the primary demoted")
            await holds_are_shared(guard, provider)
        await asyncio.to_thread(sentinel_servers.wait_healthy)


# -- the fetch lock -------------------------------------------------------------


class TestOwnLock:
    async def test_waiting_fetch_takes_its_own_process_lock(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """
        A call waits for another process's fetch; meanwhile another call of
        this process misses, takes the lock and joins the first call's
        fetch: the waiting fetch sees the lock is its own and fetches.
        """
        provider = InMemoryProvider(100)
        async with BalanceGuard(
            redis=f"redis://{addr[0]}:{addr[1]}",
            namespace=namespace,
            fetch_timeout=3.0,
        ) as guard:
            store: Any = guard.store
            lock = keys_of("", guard._track(provider).account.key)[4]
            await store.client.set(lock, "another-process", px=10_000)
            first = asyncio.ensure_future(spend(guard, provider, 1))
            await asyncio.sleep(0.2)  # waiting in begin_fetch
            await store.client.delete(lock)  # the other process gave up
            second = asyncio.ensure_future(spend(guard, provider, 1))
            began = time.monotonic()
            await asyncio.gather(first, second)
            assert time.monotonic() - began < 1.0


# -- several processes ------------------------------------------------------------


async def spawn(job: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        json.dumps(job),
        stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )


async def outcome(process: asyncio.subprocess.Process) -> dict[str, Any]:
    out, _ = await process.communicate()
    assert 0 == process.returncode
    result: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return result


def where_of(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    if kind == "cluster":
        cluster: ClusterServers = request.getfixturevalue("cluster_servers")
        return {"cluster": cluster.nodes}
    if kind == "sentinel":
        servers: SentinelServers = request.getfixturevalue("sentinel_servers")
        return {"sentinel": servers.sentinels, "service": servers.SERVICE}
    host, port = machine_redis()
    return {"url": f"redis://{host}:{port}"}


class TestProcesses:
    @pytest.mark.parametrize("kind", ["single", "cluster", "sentinel"])
    async def test_four_workers_never_overspend(
        self, kind: str, request: pytest.FixtureRequest
    ) -> None:
        """4 processes x 100 concurrent top-ups spend the balance, never more."""
        key = f"key-{uuid.uuid4().hex[:8]}"
        async with Emulator(plans=PLANS) as emu:
            emu.add_oneclickdz(key, 10_000)
            job = {
                "job": "topups",
                "redis": where_of(request, kind),
                "namespace": f"guard-topo-{uuid.uuid4().hex[:8]}",
                "url": emu.url,
                "key": key,
                "settle": "debit",
                "n": 100,
            }
            workers = [await spawn({**job, "seed": i}) for i in range(4)]
            results = [await outcome(w) for w in workers]
            sent = sum(Decimal(r["sent"]) for r in results)
            assert [] == [code for r in results for code in r["emulator"]]
            assert 10_000 >= sent >= 10_000 - 300
            assert Decimal(10_000) - sent == emu.balance(key)

    async def test_sustained_invalidate_never_waits_on_its_own_lock(
        self, addr: tuple[str, int], namespace: str
    ) -> None:
        """3 processes x sustained settle='invalidate' calls for 15 s: none fails."""
        async with Emulator(plans=PLANS) as emu:
            emu.add_oneclickdz("k", 10_000_000)
            job = {
                "job": "load",
                "redis": {"url": f"redis://{addr[0]}:{addr[1]}"},
                "namespace": namespace,
                "url": emu.url,
                "key": "k",
                "settle": "invalidate",
                "seconds": 15.0,
                "loops": 8,
                "max": 10,
            }
            workers = [await spawn({**job, "seed": i}) for i in range(3)]
            results = [await outcome(w) for w in workers]
        assert [0, 0, 0] == [len(r["times"]["unavailable"]) for r in results]
        assert all(len(r["times"]["ok"]) > 100 for r in results)


# -- failovers --------------------------------------------------------------------

FETCH_TIMEOUT = 3.0
# Runs out a few seconds after the promotion, at the workers' pace: checked
# in Redis again by then (the stand-in's checks are per process).
BALANCE = 60_000


def account_key(namespace: str, emu: Emulator, key: str) -> str:
    """The first Redis key of a worker's account (its hash tag)."""
    guard = BalanceGuard(namespace=namespace)
    account = guard._track(OneClickDZ(key, base_url=emu.url)).account
    return keys_of("", account.key)[0]


def wait_for(check: Any, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (RuntimeError, redis.RedisError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


async def failover_under_load(
    servers: ClusterServers | SentinelServers, where: dict[str, Any]
) -> None:
    """
    Processes of both policies top up two accounts while the primary
    holding both is killed (SIGKILL): no provider refusal, calls back
    within the promotion time plus 2 s, none past its timeout.
    """
    async with Emulator(plans=PLANS) as emu:
        keys: list[str] = []
        if isinstance(servers, ClusterServers):
            # Two accounts whose slots the same master holds: kill it.
            by_owner: dict[int, list[str]] = {}
            while not keys:
                key = f"k-{uuid.uuid4().hex[:8]}"
                owner = servers.owner(account_key("failover", emu, key))
                by_owner.setdefault(owner, []).append(key)
                if len(by_owner[owner]) == 2:
                    keys, victim = by_owner[owner], owner

            def promoted() -> bool:
                return servers.owner(account_key("failover", emu, keys[0])) != victim

        else:
            keys = [f"k-{uuid.uuid4().hex[:8]}" for _ in range(2)]
            victim = servers.current()

            def promoted() -> bool:
                return servers.current() != victim

        jobs = []
        for policy, key in zip(("closed", "open"), keys, strict=True):
            emu.add_oneclickdz(key, BALANCE)
            jobs += [
                {
                    "job": "load",
                    "redis": where,
                    "namespace": "failover",
                    "url": emu.url,
                    "key": key,
                    "settle": "refresh",
                    "policy": policy,
                    "fetch_timeout": FETCH_TIMEOUT,
                    "seconds": 9.0,
                    "loops": 4,
                    "pause": 0.05,
                    "seed": i,
                }
                for i in range(2)
            ]
        workers = [await spawn(job) for job in jobs]
        await asyncio.sleep(2.0)
        killed_at = time.time()
        await asyncio.to_thread(servers.kill, victim)
        await asyncio.to_thread(wait_for, promoted, "a replica promoted")
        promoted_at = time.time()
        results = [await outcome(w) for w in workers]
        left = [emu.balance(key) for key in keys]

    assert all(amount >= 0 for amount in left)
    for job, result in zip(jobs, results, strict=True):
        times = result["times"]
        what = (
            job["policy"],
            round(promoted_at - killed_at, 2),
            f"promoted at {promoted_at:.1f}",
            result["reasons"],
            result.get("refused_at", [])[:5],
            result["events"],
        )
        assert [] == result["emulator"], what
        assert 0 == result["failed_open"], what
        assert result["slowest"] < 2 * FETCH_TIMEOUT + 1, what
        late = [round(t - promoted_at, 2) for t in times["unavailable"]]
        assert [] == [t for t in late if t > 2], what
        back = [t for t in times["ok"] + times["refused"] if t > promoted_at]
        assert back, what
        assert min(back) < promoted_at + 2, what


class TestFailover:
    async def test_cluster_master_killed(self) -> None:
        """SIGKILL the master holding the accounts' slots, under load."""
        servers = ClusterServers()
        try:
            await asyncio.to_thread(servers.start)
            await failover_under_load(servers, {"cluster": servers.nodes})
        finally:
            servers.stop()

    async def test_sentinel_primary_killed(self) -> None:
        """SIGKILL the Sentinel-managed primary, under load."""
        servers = SentinelServers()
        try:
            await asyncio.to_thread(servers.start)
            where = {"sentinel": servers.sentinels, "service": servers.SERVICE}
            await failover_under_load(servers, where)
        finally:
            servers.stop()
