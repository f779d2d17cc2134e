"""
The guarded call: ``reserve()`` = check -> hold -> run -> settle.

`BalanceGuard.reserve` is the one primitive; `guard.require_balance` (all
its forms), the aiohttp guarded routes and the client middleware are
layers over it. Fetching lives in ``_fetch.py``, event-loop binding in
``_loops.py``, balances and holds in the store (``guard.stores``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

from ._accounts import Accounts, Tracked
from ._catalogue import Catalogues
from ._events import EventKind, Hooks
from ._fetch import Fetcher
from ._lane import Lane
from ._logs import fields
from ._loops import HomeLoop
from ._money import MONEY, ZERO, add, to_amount
from ._options import check_settle, count, make_store, name, seconds
from ._reads import Reads
from ._reservation import Reservation, _Reserve, _ReserveOther
from .errors import (
    BalanceUnavailable,
    ConfigurationError,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
)
from .stores import FallbackStore, Hold, Short

if TYPE_CHECKING:
    from collections.abc import Iterable
    from decimal import Decimal
    from types import TracebackType

    import aiohttp
    from aiocache.base import BaseCache

    from .stores import Account, Outcome, Ticket
    from .typing import AmountLike, EventHook, History, Provider, Store

__all__ = ["BalanceGuard", "Policy", "Settle"]

log = logging.getLogger("guard")

T = TypeVar("T")

Settle: TypeAlias = Literal["refresh", "invalidate", "debit"]
Policy: TypeAlias = Literal["closed", "open"]


class BalanceGuard(Reads):
    """
    Checks, holds and settles provider balances for guarded calls.

    One guard serves any number of providers and accounts. It owns an aiohttp
    session for balance requests and its store: close it with ``async with``
    or `aclose`.

    Args:
        cache: Where balances are cached, as an aiocache cache. Default: a
            process-local ``SimpleMemoryCache``. A ``RedisCache`` shares
            balances and holds between processes (a `guard.stores.RedisStore`
            is made for it). The guard closes it when it closes.
        store: Instead of *cache*: any `guard.typing.Store`, such as a
            `guard.stores.MemoryStore` or `guard.stores.RedisStore` you
            configured. The guard closes it when it closes.
        redis: Instead of *cache*: share balances and holds through Redis,
            given as a ``redis.asyncio.Redis``, a ``redis.asyncio.RedisCluster``,
            a Sentinel-managed client (``Sentinel(...).master_for(name)``) or
            a URL (``redis://``, ``rediss://``, ``unix://``). A
            `guard.stores.RedisStore` is made for it; a client you pass is
            yours to close.
        ttl: Seconds a fetched balance is trusted (default 30), for the
            store made from *cache*; a *store* you pass has its own.
        settle: What a guarded call's end does to the cached balance.
            ``"refresh"`` (the default) takes the call's amount off it
            (failed or cancelled calls count as spent: an estimate that errs
            low) and has the provider's value fetched again in the
            background, at most once per *refresh_interval* per account; no
            call waits for that fetch. ``"invalidate"`` forgets it: the next
            call waits for a fetch. ``"debit"`` takes a successful call's
            amount off it and trusts that until *ttl* (fewest fetches); a
            failed call forgets it.
        on_unavailable: ``"closed"`` raises `BalanceUnavailable` when the
            balance cannot be learned; ``"open"`` logs a warning and lets the
            call go ahead. Refused credentials and unreadable answers raise
            either way.
        fetch_timeout: Seconds one balance fetch may take, retries included.
        retries: Transient failures retried per fetch.
        max_retry_after: Cap in seconds on a provider's ``Retry-After``.
        recheck_after: A cached balance older than this many seconds is
            fetched once more before a call is refused, so that a refill is
            seen at once.
        auth_cooldown: Seconds an account whose credentials were refused is
            not asked again (OneClickDZ blocks an IP for 15 minutes after five
            bad keys); its calls raise `ProviderAuthError` at once.
        outage_backoff: After a fetch failed for good (retries spent),
            seconds during which new fetches of that account fail at once
            with the same `BalanceUnavailable` (its ``retry_after`` says how
            long is left) instead of each asking the provider; doubled
            while the outage lasts, up to 30 s, and longer if the provider's
            ``Retry-After`` asks it. 0: ask on every fetch.
        refresh_interval: With ``settle="refresh"``, the least number of
            seconds between two background fetches of one account (2: at
            most 30 a minute under sustained traffic).
        hooks: Callables given every `GuardEvent`.
        session: An aiohttp session to fetch balances with, instead of the
            guard's own. The guard does not close it.
        namespace: Prefix of the guard's cache keys.
        lease: With a ``RedisCache``, seconds a hold outlives a process that
            died holding it (or could not reach Redis to release it). Holds
            of running calls are renewed every ``lease / 3`` seconds, so a
            call may run longer than this.
        history: Where to record every balance fetched and every settled
            call, such as a `guard.history.SQLiteHistory`; recorded off the
            hot path. Closing the guard flushes it; you close it.
    """

    def __init__(
        self,
        cache: BaseCache | None = None,
        *,
        store: Store | None = None,
        redis: object = None,
        ttl: float | None = None,
        settle: Settle = "refresh",
        on_unavailable: Policy = "closed",
        fetch_timeout: float = 10.0,
        retries: int = 2,
        max_retry_after: float = 5.0,
        recheck_after: float = 2.0,
        auth_cooldown: float = 900.0,
        outage_backoff: float = 1.0,
        refresh_interval: float = 2.0,
        hooks: Iterable[EventHook] = (),
        session: aiohttp.ClientSession | None = None,
        namespace: str = "guard",
        lease: float = 60.0,
        history: History | None = None,
    ) -> None:
        check_settle(settle)
        if on_unavailable not in ("closed", "open"):
            raise ConfigurationError(
                f"on_unavailable must be 'closed' or 'open', got {on_unavailable!r}"
            )
        self.settle_mode: Settle = settle
        self.on_unavailable: Policy = on_unavailable
        fetch_timeout = seconds("fetch_timeout", fetch_timeout)
        self.recheck_after = seconds("recheck_after", recheck_after, zero_ok=True)
        self.namespace = name("namespace", namespace)
        self._hooks = Hooks()
        for hook in hooks:
            self.add_hook(hook)
        self._store = make_store(
            cache,
            store,
            ttl=None if ttl is None else seconds("ttl", ttl),
            lease=seconds("lease", lease),
            fetch_timeout=fetch_timeout,
            redis=redis,
            # Under "open", a shared store that is down is stood in for in
            # process rather than every call let through unchecked.
            fallback=on_unavailable == "open",
        )
        if isinstance(self._store, FallbackStore):
            self._store.on_down = self._store_down
        self._fetcher = Fetcher(
            self._store,
            self._emit,
            timeout=fetch_timeout,
            retries=count("retries", retries),
            max_retry_after=seconds("max_retry_after", max_retry_after, zero_ok=True),
            auth_cooldown=seconds("auth_cooldown", auth_cooldown, zero_ok=True),
            outage_backoff=seconds("outage_backoff", outage_backoff, zero_ok=True),
            refresh_interval=seconds(
                "refresh_interval", refresh_interval, zero_ok=True
            ),
            session=session,
        )
        self._loops = HomeLoop()
        # The store's I/O-free release, for settling off the lane.
        self._release_now = getattr(self._store, "release_now", None)
        self._peek = getattr(self._store, "peek", None)
        self._last_lane: tuple[object, Lane] | None = None
        self._accounts = Accounts(self.namespace, self._new_account)
        self._catalogues = Catalogues()
        self._track = self._accounts.get
        self.closed = False
        """Whether `aclose` was called."""
        self.history = history
        """Where this guard's balances and calls are recorded, if anywhere."""
        if history is not None:
            history.attach(self)

    def _new_account(self, tracked: Tracked) -> None:
        tracked.peek = self._peek
        self._fetcher.track(tracked)

    @property
    def ttl(self) -> float:
        """Seconds a fetched balance is trusted (the store's)."""
        return self._store.ttl

    @property
    def store(self) -> Store:
        """Where this guard keeps balances and holds."""
        return self._store

    def __repr__(self) -> str:
        return (
            f"<BalanceGuard ttl={self.ttl:g} settle={self.settle_mode!r} "
            f"on_unavailable={self.on_unavailable!r} "
            f"accounts={len(self._accounts)}>"
        )

    async def __aenter__(self) -> BalanceGuard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """
        Close the guard's HTTP session and its store. Idempotent.
        """
        if not self._loops.at_home():
            await self._loops.call(self.aclose())
            return
        if self.closed:
            return
        self.closed = True
        if self.history is not None:
            await self.history.detach(self)
        await self._fetcher.aclose()
        await self._store.close()

    def add_hook(
        self, hook: EventHook, *, kinds: Iterable[EventKind] | None = None
    ) -> None:
        """
        Call *hook* with every `GuardEvent` from now on, after the hooks
        given before; with *kinds*, only with events of those kinds (a
        guarded call then makes no event no hook wants).

        Raises:
            ConfigurationError: *hook* is not a plain (not async) callable,
                or *kinds* names no event kind.
        """
        self._hooks.add(hook, kinds)

    def remove_hook(self, hook: EventHook) -> None:
        """
        Stop calling *hook* (added with `add_hook` or *hooks*); nothing if
        it is not there.
        """
        self._hooks.remove(hook)

    def reserve_unavailable(
        self,
        provider: Provider,
        error: BalanceUnavailable,
        *,
        settle: Settle | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Reservation]:
        """
        A `reserve` for a spend whose amount could not be learned (its
        price list was unreadable): with ``on_unavailable="closed"``, or
        when *error* is a `ProviderAuthError` or `ProviderResponseError`,
        entering raises *error*; with ``"open"`` the block runs unchecked,
        as when a balance cannot be learned.

        .. versionadded:: 0.2
        """
        if settle is not None:
            check_settle(settle)
        return _ReserveOther(self, provider, ZERO, settle, unavailable=error)

    async def _enter_unavailable(
        self, provider: Provider, error: BalanceUnavailable
    ) -> Reservation:
        return self._unavailable(self._track(provider), ZERO, error)

    # -- the guarded call -------------------------------------------------

    def reserve(
        self,
        provider: Provider,
        amount: AmountLike,
        *,
        settle: Settle | None = None,
        reports: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[Reservation]:
        """
        Hold *amount* on *provider*'s account for the ``async with`` block.

        ::

            async with guard.reserve(oneclick, 500) as r:
                reply = await send_topup(...)
                if reply.status >= 400:
                    r.failed()   # settle as a failure without raising

        On entry the cached balance (fetched if there is none), less what
        running calls hold, must cover *amount*; it is then held until the
        block ends. On exit, however the block ends, the hold is released
        and the cached balance settled: debited (``settle="debit"`` and the
        block neither raised nor called `Reservation.failed`) or
        invalidated.

        Args:
            provider: The account to spend from.
            amount: An ``int``, ``Decimal`` or ``str`` (a ``float`` is read
                through ``str()``).
            settle: ``"invalidate"`` or ``"debit"``; default: the guard's.

            reports: The block may call `Reservation.report_balance` with
                the balance the provider reports after the spend: the
                guard notes, before the block runs, what it needs to store
                that balance safely.

        Raises:
            AmountError: At once, for an *amount* that is not a
                non-negative finite number.
            InsufficientBalance: On entry, when the balance less the holds
                does not cover *amount*.
            BalanceUnavailable: On entry, when the balance could not be
                learned and the policy is ``"closed"``.

        .. versionchanged:: 0.2 *reports*.
        """
        if settle is not None:
            check_settle(settle)
        if reports:
            return _ReserveOther(
                self, provider, to_amount(amount), settle, reports=True
            )
        return _Reserve(self, provider, to_amount(amount), settle)

    async def _check_and_hold(
        self, provider: Provider, amount: Decimal, reports: bool = False
    ) -> Reservation:
        tracked = self._track(provider)
        seen = tracked.fetches
        try:
            result = await self._store.try_hold(tracked.account, amount)
        except BalanceUnavailable as exc:  # a shared store that is down
            return self._unavailable(tracked, amount, exc)
        if isinstance(result, Hold):
            tracked.last = result.entry or tracked.last
            tracked.stats.allowed += 1
            if reports:
                return await self._with_ticket(tracked, amount, result)
            return Reservation(provider, amount, tracked, result)
        reservation = await self._check_slow(tracked, amount, result, seen)
        if reports and reservation._hold is not None:
            return await self._with_ticket(tracked, amount, reservation._hold)
        return reservation

    async def _with_ticket(
        self, tracked: Tracked, amount: Decimal, hold: Hold
    ) -> Reservation:
        reservation = Reservation(tracked.provider, amount, tracked, hold)
        report: list[Any] = [None, None]
        reservation._report = report
        ticket = getattr(self._store, "ticket", None)
        if ticket is not None:
            # Before the spend is sent: what settles after this may or may
            # not be in the balance the provider reports for it.
            try:
                report[0] = await ticket(tracked.account)
            except BaseException:
                await self._store.release(hold, outcome="forget")
                raise
        return reservation

    async def _check_slow(
        self, tracked: Tracked, amount: Decimal, result: Short | None, seen: int
    ) -> Reservation:
        began = time.monotonic()
        deadline = began + self.fetch_timeout
        try:
            outcome = await self._until_cached(tracked, amount, result, seen, deadline)
            if isinstance(outcome, Short) and (
                not outcome.entry.exact
                or outcome.entry.monotonic + self.recheck_after <= time.monotonic()
            ):
                # An old value may predate a refill, a corrected one may count
                # a spend twice: look once more. If that fails, the value at
                # hand still says the call is short.
                short = outcome
                try:
                    await self._fetcher.refresh(tracked, deadline, since=began)
                    again = await self._store.try_hold(tracked.account, amount)
                except BalanceUnavailable as exc:
                    if isinstance(exc, ProviderAuthError | ProviderResponseError):
                        raise
                    again = short
                outcome = await self._until_cached(
                    tracked, amount, again, tracked.fetches, deadline
                )
        except BalanceUnavailable as exc:
            return self._unavailable(tracked, amount, exc)
        if isinstance(outcome, Short):
            tracked.last = outcome.entry
            tracked.stats.refused += 1
            self._emit("refused", tracked, amount=amount, available=outcome.available)
            raise InsufficientBalance(
                provider=tracked.provider.name,
                required=amount,
                available=outcome.available,
                currency=tracked.provider.currency,
            )
        tracked.last = outcome.entry or tracked.last
        tracked.stats.allowed += 1
        return Reservation(tracked.provider, amount, tracked, outcome)

    async def _until_cached(
        self,
        tracked: Tracked,
        amount: Decimal,
        result: Hold | Short | None,
        seen: int,
        deadline: float,
    ) -> Hold | Short:
        """
        Fetch on a miss, then check again, until there is a balance to check.

        A miss is stale if a fetch finished after the check began (its answer
        was on its way while the balance was stored): check again instead of
        fetching. A balance can also be invalidated by another call between
        a fetch and this check: fetch again, until *deadline*.
        """
        while result is None:
            if tracked.fetches == seen:
                await self._fetcher.refresh(tracked, deadline)
            seen = tracked.fetches
            result = await self._store.try_hold(tracked.account, amount)
        return result

    def _unavailable(
        self, tracked: Tracked, amount: Decimal, exc: BalanceUnavailable
    ) -> Reservation:
        if self.on_unavailable == "closed" or isinstance(
            exc, ProviderAuthError | ProviderResponseError
        ):
            tracked.stats.unavailable += 1
            raise exc
        tracked.stats.failed_open += 1
        log.warning(
            "%s: balance unavailable, proceeding unchecked (on_unavailable='open'): %s",
            tracked.provider.name,
            exc.reason,
            extra=fields(
                "failed_open",
                provider=tracked.provider.name,
                account=tracked.digest,
                currency=tracked.provider.currency,
                amount=amount,
                reason=exc.reason,
            ),
        )
        self._emit("failed_open", tracked, amount=amount, error=exc)
        return Reservation(tracked.provider, amount, tracked, None)

    def _outcome(
        self, reservation: Reservation, ok: bool, settle: Settle | None
    ) -> Outcome:
        """
        Count the call's end and tell the store what to do with the balance;
        once per reservation.
        """
        outcome = reservation._outcome
        if outcome is None:
            outcome = self._end(reservation._tracked, reservation._amount, ok, settle)
            reservation._outcome = outcome
        return outcome

    def _end(
        self, tracked: Tracked, amount: Decimal, ok: bool, settle: Settle | None
    ) -> Outcome:
        """
        Count a call's end (*ok*: it spent *amount*) and say how the store
        settles its balance.
        """
        if ok:
            stats = tracked.stats
            stats.spent = add(stats.spent, amount)
        mode = settle or self.settle_mode
        if mode == "refresh":
            self._fetcher.refresh_soon(tracked)
            return "spent"
        return "debit" if ok and mode == "debit" else "forget"

    def _lane(self, provider: Provider) -> Lane:
        """*provider*'s account, for calls that need no I/O (``_lane.py``)."""
        last = self._last_lane
        if last is not None and last[0] is provider:  # as last time
            return last[1]
        tracked = self._track(provider)
        lane = tracked.lane
        if lane is None:
            of = getattr(self._store, "_lane", None)
            lane = tracked.lane = Lane(
                self, tracked, None if of is None else of(tracked.account)
            )
        self._last_lane = (provider, lane)
        return lane

    def _settled(self, reservation: Reservation, ok: bool) -> None:
        # Once the store settled: a hook reading the cached balance then sees
        # it debited or gone, never the balance before.
        hooks = self._hooks
        if hooks.settled:
            started = reservation._started
            hooks.tell_settled(
                reservation._tracked,
                reservation._amount,
                ok,
                time.monotonic() - started if started else None,
            )

    def _settle_now(
        self, reservation: Reservation, ok: bool, settle: Settle | None
    ) -> bool:
        """
        Settle without awaiting when the store can; False: `_settle` must.
        """
        lane = reservation._lane
        if lane is not None:
            fetched = reservation._fetched
            assert fetched is not None
            if not lane.at_home():
                return False
            if lane.exit(
                reservation._amount, fetched, ok, settle, reservation._started
            ):
                return True
            reservation._outcome = "forget"  # settled: _settle deletes the copy
            return False
        release_now = self._release_now
        hold = reservation._hold
        if (
            release_now is None
            or hold is None
            or reservation._report is not None
            or self._loops.home is not asyncio.get_running_loop()
            or (settle or self.settle_mode) == "invalidate"
        ):
            return False
        if not release_now(hold, self._outcome(reservation, ok, settle)):
            return False  # it needs I/O: _settle finishes, counting nothing twice
        self._settled(reservation, ok)
        return True

    async def _settle(
        self, reservation: Reservation, *, ok: bool, settle: Settle | None
    ) -> None:
        """
        Release *reservation* and settle the cached balance (see *settle*).
        Finishes even if the calling task is cancelled meanwhile.
        """
        lane = reservation._lane
        if lane is not None:
            fetched = reservation._fetched
            assert fetched is not None
            if reservation._outcome is not None:
                await lane.forget_copy()
            else:
                await lane.leave(
                    reservation._amount, fetched, ok, settle, reservation._started
                )
            return
        loops = self._loops
        if loops.forwarding and not loops.at_home():
            # Shielded: the settle finishes there even if this caller leaves.
            await asyncio.shield(
                loops.call(self._settle(reservation, ok=ok, settle=settle))
            )
            return
        hold = reservation._hold
        report = reservation._report
        if ok and hold is not None and report is not None and None not in report:
            stats = reservation._tracked.stats
            stats.spent = add(stats.spent, reservation._amount)
            try:
                await self._settle_reported(reservation, hold, report[0], report[1])
            finally:
                self._settled(reservation, ok)
            return
        outcome = self._outcome(reservation, ok, settle)
        try:
            if hold is None:
                await self._drop(reservation)
            elif outcome != "forget":
                await self._store.release(hold, outcome=outcome)
            else:
                try:
                    # Calls woken by the same fetch as this one check before it
                    # forgets that balance, rather than each fetching anew.
                    await asyncio.sleep(0)
                finally:
                    # Stores release the hold before their first await: a
                    # second cancellation can't leave it behind.
                    await self._store.release(hold, outcome="forget")
        finally:
            self._settled(reservation, ok)

    async def _settle_reported(
        self, reservation: Reservation, hold: Hold, ticket: Ticket, reported: Decimal
    ) -> None:
        """
        Release *hold*, then store the balance the provider reported after
        the spend, with the ticket taken before it was sent.
        """
        account = reservation._tracked.account
        # "spent" moves no generation: the put below still counts. Should
        # the put be dropped, the balance is left with this call taken off.
        await self._store.release(hold, outcome="spent")
        # The store subtracts what was spent since the ticket, this call
        # included; the reported balance already counts this call.
        try:
            entry = await self._store.put(
                account, MONEY.add(reported, hold.amount), ticket
            )
        except BalanceUnavailable:
            entry = None
        if entry is not None:
            reservation._tracked.last = entry

    async def _drop(self, reservation: Reservation) -> None:
        """
        Release *reservation* and forget the balance, at once (no yield):
        for the hold of a call that never ran because its caller left, which
        a call checking meanwhile must not find still held, and for a call
        that went ahead unchecked.
        """
        hold = reservation._hold
        lane, fetched = reservation._lane, reservation._fetched
        if hold is not None:
            await self._store.release(hold, outcome="forget")
        elif lane is not None and fetched is not None:
            await lane.drop(reservation._amount, fetched)
        else:
            # What an unchecked call spent is unknown, so a fetch that ran
            # meanwhile can't be corrected: drop it.
            with contextlib.suppress(BalanceUnavailable):
                await self._store.invalidate(reservation._tracked.account)

    def _store_down(self, account: Account, exc: BalanceUnavailable) -> None:
        for tracked in self._accounts:
            if tracked.account.key == account.key:
                self._emit("degraded", tracked, error=exc)
                return

    def _forget_loop(self) -> None:
        """
        Forget the home loop, in a child process after ``os.fork()``.
        """
        self._loops.forget()

    def _emit(self, kind: EventKind, tracked: Tracked, **values: Any) -> None:
        self._hooks.emit(kind, tracked, **values)
