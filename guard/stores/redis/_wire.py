"""
The Redis store's connection layer: every redis-py internal it relies on.

A warm guarded call is two scripts, so their round trips are most of its
cost: they are packed once per account and sent directly rather than
through redis-py's general command path, on one connection per node that
concurrent calls share (``_pipe``: what they issue in one turn of the event
loop goes out in one write), or on pooled connections while that one is
not there (the first call, after a failure, and writes that wait for
replicas, which would hold up the others). Each call is bounded as a whole
(the wait for a connection, the replies and every retry); a script the
server lost (``NOSCRIPT``) is loaded again, on the node that runs it.

Three topologies (`Target`, in ``_target.py``): one server; a primary that
Sentinels watch, asked where it is each time a connection is made
(``READONLY`` from a demoted primary counts as a lost connection); and
Redis Cluster, where each account's slot is computed once from its hash tag
and its scripts are sent to the pool of the node that owns the slot,
``MOVED`` and ``ASK`` are followed, ``TRYAGAIN`` and ``CLUSTERDOWN`` waited
out within the call's timeout, and the slot map asked for again after a
lost connection, so that a promoted replica is found.

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
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import BalanceUnavailable
from ._pipe import Pipe
from ._scripts import SCRIPTS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._values import Account
    from ._pipe import Done
    from ._scripts import Script
    from ._target import Target

__all__ = ["Wire", "pack"]

_SLOTS = 16384
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
_BUSY = (TryAgainError, ClusterDownError, MasterDownError)


def _bulk(value: str | int) -> bytes:
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack(args: Sequence[str | int]) -> bytes:
    """
    Pack one command in the Redis protocol.
    """
    return b"".join((b"*%d\r\n" % len(args), *map(_bulk, args)))


class _Node:
    """
    One server's pool, the connections taken from it and kept, and the one
    concurrent calls share.
    """

    __slots__ = ("addr", "free", "pipe", "pool")

    def __init__(self, addr: str, pool: Any) -> None:
        self.addr = addr
        self.pool = pool
        # Checking a connection out of redis-py's pool and back costs a fifth
        # of a GET: they are kept here between calls.
        self.free: list[Any] = []
        self.pipe: Pipe | None = None

    def ready(self) -> Pipe | None:
        """The pipe, if it can take commands on the running loop."""
        pipe = self.pipe
        if (
            pipe is None
            or pipe.error is not None
            or pipe.loop is not asyncio.get_running_loop()
        ):
            return None
        return pipe


class Wire:
    """
    Bounded, blocking pools of connections to Redis, on which the store's
    scripts run: one pool, or one per cluster node.

    Args:
        target: Where to connect.
        timeout: Seconds one call may take as a whole.
        size: How many pooled connections at most per node (calls past it
            wait for one), besides the one calls share.
        replicas: After a hold or a release, wait until that many replicas
            have it (``WAIT``); 0: don't wait.
        replica_timeout: Seconds to wait for them.
        on_new_loop: Called after the wire moved to a new event loop, for
            the store to give up what the old loop's calls left.
    """

    def __init__(
        self,
        target: Target,
        *,
        timeout: float,
        size: int = 64,
        replicas: int = 0,
        replica_timeout: float = 0.1,
        on_new_loop: Callable[[], None],
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.replicas = replicas
        self._wait = (
            pack(("WAIT", replicas, max(1, round(replica_timeout * 1000))))
            if replicas
            else b""
        )
        self._on_new_loop = on_new_loop
        self._size = size
        self.cluster = target.kind == "cluster"
        self._slots = asyncio.Semaphore(self._size)
        # The loop the connections, semaphore and tasks belong to.
        self.loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # calls in call()
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        self.closed = False
        # "EVALSHA <sha> <n> <keys>" packed, by script and account.
        self._packed: dict[tuple[Script, str], bytes] = {}
        # An account's slot, by its key (cluster).
        self._slot_of: dict[str, int] = {}
        self._client: Any = None
        self._reset()

    def _reset(self) -> None:
        self._nodes: dict[str, _Node] = {}
        # The node owning each slot (cluster), from the last slot map.
        self._table: list[_Node | None] = [None] * _SLOTS if self.cluster else []
        self._mapping: asyncio.Task[None] | None = None
        self._main = None if self.cluster else self._node("")
        self._slots = asyncio.Semaphore(self._size)
        self._busy = 0
        self._drained = None

    def _node(self, addr: str) -> _Node:
        node = self._nodes.get(addr)
        if node is None:
            node = self._nodes[addr] = _Node(addr, self._pool(addr))
        return node

    def _pool(self, addr: str) -> Any:
        target = self.target
        settings = dict(target.settings)
        if addr:
            host, _, port = addr.rpartition(":")
            settings.update(host=host, port=int(port))
        common: dict[str, Any] = {
            # One more: the pipe's, which call() takes out of the pool.
            "max_connections": self._size + 1,
            "connection_class": target.connection_class,
            **settings,
            "decode_responses": True,
            # No socket_timeout (redis-py's default is 5 s): with one, it
            # sends every command in a task of its own (asyncio.wait_for), a
            # third of a GET's cost. run() bounds each call as a whole instead.
            "socket_timeout": None,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 1),
        }
        if target.sentinel is not None:
            # Each connection asks the Sentinels where the primary is.
            service, sentinels = target.sentinel
            sentinel_pool: Any = SentinelConnectionPool
            return sentinel_pool(service, sentinels, **common)
        # Past the pool's size, calls queue for a connection.
        return aioredis.BlockingConnectionPool(timeout=self.timeout, **common)

    @property
    def client(self) -> Any:
        """
        A redis-py client on the wire's pool (for tests and benchmarks); on
        a cluster, a ``RedisCluster`` on its nodes.
        """
        if self._client is None:
            if self._main is not None:
                self._client = aioredis.Redis(connection_pool=self._main.pool)
            else:
                host, port = self.target.nodes[0]
                self._client = aioredis.RedisCluster(
                    host=host, port=port, **_cluster_settings(self.target)
                )
        return self._client

    def slot(self, account: Account, key: str) -> int:
        slot = self._slot_of.get(account.key)
        if slot is None:
            slot = self._slot_of[account.key] = key_slot(key.encode())
        return slot

    async def run(
        self,
        script: Script,
        account: Account,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        durable: bool = False,
    ) -> Any:
        """
        Run *script* on *account*'s *keys* with *args* and return its reply.
        *durable*: a write that must reach the replicas asked for.

        Raises:
            BalanceUnavailable: No reply within the timeout, or Redis failed.
        """
        command = self._command(script, account, keys, args)
        # The common case in one step: the node known, nothing amiss.
        node = self._known(account)
        fast = node is not None and not (durable and self.replicas)
        deadline = None
        try:
            if fast and node is not None:
                pipe = node.ready()
                if pipe is not None and not self.closed:
                    # Bounded by the pipe, which gives up on a late reply.
                    deadline = pipe.loop.time() + self.timeout
                    self._busy += 1
                    try:
                        return await pipe.send(command)
                    except TimeoutError:
                        raise  # the pipe's: the call's time is up
                    except (NoScriptError, MovedError, AskError, *_BUSY, *_LOST):
                        # The server lost the script, the slot moved, or the
                        # pipe was given up for a lost connection: the
                        # full path, on the pool's connections, in the
                        # time left.
                        fast = False
            async with (
                asyncio.timeout(self.timeout)
                if deadline is None
                else asyncio.timeout_at(deadline)
            ):
                if fast and node is not None:
                    try:
                        return await self.call(command, node, keep=True)
                    except NoScriptError:
                        pass  # the server restarted or was flushed
                    except (MovedError, AskError, *_BUSY, *_LOST):
                        if not self.cluster:
                            raise
                return await self._run(script, account, keys, command, durable)
        except TimeoutError:  # asyncio.timeout's, the pipe's, or a socket's
            reason = f"no answer within {self.timeout:g} s"
        except BalanceUnavailable:
            raise
        except Exception as exc:  # whatever redis-py raised
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
        raise BalanceUnavailable(
            f"cache unavailable: {reason}", provider=account.provider
        ) from None

    def run_soon(
        self,
        script: Script,
        account: Account,
        keys: Sequence[str],
        args: Sequence[str | int],
        done: Done,
    ) -> bool:
        """
        Send *script* without awaiting its reply, which goes to *done*
        (with the error instead, if it fails), on the shared connection of
        the node that runs it: it reaches Redis before any script this
        process sends after it on that connection. False: nothing was sent
        (no shared connection is ready; `run` must be awaited instead).
        """
        node = self._known(account)
        if node is None or self.closed or self.replicas:
            return False
        try:
            pipe = node.ready()
        except RuntimeError:  # no running loop
            return False
        if pipe is None:
            return False
        self._busy += 1
        pipe.push(self._command(script, account, keys, args), done)
        return True

    def _command(
        self,
        script: Script,
        account: Account,
        keys: Sequence[str],
        args: Sequence[str | int],
    ) -> bytes:
        packed = self._packed.get((script, account.key))
        if packed is None:
            head: tuple[str | int, ...] = ("EVALSHA", script.sha, len(keys), *keys)
            packed = b"".join([_bulk(arg) for arg in head])
            self._packed[script, account.key] = packed
        count = 3 + len(keys) + len(args)
        return b"".join((b"*%d\r\n" % count, packed, *map(_bulk, args)))

    def _known(self, account: Account) -> _Node | None:
        """The node that runs *account*'s scripts, if known."""
        node = self._main
        if node is None:
            slot = self._slot_of.get(account.key)
            node = None if slot is None else self._table[slot]
        return node

    def _replied(self) -> None:
        # A reply (or failure) handed out by a pipe.
        if self._busy:
            self._busy -= 1
        if not self._busy and self._drained is not None:
            with contextlib.suppress(asyncio.InvalidStateError):
                self._drained.set_result(None)

    async def _run(
        self,
        script: Script,
        account: Account,
        keys: Sequence[str],
        command: bytes,
        durable: bool,
    ) -> Any:
        """
        Run *command* (loading *script* where it is missing), following a
        cluster's redirections and waiting out its failovers.
        """
        slot = self.slot(account, keys[0]) if self.cluster else 0
        node: _Node | None = self._main
        before = b""
        after = self._wait if durable else b""
        delay = 0.01
        while True:
            parts = 1 + bool(before) + bool(after)
            if node is None:
                node = await self._owner(slot)
            try:
                replies = await self.call(
                    before + command + after, node, parts, keep=True
                )
            except NoScriptError:
                await self.call(pack(("SCRIPT", "LOAD", script.source)), node)
                continue
            except MovedError as exc:
                self._table[exc.slot_id] = self._node(f"{exc.host}:{exc.port}")
                node, before = None, b""
                continue
            except AskError as exc:
                # Being migrated: ask the target node this once.
                node, before = self._node(f"{exc.host}:{exc.port}"), pack(("ASKING",))
                continue
            except _BUSY:
                # A failover or resharding under way: wait it out, within
                # the call's timeout.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
                node, before = (None, b"") if self.cluster else (node, b"")
                continue
            except _LOST:
                if not self.cluster or not await self._moved(slot, node):
                    raise
                node, before = None, b""
                continue
            if parts == 1:
                return replies
            reply = replies[1] if before else replies[0]
            if after and int(replies[-1]) < self.replicas:
                raise BalanceUnavailable(
                    f"cache unavailable: the write reached {replies[-1]} of "
                    f"{self.replicas} replica(s) in time",
                    provider=account.provider,
                )
            return reply

    async def _owner(self, slot: int) -> _Node:
        node = self._table[slot]
        if node is None:
            await self.refresh()
            node = self._table[slot]
            if node is None:
                raise ClusterDownError(f"no node serves slot {slot}")
        return node

    async def _moved(self, slot: int, node: _Node) -> bool:
        """
        After a lost connection to *node*: ask for the slot map again, and
        say whether another node owns *slot* now.
        """
        with contextlib.suppress(*_LOST, ResponseError):
            await self.refresh(avoid=node)
        owner = self._table[slot]
        return owner is not None and owner is not node

    async def refresh(self, avoid: _Node | None = None) -> None:
        """
        Ask a reachable node for the cluster's slot map (one request at a
        time: callers share it).
        """
        task = self._mapping
        if task is None or task.done():
            task = self._mapping = asyncio.get_running_loop().create_task(
                self._refresh(avoid)
            )
        await asyncio.shield(task)

    async def _refresh(self, avoid: _Node | None) -> None:
        addrs = [f"{host}:{port}" for host, port in self.target.nodes]
        known = [a for a in self._nodes if a not in addrs]
        order = [a for a in (*known, *addrs) if avoid is None or a != avoid.addr]
        if avoid is not None:
            order.append(avoid.addr)
        errors: list[str] = []
        for addr in order:
            try:
                reply = await self.call(pack(("CLUSTER", "SLOTS")), self._node(addr))
            except (*_LOST, ResponseError) as exc:
                errors.append(f"{addr}: {type(exc).__name__}")
                continue
            table: list[_Node | None] = [None] * _SLOTS
            host = addr.rpartition(":")[0]
            for first, last, primary, *replicas in reply:
                owner = self._node(f"{primary[0] or host}:{primary[1]}")
                table[first : last + 1] = [owner] * (last - first + 1)
                for replica in replicas:  # asked for the map too, next time
                    self._node(f"{replica[0] or host}:{replica[1]}")
            self._table[:] = table
            return
        raise RedisConnectionError(f"no cluster node answered ({', '.join(errors)})")

    async def call(
        self, command: bytes, node: _Node, parts: int = 1, *, keep: bool = False
    ) -> Any:
        """
        Send a packed command on a pooled connection of *node* and return its
        reply (several commands: the list of their *parts* replies).

        A lost connection is replaced and the command sent once more, as
        redis-py does: the scripts are idempotent.

        *keep*: if the node has no shared connection (`_pipe`) ready, this
        one becomes it once it has answered.
        """
        if self.loop is not asyncio.get_running_loop():
            self.adopt_loop()
            node = self._node(node.addr)
        if self._is_closed():
            raise RedisConnectionError("the guard is closed")
        self._busy += 1
        try:
            async with self._slots:
                if node.free:
                    conn = node.free.pop()
                else:
                    conn = await node.pool.get_connection()
                try:
                    if self._is_closed():
                        raise RedisConnectionError("the guard is closed")
                    try:
                        if not conn.is_connected:
                            # connect(), not the send's own reconnection: a
                            # Sentinel's connection asks where the primary is.
                            await conn.connect()
                        await conn.send_packed_command(command)
                        return await _read(conn, parts)
                    except (RedisConnectionError, RedisTimeoutError):
                        # Sending or reading disconnected it (as any failure or
                        # cancellation does, and READONLY from a demoted
                        # Sentinel primary): connect again, unless the pool
                        # is closed.
                        if self._is_closed():
                            raise
                        await conn.connect()
                        await conn.send_packed_command(command)
                        return await _read(conn, parts)
                finally:
                    if self._is_closed():  # close() has let go of the others
                        await conn.disconnect(nowait=True)
                    elif not conn.is_connected:
                        # Used last: connecting again costs round trips.
                        node.free.insert(0, conn)
                    elif keep and node.ready() is None:
                        self._share(node, conn)
                    else:
                        node.free.append(conn)
        finally:
            self._replied()

    def _share(self, node: _Node, conn: Any) -> None:
        """Make *conn*, which just answered, the one *node*'s calls share."""
        old = node.pipe
        if old is not None:  # given up: its connection back with the others
            node.free.insert(0, old.conn)
        pipe = node.pipe = Pipe(conn, self.timeout, self._replied)
        for script in SCRIPTS:  # a failure here fails what follows too
            self._busy += 1
            pipe.push(pack(("SCRIPT", "LOAD", script.source)), _ignore)

    def _is_closed(self) -> bool:
        # A call, not the attribute: it changes while call() awaits.
        return self.closed

    def _connections(self) -> list[Any]:
        conns: list[Any] = []
        for node in self._nodes.values():
            pool: Any = node.pool
            conns += node.free
            if node.pipe is not None:
                conns.append(node.pipe.conn)
            conns += getattr(pool, "_available_connections", ())
            conns += getattr(pool, "_in_use_connections", ())
        return conns

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
        # Scripts sent in the background on the old loop may not have
        # reached Redis: their callbacks learn it here, on the new loop.
        lost: list[Done] = []
        for node in self._nodes.values():
            if node.pipe is not None:
                lost += node.pipe.abandon()
        for conn in self._connections():
            _abandon(conn)
        self._client = None
        self._reset()
        self._on_new_loop()
        error = RedisConnectionError("the event loop ended")
        for done in lost:
            done(None, error)

    def after_fork(self) -> None:
        """
        In a child process after ``os.fork()``: forget the parent's loop and
        connections, never using or closing them (their sockets and the
        loop's selector are shared with the parent). The next call connects
        afresh on the child's loop.
        """
        # Kept referenced, never finalized: finalizing would close sockets.
        _ORPHANS.append((self._nodes, self._client))
        self._client = None
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
        client guard made (never one the user passed).
        """
        self.closed = True
        if self._mapping is not None:
            self._mapping.cancel()
        for node in self._nodes.values():
            if node.pipe is not None:
                node.pipe.fail(RedisConnectionError("the guard is closed"))
                node.free.append(node.pipe.conn)
                node.pipe = None
            while node.free:
                await node.pool.release(node.free.pop())
            await node.pool.aclose()
        if self._client is not None:
            await self._client.aclose()
        # aiocache 0.12's RedisCache.close() calls redis-py's deprecated
        # close(): close its client the current way instead.
        if self.target.owned is not None:
            await self.target.owned.aclose()


async def _read(conn: Any, parts: int) -> Any:
    """
    Read *parts* replies; raise the first error among them once all are read
    (the connection stays in step).
    """
    if parts == 1:
        return await conn.read_response()
    replies: list[Any] = []
    for _ in range(parts):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _ignore(reply: object, error: BaseException | None) -> None:
    pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or repr(exc)


def _cluster_settings(target: Target) -> dict[str, Any]:
    settings = dict(target.settings)
    settings.pop("host", None)
    settings.pop("port", None)
    settings.pop("db", None)
    return settings


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
