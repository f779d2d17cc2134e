"""
Real Redis servers for the Redis tests: the machine's, or one of our own,
and a loopback proxy in front of one that loses replies on demand.

A missing Redis skips the tests locally and fails them when ``CI`` is set:
in CI they must run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "ClusterServers",
    "RedisProxy",
    "RedisServer",
    "SentinelServers",
    "delete_namespace",
    "machine_redis",
    "missing",
    "topology_client",
]


def missing(reason: str) -> None:
    """
    Skip the test for want of Redis, or fail it in CI.
    """
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a real redis-server: {reason}", pytrace=False)
    pytest.skip(reason)


def machine_redis() -> tuple[str, int]:
    """
    Return the host and port of the machine's Redis (``REDIS_URL`` or
    127.0.0.1:6379), after checking that it answers.
    """
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(
            f"no Redis at {client.connection_pool.connection_kwargs['host']}: {exc}"
        )
    finally:
        client.close()
    kwargs = client.connection_pool.connection_kwargs
    return kwargs["host"], int(kwargs["port"])


def delete_namespace(host: str, port: int, namespace: str) -> None:
    """
    Delete the keys of one test's own *namespace*, and only those.
    """
    with redis.Redis(host=host, port=port) as client:
        keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
        if keys:
            client.delete(*keys)


def _free_ports(n: int) -> list[int]:
    """
    *n* distinct free loopback ports (all bound at once, so none repeats).
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """
    A ``redis-server`` of the test's own on a free loopback port, without
    persistence, that tests stop and start again.
    """

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            missing("redis-server is not installed")
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start the server (again, on the same port) and wait until it answers.
        """
        assert self.binary is not None
        self.process = subprocess.Popen(  # noqa: S603 - our own argv
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            for _ in range(500):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.01)
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        """
        Stop the server; its data is gone.
        """
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def connected_clients(self) -> int:
        """
        Return how many clients are connected, not counting this question.
        """
        with redis.Redis(port=self.port) as client:
            clients: int = client.info("clients")["connected_clients"]
        return clients - 1


class RedisProxy:
    """
    A TCP proxy on a free loopback port in front of a Redis, that can lose
    replies: the server has run the command, the client never hears back.

    ``async with RedisProxy(host, port) as proxy:``, then connect to
    ``proxy.port``. Set `lose` to drop the connections that the next *lose*
    replies come back on, `refuse` to drop every connection at once,
    `delay` to hold every reply back that many seconds (the server has run
    the command; the client is still waiting), and `delay_up` to hold every
    command back (the server has not seen it yet).
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.lose = 0
        self.refuse = False
        self.delay = 0.0
        self.delay_up = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RedisProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.refuse:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}

        async def pipe(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if self.refuse or (not up and self.lose):
                        if not up:
                            self.lose -= 1
                        break
                    if not up and self.delay:
                        await asyncio.sleep(self.delay)
                    if up and self.delay_up:
                        await asyncio.sleep(self.delay_up)
                    writer.write(data)
                    await writer.drain()
            client_w.transport.abort()
            server_w.transport.abort()

        try:
            await asyncio.gather(
                pipe(client_r, server_w, up=True), pipe(server_r, client_w, up=False)
            )
        finally:
            self._writers -= {client_w, server_w}


def _binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        missing("redis-server and redis-cli are not installed")
    assert server is not None
    assert cli is not None
    return server, cli


def _wait(check: Any, what: str, limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Processes:
    """
    redis-server processes of a test session, in a directory of their own.
    """

    def __init__(self) -> None:
        self.server, self.cli = _binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="guard-redis-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.argv: dict[int, list[str]] = {}

    def spawn(self, port: int, *options: str) -> None:
        argv = [
            self.server,
            *options,
            "--dbfilename",
            f"dump-{port}.rdb",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
        ]
        self.argv[port] = argv
        self.processes[port] = subprocess.Popen(  # noqa: S603 - our own argv
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill(self, port: int) -> None:
        """SIGKILL one server."""
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed server again, as it was."""
        self.processes[port] = subprocess.Popen(  # noqa: S603 - our own argv
            self.argv[port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _info(port: int, section: str) -> dict[str, Any]:
    with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as c:
        info: dict[str, Any] = c.info(section)
    return info


class ClusterServers(_Processes):
    """
    A Redis Cluster on loopback: 3 masters with a replica each, short
    timeouts so that a failover takes about a second.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(self) -> None:
        super().__init__()
        ports = _free_ports(12)
        self.ports = ports[:6]
        # The cluster bus's ports: by default port + 10000, which may not exist.
        self.bus = ports[6:]

    def start(self) -> None:
        for port, bus in zip(self.ports, self.bus, strict=True):
            self.spawn(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus),
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            )
        for port in self.ports:
            _wait(lambda port=port: redis.Redis(port=port).ping(), "a cluster node")
        subprocess.run(  # noqa: S603 - our own argv
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Wait until every node is up, the cluster ok, each master replicated."""

        def healthy() -> bool:
            for port in self.ports:
                if _info(port, "cluster").get("cluster_enabled") != 1:
                    return False
                with redis.Redis(port=port, socket_timeout=1) as c:
                    state = c.execute_command("CLUSTER INFO")
                if state.get("cluster_state") != "ok":
                    return False
            roles = [_info(p, "replication") for p in self.ports]
            masters = [r for r in roles if r["role"] == "master"]
            replicas = [r for r in roles if r["role"] == "slave"]
            return (
                len(masters) == 3
                and all(r.get("connected_slaves", 0) >= 1 for r in masters)
                and all(r.get("master_link_status") == "up" for r in replicas)
            )

        _wait(healthy, "a healthy cluster", limit=60)

    def owner(self, key: str) -> int:
        """The port of the master that owns *key*'s slot, as the cluster says."""
        slot = redis.crc.key_slot(key.encode())
        for port in self.ports:
            if port not in self.processes:
                continue
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(port=port, socket_timeout=1) as c,
            ):
                for first, last, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                    if first <= slot <= last:
                        return int(primary[1])
        raise RuntimeError("no node answered CLUSTER SLOTS")

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]


class SentinelServers(_Processes):
    """
    A primary, its replica and a Sentinel watching them on loopback, with
    short timeouts so that a failover takes a few seconds.
    """

    SERVICE = "guard-primary"

    def __init__(self) -> None:
        super().__init__()
        self.primary, self.replica, self.sentinel = _free_ports(3)

    def start(self) -> None:
        plain = ("--save", "", "--appendonly", "no")
        self.spawn(self.primary, *plain)
        self.spawn(self.replica, *plain, "--replicaof", "127.0.0.1", str(self.primary))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
            f"sentinel failover-timeout {self.SERVICE} 2000\n"
            f"sentinel parallel-syncs {self.SERVICE} 1\n"
        )
        self.spawn(self.sentinel, str(conf), "--sentinel")
        self.wait_healthy()

    def current(self) -> int:
        """The primary's port, as the Sentinel says."""
        with redis.Redis(port=self.sentinel, socket_timeout=1) as c:
            _, port = c.sentinel_get_master_addr_by_name(self.SERVICE)
        return int(port)

    def wait_healthy(self) -> None:
        """Wait until the Sentinel knows a primary with a replica in sync."""

        def healthy() -> bool:
            primary = self.current()
            with redis.Redis(port=self.sentinel, socket_timeout=1) as c:
                replicas = c.sentinel_slaves(self.SERVICE)
            links = [
                _info(port, "replication").get("master_link_status")
                for port in (self.primary, self.replica)
                if port in self.processes and port != primary
            ]
            return (
                primary in self.processes
                and links == ["up"]
                and any(
                    not {"s_down", "disconnected"} & set(str(r["flags"]).split(","))
                    and int(r["port"]) in self.processes
                    for r in replicas
                )
            )

        _wait(healthy, "a primary with its replica", limit=60)

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.sentinel)]


@asynccontextmanager
async def topology_client(
    request: pytest.FixtureRequest, kind: str
) -> AsyncIterator[Any]:
    """
    A redis-py asyncio client of the session's *kind* of servers
    (``"cluster"`` or ``"sentinel"``), closed afterwards.
    """
    client: Any
    closing: list[Any] = []
    if kind == "cluster":
        cluster: ClusterServers = request.getfixturevalue("cluster_servers")
        host, port = cluster.nodes[0]
        client = aioredis.RedisCluster(host=host, port=port)
    else:
        servers: SentinelServers = request.getfixturevalue("sentinel_servers")
        sentinel = Sentinel(servers.sentinels)
        client = sentinel.master_for(servers.SERVICE)
        # The Sentinels' own clients, asked where the primary is.
        closing = list(sentinel.sentinels)
    try:
        yield client
    finally:
        for other in (client, *closing):
            await other.aclose()
