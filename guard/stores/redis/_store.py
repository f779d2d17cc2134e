"""
`RedisStore`: the `guard.typing.Store` Protocol on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import os
import secrets
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any

from ...errors import BalanceUnavailable
from .._values import Account, Entry, Hold, Outcome, Short, Ticket
from ._held import HELD
from ._leases import RETRY, Leases
from ._scripts import (
    BEGIN,
    HOLD,
    INVALIDATE,
    PUT,
    READ,
    RELEASE,
    TICKET,
    UNLOCK,
    amount_of,
    ceil_units,
    floor_units,
    keys_of,
)
from ._target import target_of
from ._wire import Wire

if TYPE_CHECKING:
    from decimal import Decimal


__all__ = ["RedisStore"]


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


class RedisStore:
    """
    Balances and holds in Redis, shared by every process using the same
    server and namespace.

    Amounts are integers of 1/10,000 of the currency unit: a balance is
    rounded down and a hold up, so rounding never lets a call through.

    A hold lives for a lease and is renewed every third of it while its call
    runs; a dead process's holds lapse with their lease. A check that fails
    or is cancelled, whatever it awaited, leaves no hold: what it may have
    held is dropped at once by a task of the store's. A release cut short by
    its caller's cancellation is finished the same way (sent again: at worst
    it invalidates instead of debiting). One that cannot reach Redis is
    tried again every second until the hold's lease ends.

    **A settle is not waited for** (``settle="debit"`` or ``"refresh"``, not
    with *replicas*): leaving a guarded block sends the release and returns
    at once. Concurrent calls of a process share one connection per Redis
    node, and what they send in one turn of the event loop goes out in one
    write; so the release reaches Redis before anything this process sends
    on that account after it (the next check, ``guard.balance()``), unless
    that connection is lost in between. Until it lands, other processes see
    the call's amount still held, never more money than there is: the hold
    keeps it reserved. One that fails is sent again, then retried every
    second until the hold's lease ends; `close` waits for those on their
    way. ``held()`` no longer counts the call as soon as its block is left.

    **When Redis loses its data** (a restart without persistence, a
    ``FLUSHALL``, a failover that lost writes), the holds of calls still
    running are gone until their processes' next renewal puts them back.
    The account's epoch key is gone too: the first script of a process that
    knew the old epoch marks the new one as following a loss, and for a
    renewal period (a third of the lease, at least a second: renewals that
    failed are retried every second) and half a second after it was made,
    no process admits a call on that account (checks wait, within the fetch timeout,
    or fail with `guard.BalanceUnavailable`). Each loss is counted
    (`data_losses`) and logged as a WARNING once per account. A process
    that never used the account before the loss, and touches it first,
    can't tell a loss from a new account; when every process sharing the
    account had used it, none admits in that window. Processes sharing a
    namespace should use the same lease. A fetch that began before the loss
    is never stored after it.

    It belongs to the event loop it is used on. Used on another once that
    one has ended, it drops the old loop's connections and starts afresh,
    releasing (without a debit) the holds of calls that loop never settled.
    In a child process after ``os.fork()``, it forgets the parent's loop,
    connections and holds (the parent's calls settle those) and connects
    afresh on first use.

    Args:
        redis: Where: a redis-py asyncio client (``redis.asyncio.Redis``,
            ``redis.asyncio.RedisCluster``, or ``Sentinel(...).master_for(name)``),
            a URL (``redis://``, ``rediss://``, ``unix://``), or an
            ``aiocache.RedisCache``. Its connection settings (address,
            db, credentials, TLS) are used for pools of the store's own,
            bounded and blocking; the client itself is left to its owner,
            but a ``RedisCache``'s client is closed with the store. A
            ``RedisCache``'s timeout (else 5 s, at most *fetch_timeout*)
            bounds each Redis call as a whole: the wait for a connection,
            the replies and the retries.
        ttl: Seconds a fetched balance is trusted.
        lease: Seconds a hold lives unless renewed. Holds of running calls are
            renewed every third of it; those of a dead process expire.
        fetch_timeout: Seconds a fetch may take: the fetch lock's lease and
            how long other processes wait for its result.
        replicas: After each hold and release, wait until this many replicas
            acknowledge it (Redis ``WAIT``), so that a failover keeps it; a
            hold not acknowledged within *replica_timeout* is dropped and
            the call is refused as `guard.BalanceUnavailable`. 0 (the
            default): don't wait.
        replica_timeout: Seconds to wait for the replicas.

    Raises:
        TypeError: *redis* is none of those.
        ValueError: A URL of another scheme.
    """

    def __init__(
        self,
        redis: object,
        *,
        ttl: float = 30.0,
        lease: float = 60.0,
        fetch_timeout: float = 10.0,
        replicas: int = 0,
        replica_timeout: float = 0.1,
    ) -> None:
        target = target_of(redis)
        self.cache = redis
        self.ttl = ttl
        self.ttl_ms = max(1, round(ttl * 1000))
        self.lease = lease
        self.fetch_timeout = fetch_timeout
        self.lock_ms = max(1, round(fetch_timeout * 1000))
        # Bounds each Redis call as a whole: waiting for a connection, sending,
        # the replies, and the retries.
        self.timeout = min(target.timeout or 5.0, fetch_timeout)
        self._wire = Wire(
            target,
            timeout=self.timeout,
            size=getattr(redis, "pool_max_size", None) or 64,
            replicas=replicas,
            replica_timeout=replica_timeout,
            on_new_loop=self._on_new_loop,
        )
        self._leases = Leases(
            self._wire,
            self._keys,
            lease=lease,
            # One renewal period (a second, after a failed one), and time
            # for the renewals to reach Redis.
            window_ms=round(max(lease / 3, RETRY) * 1000) + 500,
        )
        prefix = getattr(redis, "namespace", None) or ""
        self._prefix = f"{prefix}:" if prefix else ""
        self._key_cache: dict[str, tuple[str, ...]] = {}
        # Locks taken by a missed try_hold, for the fetch that follows it,
        # with their end (monotonic).
        self._tickets: dict[str, tuple[Ticket, float]] = {}
        # Fetch locks this store holds, given back when it closes.
        self._locks: dict[str, Account] = {}
        self._closed = False
        _STORES.add(self)

    def __repr__(self) -> str:
        return f"<RedisStore ttl={self.ttl:g} lease={self.lease:g}>"

    @property
    def client(self) -> Any:
        """
        The store's redis-py client, on its pool: for guard's own parts that
        keep per-account state beside the store's (the low-balance alerts),
        tests and benchmarks.
        """
        return self._wire.client

    @property
    def key_prefix(self) -> str:
        """
        What the store's keys put before the account key inside their hash
        tag (the cache's namespace and a colon, or nothing): a key of one's
        own named ``{<key_prefix><account key>}:...`` shares the account's
        Redis Cluster slot.
        """
        return self._prefix

    @property
    def data_losses(self) -> int:
        """
        How many times this store found that Redis had lost an account's data.
        """
        return self._leases.losses

    def _keys(self, account: Account) -> tuple[str, ...]:
        keys = self._key_cache.get(account.key)
        if keys is None:
            keys = self._key_cache[account.key] = keys_of(self._prefix, account.key)
        return keys

    async def _run(
        self,
        script: Any,
        account: Account,
        args: tuple[Any, ...],
        *,
        durable: bool = False,
    ) -> Any:
        return await self._wire.run(
            script, account, self._keys(account), args, durable=durable
        )

    def _entry(
        self, units: str, fetch_id: str, fetched_ms: str | int, age_ms: int
    ) -> Entry:
        # Times come from the Redis server's clock, shared by every host.
        return Entry(
            amount_of(units),
            fetch_id,
            dt.datetime.fromtimestamp(int(fetched_ms) / 1000, dt.UTC),
            time.monotonic() - max(int(age_ms), 0) / 1000,
            exact=not fetch_id.endswith("~"),
        )

    # -- the Store protocol -----------------------------------------------------

    async def read(self, account: Account) -> Entry | None:
        reply = await self._run(READ, account, ())
        if not reply:
            return None
        return self._entry(*reply)

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        units = ceil_units(amount)
        leases = self._leases
        deadline = None
        while True:
            token = _new_id()
            member = f"{token}:{units}"
            known = leases.epochs.get(account.key, "")
            args = (
                units,
                token,
                leases.lease_ms,
                self.lock_ms,
                known,
                leases.window_ms,
            )
            try:
                reply = await self._run(HOLD, account, args, durable=True)
            except BaseException:
                # It may have held, its reply lost or its caller gone: drop
                # what it took now, not at the renewer's next tick.
                leases.drop_soon(account, (member, units, token, leases.lease_ms))
                raise
            if reply[1]:
                leases.saw_epoch(account, reply[1])
            if reply[0] != 4:
                break
            # Redis lost its data: wait for the running calls' holds to
            # come back (nothing is held meanwhile).
            wait = int(reply[2]) / 1000
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.fetch_timeout
            if now + wait > deadline:
                raise BalanceUnavailable(
                    "Redis lost its data: admitting nothing until the running "
                    f"calls' holds are back, in {wait:.1f} s",
                    provider=account.provider,
                    retry_after=wait,
                )
            await asyncio.sleep(wait)
        # From here on, no await: a cancellation can't come between the
        # hold in Redis and counting it here.
        code = reply[0]
        if code == 0:
            if reply[3]:
                ticket = Ticket(token, reply[2])
                self._locks[token] = account
                old = self._tickets.get(account.key)
                if old is not None:  # its lock lapsed, or this one wasn't ours
                    self._locks.pop(old[0].token, None)
                self._tickets[account.key] = (
                    ticket,
                    time.monotonic() + self.fetch_timeout,
                )
            return None
        if code == 5:  # dropped before it ran: never seen by a caller
            raise BalanceUnavailable(
                "cache unavailable: the check was dropped", provider=account.provider
            )
        if self._tickets:
            self._unlock_unused(account)
        if code == 3:
            entry = None
        else:
            entry = self._entry(*reply[2:6])
            if code == 1:
                return Short(entry, amount_of(reply[6]))
        leases.add(account, member, amount)
        return Hold(account, amount, entry, member)

    def _unlock_unused(self, account: Account) -> None:
        # A balance is there: nobody will fetch with the lock a miss took, so
        # let other processes fetch when they need to rather than wait for it.
        # In a task: the check itself must not await after its hold.
        ticket = self._tickets.pop(account.key, None)
        if ticket is not None:
            self._locks.pop(ticket[0].token, None)
            self._leases.spawn(self._unlock(account, ticket[0].token))

    async def _unlock(self, account: Account, token: str) -> None:
        # On failure the lock lapses on its own.
        with contextlib.suppress(BalanceUnavailable):
            await self._run(UNLOCK, account, (token,))

    def held(self, account: Account) -> Decimal:
        return self._leases.held(account)

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
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
            ticket = self._tickets.pop(account.key, None)
            if ticket is not None:
                if ticket[1] > time.monotonic():
                    # Another call of this process took the lock meanwhile
                    # (its check missed) and joined this fetch: it is ours.
                    return ticket[0]
                self._locks.pop(ticket[0].token, None)  # lapsed
            token = _new_id()
            reply = await self._run(BEGIN, account, (token, self.lock_ms, seen))
            if reply[0] == 1:
                self._locks[token] = account
                return Ticket(token, reply[1])
            if reply[0] == 2:
                return self._entry(*reply[1:])
            if seen == "*":
                seen = reply[1]
            # Another process fetches: wait for its value, or for its lock to
            # lapse if it died; look a last time at the deadline.
            left = deadline - time.monotonic()
            if left <= 0:
                raise BalanceUnavailable(
                    f"no balance within {self.fetch_timeout:g} s: another "
                    "process is fetching it",
                    provider=account.provider,
                )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)

    async def ticket(self, account: Account) -> Ticket:
        # Lock-free: no leave to fetch is taken, so the token is empty and
        # PUT has no lock to drop.
        reply = await self._run(TICKET, account, ())
        return Ticket("", str(reply))

    async def abort_fetch(self, account: Account, ticket: Ticket) -> None:
        self._locks.pop(ticket.token, None)
        await self._unlock(account, ticket.token)

    async def put(
        self, account: Account, amount: Decimal, ticket: Ticket
    ) -> Entry | None:
        self._locks.pop(ticket.token, None)
        args = (
            ticket.generation,
            floor_units(amount),
            _new_id(),
            self.ttl_ms,
            ticket.token,
        )
        reply = await self._run(PUT, account, args)
        if reply[0] == 0:
            return None
        return self._entry(*reply[1:])

    def release_now(self, hold: Hold, outcome: Outcome) -> bool:
        """
        `release` without awaiting Redis's reply: the script is sent on the
        connection this process's scripts on the account share, so it runs
        before any of them sent after it (``guard.balance()``, the next
        check) and the hold keeps the amount out of every process's reach
        until it has. One that fails is sent again (see `release`), and
        `close` waits for those on their way. False when `release` must be
        awaited: a ``"forget"`` (calls woken by the same fetch check first),
        writes that wait for replicas, or no shared connection yet.
        """
        if outcome == "forget":
            return False
        account = hold.account
        args = _release_args(hold, outcome)
        leases = self._leases
        done = functools.partial(leases.released, account, args)
        if not self._wire.run_soon(RELEASE, account, self._keys(account), args, done):
            return False
        leases.remove(account, hold.token)
        return True

    async def release(self, hold: Hold, *, outcome: Outcome) -> None:
        account = hold.account
        # Before the first await: a cancellation can't leave it counted.
        self._leases.remove(account, hold.token)
        args = _release_args(hold, outcome)
        try:
            await self._leases.release(account, args)
        except asyncio.CancelledError:
            # Cut short on its way, it may not have run: finish it in a task
            # of the store's rather than leave the hold behind for a lease.
            self._leases.spawn(self._leases.release(account, args, owned=True))
            raise

    async def invalidate(self, account: Account) -> None:
        await self._run(INVALIDATE, account, ())

    async def close(self) -> None:
        if self._closed:
            return
        wire = self._wire
        if wire.loop is not None and wire.loop is not asyncio.get_running_loop():
            with contextlib.suppress(RuntimeError):
                wire.adopt_loop()
        # Let the calls on their way finish (each is bounded by the timeout)
        # rather than cut them off and leave their holds behind.
        deadline = asyncio.get_running_loop().time() + self.timeout
        await self._leases.stop(self.timeout)
        await wire.drain(deadline)
        # A last try for the releases that failed.
        await self._leases.retry_failed()
        # Let other processes fetch at once rather than when the locks lapse.
        for token, account in list(self._locks.items()):
            await self._unlock(account, token)
        self._locks.clear()
        self._closed = True
        await wire.close()

    # -- the operating views ------------------------------------------------------

    async def held_everywhere(self, account: Account) -> Decimal:
        """
        Return the sum held by the running calls of every process sharing
        this store (holds whose lease has not ended), as Redis has it now.

        Raises:
            BalanceUnavailable: Redis did not answer within the timeout.

        .. versionadded:: 0.2
        """
        return amount_of(await self._run(HELD, account, ()))

    # -- loops and forks ----------------------------------------------------------

    def _on_new_loop(self) -> None:
        self._leases.after_new_loop()

    def _after_fork(self) -> None:
        """
        Forget the parent's event loop, connections, holds and fetch locks,
        in a child process after ``os.fork()``, without touching them (their
        sockets are the parent's too). Called by an ``os.register_at_fork``
        hook of this module for every store; idempotent.
        """
        self._wire.after_fork()
        self._leases.after_fork()
        self._tickets = {}
        self._locks = {}


def _release_args(hold: Hold, outcome: Outcome) -> tuple[str, ...]:
    fetch_id = "" if hold.entry is None else hold.entry.fetch_id
    units = hold.token.rpartition(":")[2]
    return (hold.token, units, outcome, fetch_id)


_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:  # pragma: no cover - in forked children
    # A child forked from a process that already made ids would repeat them.
    _new_id.reset()
    for store in list(_STORES):
        store._after_fork()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork_in_child)
