"""
The Redis store's connection layer: every redis-py internal it relies on.

A warm guarded call is two scripts, so their round trips are most of its
cost: they are sent on the pool's connections directly, packed once per
account, rather than through redis-py's general command path. Each call is
bounded as a whole (the wait for a connection, the reply and the one
retry); a script the server lost (``NOSCRIPT``) is loaded again.

The connections belong to one event loop. Used on another once that one has
ended, the wire drops the old loop's connections (closing their sockets
without that loop) and starts afresh. In a child process after
``os.fork()`` it forgets the parent's loop and connections without touching
them: their sockets are the parent's too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import BalanceUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiocache.base import BaseCache

    from .._values import Account
    from ._scripts import Script

__all__ = ["Wire", "pack"]

# The connection settings copied from the user's RedisCache.
_COPIED = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "client_name",
    "credential_provider",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)


def _bulk(value: str | int) -> bytes:
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack(args: Sequence[str | int]) -> bytes:
    """
    Pack one command in the Redis protocol.
    """
    return b"".join((b"*%d\r\n" % len(args), *map(_bulk, args)))


class Wire:
    """
    A bounded, blocking pool of connections to one Redis, on which the
    store's scripts run.

    Args:
        cache: The user's ``aiocache.RedisCache``, whose connection settings
            (host, port, db, credentials, TLS, pool size) are copied.
        timeout: Seconds one call may take as a whole.
        on_new_loop: Called after the wire moved to a new event loop, for
            the store to give up what the old loop's calls left.
    """

    def __init__(
        self,
        cache: BaseCache,
        *,
        timeout: float,
        on_new_loop: Callable[[], None],
    ) -> None:
        self.cache = cache
        self.timeout = timeout
        self._on_new_loop = on_new_loop
        self._size: int = getattr(cache, "pool_max_size", None) or 64
        self.pool, self.client = self._connect()
        # Connections taken from the pool and kept for the scripts: checking
        # one out of redis-py's pool and back costs a fifth of a GET. At most
        # pool_size of them are in use; more calls wait for one.
        self._free: list[Any] = []
        self._slots = asyncio.Semaphore(self._size)
        # The loop the connections, semaphore and tasks belong to.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # calls in call()
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        self.closed = False
        # "EVALSHA <sha> <n> <keys>" packed, by script and account.
        self._packed: dict[tuple[Script, str], bytes] = {}

    def _connect(self) -> tuple[aioredis.BlockingConnectionPool, aioredis.Redis]:
        source: Any = self.cache.client.connection_pool
        settings = source.connection_kwargs
        pool = aioredis.BlockingConnectionPool(
            max_connections=self._size,
            # Past the pool's size, calls queue for a connection instead of
            # failing.
            timeout=self.timeout,
            connection_class=source.connection_class,
            **{k: settings[k] for k in _COPIED if k in settings},
            decode_responses=True,
            # No socket_timeout (redis-py's default is 5 s): with one, it sends
            # every command in a task of its own (asyncio.wait_for), a third
            # of a GET's cost. run() bounds each call as a whole instead.
            socket_timeout=None,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return pool, aioredis.Redis(connection_pool=pool)

    async def run(
        self,
        script: Script,
        account: Account,
        keys: Sequence[str],
        args: Sequence[str | int],
    ) -> Any:
        """
        Run *script* on *account*'s *keys* with *args* and return its reply.

        Raises:
            BalanceUnavailable: No reply within the timeout, or Redis failed.
        """
        packed = self._packed.get((script, account.key))
        if packed is None:
            head: tuple[str | int, ...] = ("EVALSHA", script.sha, len(keys), *keys)
            packed = b"".join([_bulk(arg) for arg in head])
            self._packed[script, account.key] = packed
        count = 3 + len(keys) + len(args)
        command = b"".join((b"*%d\r\n" % count, packed, *map(_bulk, args)))
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self.call(command)
                except NoScriptError:
                    # The server restarted or was flushed: load it again.
                    await self.call(pack(("SCRIPT", "LOAD", script.source)))
                    return await self.call(command)
        except TimeoutError:  # asyncio.timeout's, or a socket's
            reason = f"no answer within {self.timeout:g} s"
        except (RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except RuntimeError as exc:  # e.g. redis-py on an event loop that ended
            reason = f"{type(exc).__name__}: {exc}"
        raise BalanceUnavailable(
            f"cache unavailable: {reason}", provider=account.provider
        ) from None

    async def call(self, command: bytes) -> Any:
        """
        Send one packed command on a pooled connection and return its reply.

        A lost connection is replaced and the command sent once more, as
        redis-py does: the scripts are idempotent.
        """
        if self.loop is not asyncio.get_running_loop():
            self.adopt_loop()
        if self._is_closed():
            raise RedisConnectionError("the guard is closed")
        self._busy += 1
        try:
            async with self._slots:
                if self._free:
                    conn = self._free.pop()
                else:
                    pool: Any = self.pool  # get_connection is untyped
                    conn = await pool.get_connection()
                try:
                    if self._is_closed():
                        raise RedisConnectionError("the guard is closed")
                    try:
                        await conn.send_packed_command(command)
                        return await conn.read_response()
                    except (RedisConnectionError, RedisTimeoutError):
                        # Sending or reading disconnected it (as any failure or
                        # cancellation does): the next send connects again,
                        # unless the pool is closed.
                        if self._is_closed():
                            raise
                        await conn.send_packed_command(command)
                        return await conn.read_response()
                finally:
                    if self._is_closed():  # close() has let go of the others
                        await conn.disconnect(nowait=True)
                    elif conn.is_connected:
                        self._free.append(conn)
                    else:  # used last: connecting again costs round trips
                        self._free.insert(0, conn)
        finally:
            self._busy -= 1
            if not self._busy and self._drained is not None:
                with contextlib.suppress(asyncio.InvalidStateError):
                    self._drained.set_result(None)

    def _is_closed(self) -> bool:
        # A call, not the attribute: it changes while call() awaits.
        return self.closed

    def adopt_loop(self) -> None:
        """
        Move to the running event loop, the first time the wire is used on
        it; the previous loop must have ended.

        Its connections and semaphore belong to that loop: drop them
        (closing their sockets without it) and start afresh.

        Raises:
            RuntimeError: The previous loop still runs (in another thread).
        """
        loop = asyncio.get_running_loop()
        old = self.loop
        if old is not None and old.is_running():
            raise RuntimeError("the guard's Redis store is in use by another loop")
        self.loop = loop
        if old is None:
            return
        pool: Any = self.pool
        for conn in (
            *self._free,
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ):
            _abandon(conn)
        self._reset()
        self._on_new_loop()

    def _reset(self) -> None:
        self._free = []
        self._slots = asyncio.Semaphore(self._size)
        self.pool, self.client = self._connect()
        self._busy = 0
        self._drained = None

    def after_fork(self) -> None:
        """
        In a child process after ``os.fork()``: forget the parent's loop and
        connections, never using or closing them (their sockets and the
        loop's selector are shared with the parent). The next call connects
        afresh on the child's loop.
        """
        # Kept referenced, never finalized: finalizing would close sockets.
        _ORPHANS.append((self.pool, self.client, self._free))
        self.loop = None
        self._reset()

    async def drain(self, deadline: float) -> None:
        """
        Wait until the calls on their way have finished, or *deadline* (loop
        time).
        """
        if self._busy:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._drained

    async def close(self) -> None:
        """
        Close the connections, those of calls still running too, and the
        user's cache's client.
        """
        self.closed = True
        while self._free:
            await self.pool.release(self._free.pop())
        await self.client.aclose()
        await self.pool.aclose()
        # aiocache 0.12's RedisCache.close() calls redis-py's deprecated
        # close(): close its client the current way instead.
        client: Any = getattr(self.cache, "client", None)
        if client is not None:
            await client.aclose()


def _abandon(conn: Any) -> None:
    """
    Close the socket of a connection whose event loop has ended, without
    running that loop.
    """
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return
    # redis-py then sees it disconnected (and warns of nothing).
    conn._reader = conn._writer = None
    transport = writer.transport
    try:
        transport.abort()  # done by the old loop, if it ever runs again
    except RuntimeError:
        # It is closed and can't run the transport's last step, which closes
        # the socket: run it here, or the socket leaks with a ResourceWarning.
        inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        with contextlib.suppress(Exception):
            (inner or transport)._call_connection_lost(None)


# The parent's connections, in a forked child.
_ORPHANS: list[object] = []
