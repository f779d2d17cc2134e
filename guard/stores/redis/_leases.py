"""
Leases: the holds of this process's running calls, renewed in the
background, and the scripts that must still reach Redis after their caller
has gone.

A hold lives for a lease and is renewed every third of it while its call
runs. Renewal puts back a running call's hold that is gone (Redis lost its
data, or the hold's lease ended while this process could not reach Redis)
and invalidates the balance, which may have been fetched without it.

A release cut short by its caller's cancellation, and the drop of a hold
whose check failed or was cancelled, run at once in a task of the store's.
One that cannot reach Redis is tried again every second until the hold's
lease ends (then whichever script prunes it invalidates the balance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from ..._logs import digest, fields
from ..._money import MONEY, ZERO
from ...errors import BalanceUnavailable
from ._scripts import DROP, RELEASE, RENEW, Script

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from decimal import Decimal
    from typing import Any

    from .._values import Account
    from ._wire import Wire

__all__ = ["Leases"]

log = logging.getLogger("guard")

RETRY = 1.0  # seconds between retries while Redis is away


class _Live:
    """
    One account's holds of running calls: members and amounts, and their sum.
    """

    __slots__ = ("account", "held", "members")

    def __init__(self, account: Account) -> None:
        self.account = account
        self.members: dict[str, Decimal] = {}
        self.held = ZERO


class _Later:
    """
    A script that failed to run and is tried again by the renewer until
    *until* (monotonic): a release, or the drop of a hold whose check
    failed. Past *until* the hold's lease has ended anyway.
    """

    __slots__ = ("account", "args", "script", "until")

    def __init__(
        self,
        script: Script,
        account: Account,
        args: tuple[str | int, ...],
        until: float,
    ) -> None:
        self.script = script
        self.account = account
        self.args = args
        self.until = until


class Leases:
    """
    The running calls' holds of one store, and the renewer that keeps them.

    It also knows, per account, the epoch of Redis's data that the holds
    were made in (see the scripts' ``_EPOCH``): a renewal or a check that
    finds another one tells that Redis lost its data.

    Args:
        wire: Where the scripts run.
        keys: An account's keys.
        lease: Seconds a hold lives unless renewed.
        window_ms: After a loss of Redis's data, how long checks admit
            nothing (ms), for the holds of running calls to come back.
    """

    def __init__(
        self,
        wire: Wire,
        keys: Callable[[Account], tuple[str, ...]],
        *,
        lease: float,
        window_ms: int,
    ) -> None:
        self._wire = wire
        self._keys = keys
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self.window_ms = window_ms
        self._live: dict[str, _Live] = {}
        # Releases and drops that failed, by hold: the renewer retries them.
        self._later: dict[str, _Later] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Scripts the store finishes for callers that left.
        self._tasks: set[asyncio.Task[None]] = set()
        # The epoch of Redis's data each account was last seen in.
        self.epochs: dict[str, str] = {}
        self.losses = 0
        self.closed = False

    # -- holds ----------------------------------------------------------------

    def add(self, account: Account, member: str, amount: Decimal) -> None:
        """
        Count a running call's hold (no await: nothing can cut it short).
        """
        live = self._live.get(account.key)
        if live is None:
            live = self._live[account.key] = _Live(account)
        live.members[member] = amount
        live.held = MONEY.add(live.held, amount)
        self._start_renewer()

    def remove(self, account: Account, member: str) -> None:
        """
        Stop counting and renewing a hold; a hold not counted is ignored.
        """
        live = self._live.get(account.key)
        if live is None or member not in live.members:
            return
        live.held = MONEY.subtract(live.held, live.members.pop(member))
        if not live.members:
            del self._live[account.key]

    def held(self, account: Account) -> Decimal:
        live = self._live.get(account.key)
        return ZERO if live is None else live.held

    # -- the epoch ------------------------------------------------------------

    def saw_epoch(self, account: Account, epoch: str) -> None:
        """
        Note the epoch a script reported; another than the one known means
        Redis lost its data.
        """
        known = self.epochs.get(account.key)
        self.epochs[account.key] = epoch
        if known is not None and known != epoch:
            self.losses += 1
            log.warning(
                "%s: Redis lost guard's data (a restart without persistence, a "
                "flush or a failover): admitting nothing for %g s, until the "
                "holds of running calls are renewed",
                account.provider,
                self.window_ms / 1000,
                extra=fields(
                    "redis_data_lost",
                    provider=account.provider,
                    account=digest(account.key),
                    seconds=self.window_ms / 1000,
                ),
            )

    # -- scripts finished for callers that left ---------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """
        Run *coro* now in a task of the store's, whoever waits for it.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def release(
        self, account: Account, args: tuple[str | int, ...], *, owned: bool = False
    ) -> None:
        """
        Run a release; if Redis can't be reached, retry it until the lease ends.

        *owned*: it runs in a task of the store's, cancelled only when its
        loop ends; then it is retried too. (A caller's cancellation is the
        caller's to handle: retrying it as well would send it twice, and the
        second would invalidate a debited balance.)
        """
        try:
            await self._wire.run(
                RELEASE, account, self._keys(account), args, durable=True
            )
        except BalanceUnavailable as exc:
            self.retry(RELEASE, account, args)
            log.warning(
                "%s: could not release a hold, retrying until it expires in %g s: %s",
                account.provider,
                self.lease,
                exc.reason,
                extra=fields(
                    "release_retried",
                    provider=account.provider,
                    account=digest(account.key),
                    seconds=self.lease,
                    reason=exc.reason,
                ),
            )
        except asyncio.CancelledError:
            if owned:
                self.retry(RELEASE, account, args)
            raise

    def released(
        self,
        account: Account,
        args: tuple[str | int, ...],
        reply: object,
        error: BaseException | None,
    ) -> None:
        """
        The end of a release sent in the background: if it failed, send it
        again at once in a task of the store's (then retried until the
        lease ends, as any release), or, the store closing, on its last try.
        """
        if error is None:
            return
        if not self.closed:
            try:
                self.spawn(self.release(account, args, owned=True))
                return
            except RuntimeError:  # no running loop
                pass
        self.retry(RELEASE, account, args)

    async def drop(self, account: Account, args: tuple[str | int, ...]) -> None:
        """
        Drop a hold (and lock) that a check that failed may have made.
        """
        try:
            await self._wire.run(DROP, account, self._keys(account), args)
        except (BalanceUnavailable, asyncio.CancelledError):
            self.retry(DROP, account, args)
            raise

    def drop_soon(self, account: Account, args: tuple[str | int, ...]) -> None:
        """
        Drop a hold a check may have made, at once, in a task of the store's.
        """
        try:
            self.spawn(_quietly(self.drop(account, args)))
        except RuntimeError:  # no running loop
            self.retry(DROP, account, args)

    # -- retries and renewal --------------------------------------------------

    def retry(
        self, script: Script, account: Account, args: tuple[str | int, ...]
    ) -> None:
        member = str(args[0])
        self._later[member] = _Later(
            script, account, args, time.monotonic() + self.lease
        )
        self._start_renewer()

    def _start_renewer(self) -> None:
        if self.closed:
            return
        if self._renewer is None or self._renewer.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # started by the next call
                return
            self._renewer = loop.create_task(self._renew())

    async def _renew(self) -> None:
        """
        Renew the running calls' holds every third of the lease, and retry
        failed releases every second, while there are any.
        """
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self.lease / 3
        while True:
            # Wakes at least every RETRY seconds, for releases failing
            # meanwhile. Checked after the sleep: a hold released at once
            # (the common case) doesn't cost a task per call.
            await asyncio.sleep(max(min(renew_at - loop.time(), RETRY), 0))
            if not self._live and not self._later:
                return
            await self.retry_failed()
            if loop.time() >= renew_at:
                ok = await self._renew_holds()
                # After a failure, sooner: holds Redis lost come back quicker.
                renew_at = loop.time() + (self.lease / 3 if ok else RETRY)

    async def retry_failed(self) -> None:
        now = time.monotonic()
        for member, later in list(self._later.items()):
            if later.until <= now:
                del self._later[member]
                continue
            account = later.account
            try:
                await self._wire.run(
                    later.script, account, self._keys(account), later.args
                )
            except BalanceUnavailable:
                return  # Redis is still away: the rest can wait too
            if self._later.get(member) is later:
                del self._later[member]

    async def _renew_holds(self) -> bool:
        ok = True
        for live in list(self._live.values()):
            if not live.members:
                continue
            account = live.account
            known = self.epochs.get(account.key, "")
            args: tuple[str | int, ...] = (
                self.lease_ms,
                known,
                self.window_ms,
                *live.members,
            )
            try:
                back = await self._wire.run(RENEW, account, self._keys(account), args)
            except BalanceUnavailable as exc:
                log.warning(
                    "%s: could not renew holds: %s",
                    account.provider,
                    exc.reason,
                    extra=fields(
                        "renew_failed",
                        provider=account.provider,
                        account=digest(account.key),
                        reason=exc.reason,
                    ),
                )
                ok = False
                continue
            self.saw_epoch(account, back[0])
            if len(back) == 1:
                continue
            log.warning(
                "%s: %d hold(s) of running calls were gone from Redis (it lost "
                "its data, or they expired before being renewed): put back",
                account.provider,
                len(back) - 1,
                extra=fields(
                    "holds_restored",
                    provider=account.provider,
                    account=digest(account.key),
                    holds=len(back) - 1,
                ),
            )
            for member in back[1:]:
                if member not in live.members:
                    # Released while this renewal was on its way: drop it again.
                    units = member.rpartition(":")[2]
                    self.retry(DROP, account, (member, units, "", self.lease_ms))
        return ok

    # -- loops, forks, closing ------------------------------------------------

    def after_new_loop(self) -> None:
        """
        The store moved to a new event loop: the old loop's calls that never
        settled are over, and what they spent is unknown. Release their
        holds without a debit, from the new loop.
        """
        self._renewer = None
        self._tasks = set()
        for live in self._live.values():
            for member in live.members:
                units = member.rpartition(":")[2]
                self.retry(RELEASE, live.account, (member, units, "forget", ""))
        self._live.clear()

    def after_fork(self) -> None:
        """
        In a forked child: the holds, retries and tasks are the parent's,
        whose calls settle them; forget them.
        """
        self._live = {}
        self._later = {}
        self._renewer = None
        self._tasks = set()

    async def stop(self, grace: float) -> None:
        """
        Stop renewing (the store is closing), and let the scripts on their
        way finish, for at most *grace* s.
        """
        self.closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._renewer
            self._renewer = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)


async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
    # Its failure is handled (retried later) by the coroutine itself.
    with contextlib.suppress(BalanceUnavailable, asyncio.CancelledError):
        await coro
