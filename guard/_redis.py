"""
Balances and holds shared between processes through Redis.

Every account has five keys under one hash tag (so that its scripts also run
on Redis Cluster), named after the account's cache key, which carries no
secret::

    {guard:oneclickdz:<hash>}:b   hash: u (balance in units), f (fetch id),
                                  t (fetched at, server ms); expires after ttl
    {guard:oneclickdz:<hash>}:g   generation: bumped by every invalidation
                                  and debit
    {guard:oneclickdz:<hash>}:h   sorted set of holds "<id>:<units>", scored
                                  by the lease's end (server ms)
    {guard:oneclickdz:<hash>}:s   sum of the holds' units
    {guard:oneclickdz:<hash>}:l   the fetch lock: one process fetches

Amounts are integers of 1/10,000 of the currency unit: a balance is rounded
down and a hold up, so rounding never lets a call through. Every change is a
Lua script, so it is atomic, and every script is idempotent when it is sent
again after a lost connection.

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
  redis.call('INCR', KEYS[2])
  redis.call('DEL', KEYS[1])
end
"""

# ARGV: units, id (the hold is "<id>:<units>", the lock's token is the id),
# lease ms, lock ms. Returns {0, generation, got_lock} on a miss, else
# {1 short | 2 held, balance units, fetch id, fetched at ms, age ms,
# available units}.
_HOLD = _Script(
    _PRUNE
    + """
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if not b[1] then
  -- A resent script finds the lock its first run took.
  local got = redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[4])
    or redis.call('GET', KEYS[5]) == ARGV[2]
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), got and 1 or 0}
end
local avail = tonumber(b[1]) - tonumber(redis.call('GET', KEYS[4]) or '0')
local need = tonumber(ARGV[1])
if avail < need then return {1, b[1], b[2], b[3], now - tonumber(b[3]), avail} end
if redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[2] .. ':' .. ARGV[1])
    == 1 then
  redis.call('INCRBY', KEYS[4], need)
end
return {2, b[1], b[2], b[3], now - tonumber(b[3]), avail}
"""
)

# ARGV: hold, its units, debit (1/0), fetch id held against. Returns 1 when
# debited, 0 when invalidated. A hold already gone (its lease ended and it
# was pruned) is not debited: the prune invalidated the balance.
_RELEASE = _Script(
    """
local removed = redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 and redis.call('DECRBY', KEYS[4], ARGV[2]) < 0 then
  redis.call('DEL', KEYS[4])
end
redis.call('INCR', KEYS[2])
if removed == 1 and ARGV[3] == '1'
    and redis.call('HGET', KEYS[1], 'f') == ARGV[4] then
  redis.call('HINCRBY', KEYS[1], 'u', -tonumber(ARGV[2]))
  return 1
end
redis.call('DEL', KEYS[1])
return 0
"""
)

# ARGV: lease ms, holds... Returns how many holds had already expired.
_RENEW = _Script(
    _PRUNE
    + """
local lost = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[3], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i]) == 0
      and not redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    lost = lost + 1
  end
end
return lost
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
if tonumber(redis.call('GET', KEYS[2]) or '0') == tonumber(ARGV[1]) then
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
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if b[1] and ARGV[3] ~= '*' and b[2] ~= ARGV[3] then
  return {2, b[1], b[2], b[3], now - tonumber(b[3])}
end
if redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2])
    or redis.call('GET', KEYS[5]) == ARGV[1] then
  return {1, tonumber(redis.call('GET', KEYS[2]) or '0')}
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
    """
redis.call('INCR', KEYS[2])
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

    def __init__(self, token: str, generation: int) -> None:
        self.token = token
        self.generation = generation


class RedisStore:
    """
    Balances and holds in Redis, shared by every process using the same
    server and namespace.

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
        source: Any = cache.client.connection_pool
        settings = source.connection_kwargs
        timeout = float(getattr(cache, "timeout", None) or 5.0)
        # Bounds each Redis call as a whole: waiting for a connection, sending,
        # the reply, and the one retry.
        self.timeout = min(timeout, fetch_timeout)
        pool_size = getattr(cache, "pool_max_size", None) or 64
        self.pool = aioredis.BlockingConnectionPool(
            max_connections=pool_size,
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
        self.client = aioredis.Redis(connection_pool=self.pool)
        # Connections taken from the pool and kept for the scripts: checking
        # one out of redis-py's pool and back costs a fifth of a GET. At most
        # pool_size of them are in use; more calls wait for one.
        self._free: list[Any] = []
        self._slots = asyncio.Semaphore(pool_size)
        prefix = getattr(cache, "namespace", None) or ""
        self._prefix = f"{prefix}:" if prefix else ""
        self._keys: dict[str, tuple[str, str, str, str, str]] = {}
        # "EVALSHA <sha> 5 <keys>" packed, by script and account.
        self._packed: dict[tuple[_Script, str], bytes] = {}
        # Locks taken by a missed try_hold, for the fetch that follows it.
        self._tickets: dict[str, tuple[_Ticket, float]] = {}
        # Holds of this process's running calls, renewed in the background.
        self._live: dict[str, tuple[Account, dict[str, None]]] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Fetch locks this store holds, given back when it closes.
        self._locks: dict[str, Account] = {}

    def __repr__(self) -> str:
        return f"<RedisStore lease={self.lease:g}>"

    # -- plumbing -------------------------------------------------------------

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
        raise BalanceUnavailable(
            f"cache unavailable: {reason}", provider=account.provider.name
        ) from None

    async def _call(self, command: bytes) -> Any:
        """
        Send one packed command on a pooled connection and return its reply.

        A lost connection is replaced and the command sent once more, as
        redis-py does: the scripts are idempotent.
        """
        async with self._slots:
            if self._free:
                conn = self._free.pop()
            else:
                pool: Any = self.pool  # get_connection is untyped
                conn = await pool.get_connection()
            try:
                try:
                    await conn.send_packed_command(command)
                    return await conn.read_response()
                except (RedisConnectionError, RedisTimeoutError):
                    # Sending or reading disconnected it (as any failure or
                    # cancellation does): the next send connects again.
                    await conn.send_packed_command(command)
                    return await conn.read_response()
            finally:
                self._free.append(conn)

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
        reply = await self._run(
            _HOLD, account, (units, token, self.lease_ms, self.lock_ms)
        )
        if reply[0] == 0:
            account.entry = None
            if reply[2]:
                self._locks[token] = account
                self._tickets[account.key] = (
                    _Ticket(token, int(reply[1])),
                    time.monotonic() + self.fetch_timeout,
                )
            return None
        entry = self._entry(account, *reply[1:5])
        if reply[0] == 1:
            return Short(entry, _amount(reply[5]))
        account.held += amount
        member = f"{token}:{units}"
        live = self._live.get(account.key)
        if live is None:
            live = self._live[account.key] = (account, {})
        live[1][member] = None
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return Hold(account, amount, entry, member)

    async def begin_fetch(self, account: Account) -> object:
        ticket = self._tickets.pop(account.key, None)
        if ticket is not None and ticket[1] > time.monotonic():
            return ticket[0]
        seen = "*"
        loop = asyncio.get_running_loop()
        # Long enough to see the lock of a fetcher that died lapse.
        deadline = loop.time() + self.lock_ms / 1000 + 0.5
        delay = 0.005
        while True:
            token = _new_id()
            reply = await self._run(_BEGIN, account, (token, self.lock_ms, seen))
            if reply[0] == 1:
                self._locks[token] = account
                return _Ticket(token, int(reply[1]))
            if reply[0] == 2:
                return self._entry(account, *reply[1:])
            if seen == "*":
                seen = reply[1]
            # Another process fetches: wait for its value, or for its lock to
            # lapse if it died.
            if loop.time() + delay > deadline:
                raise BalanceUnavailable(
                    f"no balance within {self.fetch_timeout:g} s: another "
                    "process is fetching it",
                    provider=account.provider.name,
                )
            await asyncio.sleep(delay)
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
        fetch_id = "" if hold.entry is None else hold.entry.fetch_id
        units = hold.token.rpartition(":")[2]
        try:
            await self._run(
                _RELEASE, account, (hold.token, units, int(debit), fetch_id)
            )
        except BalanceUnavailable as exc:
            # No longer renewed, the hold ends with its lease, and whichever
            # script prunes it then invalidates the balance.
            log.warning(
                "%s: could not release a hold, it expires in %g s: %s",
                account.provider.name,
                self.lease,
                exc.reason,
            )

    async def invalidate(self, account: Account) -> None:
        account.generation += 1
        account.entry = None
        await self._run(_INVALIDATE, account, ())

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._renewer
            self._renewer = None
        # Let other processes fetch at once rather than when the locks lapse.
        for token, account in list(self._locks.items()):
            with contextlib.suppress(BalanceUnavailable):
                await self._run(_UNLOCK, account, (token,))
        self._locks.clear()
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

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            for key, (account, members) in list(self._live.items()):
                if not members:
                    del self._live[key]
                    continue
                try:
                    lost = await self._run(_RENEW, account, (self.lease_ms, *members))
                except BalanceUnavailable as exc:
                    log.warning(
                        "%s: could not renew holds: %s",
                        account.provider.name,
                        exc.reason,
                    )
                    continue
                if lost:
                    log.warning(
                        "%s: %d hold(s) of running calls expired before being renewed",
                        account.provider.name,
                        lost,
                    )


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
