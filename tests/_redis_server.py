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
import time
from typing import Any

import pytest
import redis

__all__ = [
    "RedisProxy",
    "RedisServer",
    "delete_namespace",
    "machine_redis",
    "missing",
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
    replies come back on, `refuse` to drop every connection at once, and
    `delay` to hold every reply back that many seconds (the server has run
    the command; the client is still waiting).
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.lose = 0
        self.refuse = False
        self.delay = 0.0
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
