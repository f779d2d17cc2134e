"""
Balances and holds shared between processes through Redis.

Every account has five keys under one hash tag (so that its scripts also run
on Redis Cluster), named after the account's cache key, which carries no
secret::

    {guard:oneclickdz:<hash>}:b   hash: u (balance in units), f (fetch id),
                                  t (fetched at, server ms); expires after ttl
    {guard:oneclickdz:<hash>}:g   generation: bumped by every invalidation
                                  and debit; when missing it starts from
                                  the server's clock in microseconds, so it
                                  never repeats a value Redis lost
    {guard:oneclickdz:<hash>}:h   sorted set of holds "<id>:<units>", scored
                                  by the lease's end (server ms)
    {guard:oneclickdz:<hash>}:s   sum of the holds' units
    {guard:oneclickdz:<hash>}:l   the fetch lock: one process fetches

Amounts are integers of 1/10,000 of the currency unit: a balance is rounded
down and a hold up, so rounding never lets a call through. Every change is a
Lua script, so it is atomic, and every script is idempotent when it is sent
again after a lost connection.

A hold lives for a lease and is renewed every third of it while its call
runs. Renewal puts back a running call's hold that is gone (Redis lost its
data, or the hold's lease ended while this process could not reach Redis)
and invalidates the balance, which may have been fetched without it. Until
that renewal, within a third of the lease (or a second after Redis answers
again, once a renewal has failed), another process can fetch a balance that
still includes what the running calls are about to spend and let a call
through against it: run Redis with persistence (``appendonly yes``) or
shorten the lease if that window matters. A fetch that began before the loss
is never stored after it.

A release cut short by its caller's cancellation is finished by a task of
the store's (sent again: at worst it invalidates instead of debiting). One
that cannot reach Redis, like a check whose reply was lost (which may have
held), is tried again every second until the hold's lease ends.

A warm guarded call is two scripts, so their round trips are most of its
cost: they are sent on the pool's connections directly, packed once per
account, rather than through redis-py's general command path.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import os
import secrets
import sys
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._store import Account, Entry, Hold, Short
from .errors import BalanceUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiocache.base import BaseCache

__all__ = ["RedisStore"]

log = logging.getLogger("guard")

_SCALE = 4  # amounts are kept in units of 10**-4


class _Ids:
    """
    Ids of holds, fetches and lock tokens: unique between processes and hosts
    without asking the OS for randomness on every call.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = f"{os.getpid()}-{secrets.token_hex(4)}-"
        self.count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.count)}"


_new_id = _Ids()
if sys.platform != "win32":
    # A worker forked from a process that already made ids would repeat them.
    os.register_at_fork(after_in_child=_new_id.reset)


class _Script:
    """
    A Lua script and its SHA1, by which it is called.
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# Generations never repeat. A missing one (a new account, or Redis lost its
# data) starts from the server's clock in microseconds, past any value it had
# before, so a fetch that began before the loss can't match it again.
# bump() runs for every invalidation and debit, generation() where a fetch
# takes its ticket.
_GEN = """
local function clock_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
local function generation()
  local g = redis.call('GET', KEYS[2])
  if g then return g end
  g = clock_us()
  redis.call('SET', KEYS[2], g)
  return g
end
local function bump()
  if redis.call('INCR', KEYS[2]) == 1 then redis.call('SET', KEYS[2], clock_us()) end
end
"""

# The prune, shared by the scripts that check or renew holds. KEYS: 1 balance,
# 2 generation, 3 holds, 4 sum, 5 lock. A hold whose lease ended belongs to a
# call that died or could not settle: what it spent is unknown, so pruning it
# also invalidates the balance. Releases need not prune: a hold is only
# counted against a balance by _HOLD, which prunes first.
_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #gone > 0 then
  local sum = 0
  for i = 1, #gone do
    sum = sum + tonumber(string.match(gone[i], ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('DECRBY', KEYS[4], sum) < 0 then redis.call('DEL', KEYS[4]) end
  bump()
  redis.call('DEL', KEYS[1])
end
"""

# ARGV: units, id (the hold is "<id>:<units>", the lock's token is the id),
# lease ms, lock ms. Returns {0, generation, got_lock} on a miss, else
# {1 short | 2 held, balance units, fetch id, fetched at ms, age ms,
# available units}, or {3} when held but the balance is gone since.
_HOLD = _Script(
    _GEN
    + _PRUNE
    + """
local member = ARGV[2] .. ':' .. ARGV[1]
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
-- Sent again after a lost reply: the first run held, don't count it twice.
if redis.call('ZSCORE', KEYS[3], member) then
  if not b[1] then return {3} end
  return {2, b[1], b[2], b[3], now - tonumber(b[3]), 0}
end
if not b[1] then
  -- A resent script finds the lock its first run took.
  local got = redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[4])
    or redis.call('GET', KEYS[5]) == ARGV[2]
  return {0, generation(), got and 1 or 0}
end
local avail = tonumber(b[1]) - tonumber(redis.call('GET', KEYS[4]) or '0')
if avail < tonumber(ARGV[1]) then
  return {1, b[1], b[2], b[3], now - tonumber(b[3]), avail}
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), member)
redis.call('INCRBY', KEYS[4], ARGV[1])
return {2, b[1], b[2], b[3], now - tonumber(b[3]), avail}
"""
)

# ARGV: hold, its units, debit (1/0), fetch id held against. Returns 1 when
# debited, 0 when invalidated. A hold already gone (its lease ended and it
# was pruned) is not debited: the prune invalidated the balance.
_RELEASE = _Script(
    _GEN
    + """
local removed = redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 and redis.call('DECRBY', KEYS[4], ARGV[2]) < 0 then
  redis.call('DEL', KEYS[4])
end
bump()
if removed == 1 and ARGV[3] == '1'
    and redis.call('HGET', KEYS[1], 'f') == ARGV[4] then
  redis.call('HINCRBY', KEYS[1], 'u', '-' .. ARGV[2])
  return 1
end
redis.call('DEL', KEYS[1])
return 0
"""
)

# ARGV: hold, its units, lock token. Drops a hold (and lock) that a check
# whose reply was lost may have made: its call never ran, so the balance
# stays. Returns 1 if the hold was there.
_DROP = _Script(
    """
local removed = redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 and redis.call('DECRBY', KEYS[4], ARGV[2]) < 0 then
  redis.call('DEL', KEYS[4])
end
if redis.call('GET', KEYS[5]) == ARGV[3] then redis.call('DEL', KEYS[5]) end
return removed
"""
)

# ARGV: lease ms, holds... Returns the holds that were gone (Redis lost them,
# or they were pruned while this process could not renew them): they are
# put back, and the balance, which may have been fetched without them, is
# invalidated.
_RENEW = _Script(
    _GEN
    + _PRUNE
    + """
local back = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), ARGV[i]) == 1 then
    redis.call('INCRBY', KEYS[4], string.match(ARGV[i], ':(%d+)$'))
    back[#back + 1] = ARGV[i]
  end
end
if #back > 0 then
  bump()
  redis.call('DEL', KEYS[1])
end
return back
"""
)

# ARGV: generation at the fetch's start, units, fetch id, ttl ms, lock token.
# Returns {1 stored | 2 someone else's | 0 nothing, units, fetch id,
# fetched at ms, age ms}.
_PUT = _Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[5]) == ARGV[5] then redis.call('DEL', KEYS[5]) end
-- A missing generation means Redis lost its data since the fetch began.
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('HSET', KEYS[1], 'u', ARGV[2], 'f', ARGV[3], 't', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, ARGV[2], ARGV[3], now, 0}
end
-- Invalidated or debited since the fetch began: it may predate a spend.
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if b[1] then return {2, b[1], b[2], b[3], now - tonumber(b[3])} end
return {0}
"""
)

# ARGV: lock token, lock ms, fetch id seen when the wait began ('*' on the
# first call). Returns {1, generation} when the lock is ours, {2, units,
# fetch id, fetched at ms, age ms} when a balance newer than the one seen is
# there, {0, fetch id or ''} while another process fetches.
_BEGIN = _Script(
    _GEN
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if b[1] and ARGV[3] ~= '*' and b[2] ~= ARGV[3] then
  return {2, b[1], b[2], b[3], now - tonumber(b[3])}
end
if redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2])
    or redis.call('GET', KEYS[5]) == ARGV[1] then
  return {1, generation()}
end
return {0, b[2] or ''}
"""
)

# ARGV: lock token. Returns 1 if the lock was ours.
_UNLOCK = _Script(
    """
if redis.call('GET', KEYS[5]) == ARGV[1] then return redis.call('DEL', KEYS[5]) end
return 0
"""
)

# Returns {units, fetch id, fetched at ms, age ms} or {}.
_READ = _Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if not b[1] then return {} end
return {b[1], b[2], b[3], now - tonumber(b[3])}
"""
)

_INVALIDATE = _Script(
    _GEN
    + """
bump()
return redis.call('DEL', KEYS[1])
"""
)


def _bulk(value: str | int) -> bytes:
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack(args: Sequence[str | int]) -> bytes:
    return b"".join((b"*%d\r\n" % len(args), *map(_bulk, args)))


def _units(amount: Decimal, rounding: str) -> int:
    return int(amount.scaleb(_SCALE).to_integral_value(rounding=rounding))


def _amount(units: int | str) -> Decimal:
    value = Decimal(int(units)).scaleb(-_SCALE)
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


class _Ticket:
    """
    Leave to fetch: the lock's token and the generation at the fetch's start.
    """

    __slots__ = ("generation", "token")

    def __init__(self, token: str, generation: str) -> None:
        self.token = token
        self.generation = generation


class _Later:
    """
    A script that failed to run and is tried again by the renewer until
    *until* (monotonic): a release, or the drop of a hold whose check lost
    its reply. Past *until* the hold's lease has ended anyway.
    """

    __slots__ = ("account", "args", "script", "until")

    def __init__(
        self,
        script: _Script,
        account: Account,
        args: tuple[str | int, ...],
        until: float,
    ) -> None:
        self.script = script
        self.account = account
        self.args = args
        self.until = until


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


class RedisStore:
    """
    Balances and holds in Redis, shared by every process using the same
    server and namespace.

    It belongs to the event loop it is used on. Used on another once that
    one has ended, it drops the old loop's connections and starts afresh,
    releasing (without a debit) the holds of calls that loop never settled.

    Args:
        cache: The user's ``aiocache.RedisCache``: its connection settings
            (host, port, db, credentials, TLS, pool size, timeout) are used
            for a client of the store's own with a blocking, bounded pool.
            Its timeout (at most *fetch_timeout*) bounds each Redis call as a
            whole: the wait for a connection, the reply and the one retry.
        ttl: Seconds a fetched balance is trusted.
        lease: Seconds a hold lives unless renewed. Holds of running calls are
            renewed every third of it; those of a dead process expire.
        fetch_timeout: Seconds a fetch may take: the fetch lock's lease and
            how long other processes wait for its result.
    """

    def __init__(
        self,
        cache: BaseCache,
        *,
        ttl: float,
        lease: float,
        fetch_timeout: float,
    ) -> None:
        self.cache = cache
        self.ttl_ms = max(1, round(ttl * 1000))
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self.fetch_timeout = fetch_timeout
        self.lock_ms = max(1, round(fetch_timeout * 1000))
        timeout = float(getattr(cache, "timeout", None) or 5.0)
        # Bounds each Redis call as a whole: waiting for a connection, sending,
        # the reply, and the one retry.
        self.timeout = min(timeout, fetch_timeout)
        self._size = getattr(cache, "pool_max_size", None) or 64
        self.pool, self.client = self._connect()
        # Connections taken from the pool and kept for the scripts: checking
        # one out of redis-py's pool and back costs a fifth of a GET. At most
        # pool_size of them are in use; more calls wait for one.
        self._free: list[Any] = []
        self._slots = asyncio.Semaphore(self._size)
        # The loop the connections, semaphore and tasks belong to.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # calls in _call
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        self._closed = False
        prefix = getattr(cache, "namespace", None) or ""
        self._prefix = f"{prefix}:" if prefix else ""
        self._keys: dict[str, tuple[str, str, str, str, str]] = {}
        # "EVALSHA <sha> 5 <keys>" packed, by script and account.
        self._packed: dict[tuple[_Script, str], bytes] = {}
        # Locks taken by a missed try_hold, for the fetch that follows it.
        self._tickets: dict[str, tuple[_Ticket, float]] = {}
        # Holds of this process's running calls (with their amounts), renewed
        # in the background.
        self._live: dict[str, tuple[Account, dict[str, Decimal]]] = {}
        # Releases and drops that failed, by hold: the renewer retries them.
        self._later: dict[str, _Later] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Releases their cancelled callers left to the store to finish.
        self._releasing: set[asyncio.Task[None]] = set()
        # Fetch locks this store holds, given back when it closes.
        self._locks: dict[str, Account] = {}

    def __repr__(self) -> str:
        return f"<RedisStore lease={self.lease:g}>"

    # -- plumbing -------------------------------------------------------------

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
            # of a GET's cost. _run bounds each call as a whole instead.
            socket_timeout=None,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return pool, aioredis.Redis(connection_pool=pool)

    def _key5(self, account: Account) -> tuple[str, str, str, str, str]:
        keys = self._keys.get(account.key)
        if keys is None:
            tag = f"{{{self._prefix}{account.key}}}"
            keys = (f"{tag}:b", f"{tag}:g", f"{tag}:h", f"{tag}:s", f"{tag}:l")
            self._keys[account.key] = keys
        return keys

    async def _run(
        self, script: _Script, account: Account, args: Sequence[str | int]
    ) -> Any:
        packed = self._packed.get((script, account.key))
        if packed is None:
            head = ("EVALSHA", script.sha, 5, *self._key5(account))
            packed = b"".join([_bulk(arg) for arg in head])
            self._packed[script, account.key] = packed
        command = b"".join((b"*%d\r\n" % (8 + len(args)), packed, *map(_bulk, args)))
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self._call(command)
                except NoScriptError:
                    # The server restarted or was flushed: load it again.
                    await self._call(_pack(("SCRIPT", "LOAD", script.source)))
                    return await self._call(command)
        except TimeoutError:  # asyncio.timeout's, or a socket's
            reason = f"no answer within {self.timeout:g} s"
        except (RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except RuntimeError as exc:  # e.g. redis-py on an event loop that ended
            reason = f"{type(exc).__name__}: {exc}"
        raise BalanceUnavailable(
            f"cache unavailable: {reason}", provider=account.provider.name
        ) from None

    async def _call(self, command: bytes) -> Any:
        """
        Send one packed command on a pooled connection and return its reply.

        A lost connection is replaced and the command sent once more, as
        redis-py does: the scripts are idempotent.
        """
        if self._loop is not asyncio.get_running_loop():
            self._adopt_loop()
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
                    else:
                        self._free.append(conn)
        finally:
            self._busy -= 1
            if not self._busy and self._drained is not None:
                with contextlib.suppress(asyncio.InvalidStateError):
                    self._drained.set_result(None)

    def _is_closed(self) -> bool:
        # A call, not the attribute: it changes while _call awaits.
        return self._closed

    def _adopt_loop(self) -> None:
        """
        Move to the running event loop, the first time the store is used on
        it; the previous loop must have ended.

        Its connections, semaphore and tasks belong to that loop: drop them
        (closing their sockets without it) and start afresh.

        Raises:
            RuntimeError: The previous loop still runs (in another thread).
        """
        loop = asyncio.get_running_loop()
        old = self._loop
        if old is not None and old.is_running():
            raise RuntimeError("the guard's Redis store is in use by another loop")
        self._loop = loop
        if old is None:
            return
        pool: Any = self.pool
        for conn in (
            *self._free,
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ):
            _abandon(conn)
        self._free = []
        self._slots = asyncio.Semaphore(self._size)
        self.pool, self.client = self._connect()
        self._renewer = None
        self._releasing = set()
        self._busy = 0
        self._drained = None
        # Calls of the old loop that never settled are over, and what they
        # spent is unknown: release their holds without a debit.
        for account, members in self._live.values():
            for member, amount in members.items():
                account.held -= amount
                units = member.rpartition(":")[2]
                self._retry(_RELEASE, account, (member, units, 0, ""))
        self._live.clear()

    def _entry(
        self,
        account: Account,
        units: str,
        fetch_id: str,
        fetched_ms: str | int,
        age_ms: int,
    ) -> Entry:
        # Times come from the Redis server's clock, shared by every host.
        entry = Entry(
            _amount(units),
            fetch_id,
            dt.datetime.fromtimestamp(int(fetched_ms) / 1000, dt.UTC),
            time.monotonic() - max(int(age_ms), 0) / 1000,
        )
        account.entry = entry
        return entry

    # -- the Store protocol ---------------------------------------------------

    async def read(self, account: Account) -> Entry | None:
        reply = await self._run(_READ, account, ())
        if not reply:
            return None
        return self._entry(account, *reply)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        units = _units(amount, ROUND_CEILING)
        token = _new_id()
        member = f"{token}:{units}"
        try:
            reply = await self._run(
                _HOLD, account, (units, token, self.lease_ms, self.lock_ms)
            )
        except BaseException:
            # It may have run and lost its reply: drop what it took.
            self._retry(_DROP, account, (member, units, token))
            raise
        if reply[0] == 0:
            account.entry = None
            if reply[2]:
                self._locks[token] = account
                old = self._tickets.get(account.key)
                if old is not None:  # its lock lapsed, or this one wasn't ours
                    self._locks.pop(old[0].token, None)
                self._tickets[account.key] = (
                    _Ticket(token, reply[1]),
                    time.monotonic() + self.fetch_timeout,
                )
            return None
        if self._tickets:
            await self._unlock_unused(account)
        if reply[0] == 3:
            entry = None
        else:
            entry = self._entry(account, *reply[1:5])
            if reply[0] == 1:
                return Short(entry, _amount(reply[5]))
        account.held += amount
        live = self._live.get(account.key)
        if live is None:
            live = self._live[account.key] = (account, {})
        live[1][member] = amount
        self._start_renewer()
        return Hold(account, amount, entry, member)

    async def _unlock_unused(self, account: Account) -> None:
        # A balance is there: nobody will fetch with the lock a miss took, so
        # let other processes fetch when they need to rather than wait for it.
        ticket = self._tickets.pop(account.key, None)
        if ticket is not None:
            self._locks.pop(ticket[0].token, None)
            with contextlib.suppress(BalanceUnavailable):
                await self._run(_UNLOCK, account, (ticket[0].token,))

    async def begin_fetch(self, account: Account) -> object:
        ticket = self._tickets.pop(account.key, None)
        now = time.monotonic()
        if ticket is not None:
            if ticket[1] > now:
                return ticket[0]
            self._locks.pop(ticket[0].token, None)  # lapsed
        # Wait for another process's fetch at most fetch_timeout: by then the
        # lock it took before this wait began has lapsed, if it died.
        deadline = now + self.fetch_timeout
        seen = "*"
        delay = 0.005
        while True:
            token = _new_id()
            reply = await self._run(_BEGIN, account, (token, self.lock_ms, seen))
            if reply[0] == 1:
                self._locks[token] = account
                return _Ticket(token, reply[1])
            if reply[0] == 2:
                return self._entry(account, *reply[1:])
            if seen == "*":
                seen = reply[1]
            # Another process fetches: wait for its value, or for its lock to
            # lapse if it died; look a last time at the deadline.
            left = deadline - time.monotonic()
            if left <= 0:
                raise BalanceUnavailable(
                    f"no balance within {self.fetch_timeout:g} s: another "
                    "process is fetching it",
                    provider=account.provider.name,
                )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)

    async def abort_fetch(self, account: Account, token: object) -> None:
        assert isinstance(token, _Ticket)
        self._locks.pop(token.token, None)
        # On failure the lock lapses on its own.
        with contextlib.suppress(BalanceUnavailable):
            await self._run(_UNLOCK, account, (token.token,))

    async def put(
        self, account: Account, amount: Decimal, token: object
    ) -> Entry | None:
        assert isinstance(token, _Ticket)
        self._locks.pop(token.token, None)
        units = _units(amount, ROUND_FLOOR)
        fetch_id = _new_id()
        reply = await self._run(
            _PUT,
            account,
            (token.generation, units, fetch_id, self.ttl_ms, token.token),
        )
        if reply[0] == 0:
            return None
        return self._entry(account, *reply[1:])

    async def release(self, hold: Hold, *, debit: bool) -> None:
        account = hold.account
        live = self._live.get(account.key)
        if live is not None and hold.token in live[1]:
            del live[1][hold.token]
            account.held -= hold.amount
            if not live[1]:
                del self._live[account.key]
        fetch_id = "" if hold.entry is None else hold.entry.fetch_id
        units = hold.token.rpartition(":")[2]
        args = (hold.token, units, int(debit), fetch_id)
        try:
            await self._release(account, args)
        except asyncio.CancelledError:
            # Cut short on its way, it may not have run: finish it in a task
            # of the store's rather than leave the hold behind for a lease.
            task = asyncio.get_running_loop().create_task(self._release(account, args))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            raise

    async def _release(self, account: Account, args: tuple[str | int, ...]) -> None:
        try:
            await self._run(_RELEASE, account, args)
        except BalanceUnavailable as exc:
            # Tried again until the hold's lease ends; then whichever script
            # prunes it invalidates the balance.
            self._retry(_RELEASE, account, args)
            log.warning(
                "%s: could not release a hold, retrying until it expires in %g s: %s",
                account.provider.name,
                self.lease,
                exc.reason,
            )

    async def invalidate(self, account: Account) -> None:
        account.generation += 1
        account.entry = None
        await self._run(_INVALIDATE, account, ())

    async def close(self) -> None:
        if self._closed:
            return
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            with contextlib.suppress(RuntimeError):
                self._adopt_loop()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._renewer
            self._renewer = None
        # Let the calls on their way finish (each is bounded by the timeout)
        # rather than cut them off and leave their holds behind.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=self.timeout)
        if self._busy:
            self._drained = loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._drained
        # A last try for the releases that failed.
        await self._retry_failed()
        # Let other processes fetch at once rather than when the locks lapse.
        for token, account in list(self._locks.items()):
            with contextlib.suppress(BalanceUnavailable):
                await self._run(_UNLOCK, account, (token,))
        self._locks.clear()
        self._closed = True
        while self._free:
            await self.pool.release(self._free.pop())
        await self.client.aclose()
        # Disconnects every connection, those of calls still running too.
        await self.pool.aclose()
        # aiocache 0.12's RedisCache.close() calls redis-py's deprecated
        # close(): close its client the current way instead.
        client: Any = getattr(self.cache, "client", None)
        if client is not None:
            await client.aclose()

    # -- leases ---------------------------------------------------------------

    def _retry(
        self, script: _Script, account: Account, args: tuple[str | int, ...]
    ) -> None:
        member = str(args[0])
        self._later[member] = _Later(
            script, account, args, time.monotonic() + self.lease
        )
        self._start_renewer()

    def _start_renewer(self) -> None:
        if self._closed:
            return
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        """
        Renew the running calls' holds every third of the lease, and retry
        failed releases every second, while there are any.
        """
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self.lease / 3
        while self._live or self._later:
            # Wakes at least every _RETRY seconds, for releases failing meanwhile.
            await asyncio.sleep(max(min(renew_at - loop.time(), _RETRY), 0))
            await self._retry_failed()
            if loop.time() >= renew_at:
                ok = await self._renew_holds()
                # After a failure, sooner: holds Redis lost come back quicker.
                renew_at = loop.time() + (self.lease / 3 if ok else _RETRY)

    async def _retry_failed(self) -> None:
        now = time.monotonic()
        for member, later in list(self._later.items()):
            if later.until <= now:
                del self._later[member]
                continue
            try:
                await self._run(later.script, later.account, later.args)
            except BalanceUnavailable:
                return  # Redis is still away: the rest can wait too
            if self._later.get(member) is later:
                del self._later[member]

    async def _renew_holds(self) -> bool:
        ok = True
        for account, members in list(self._live.values()):
            if not members:
                continue
            try:
                back = await self._run(_RENEW, account, (self.lease_ms, *members))
            except BalanceUnavailable as exc:
                log.warning(
                    "%s: could not renew holds: %s", account.provider.name, exc.reason
                )
                ok = False
                continue
            if not back:
                continue
            log.warning(
                "%s: %d hold(s) of running calls were gone from Redis (it lost "
                "its data, or they expired before being renewed): put back",
                account.provider.name,
                len(back),
            )
            for member in back:
                if member not in members:
                    # Released while this renewal was on its way: drop it again.
                    units = member.rpartition(":")[2]
                    self._retry(_DROP, account, (member, units, ""))
        return ok


_RETRY = 1.0  # seconds between retries while Redis is away


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
