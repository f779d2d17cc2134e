"""
The guarded call: ``reserve()`` = check -> hold -> run -> settle.

`BalanceGuard.reserve` is the one primitive; `guard.require_balance` (all
its forms) and both aiohttp middlewares are layers over it. Fetching lives
in ``_fetch.py``, event-loop binding in ``_loops.py``, balances and holds in
the store (``guard.stores``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, get_args

from ._accounts import Accounts, AccountState, Tracked
from ._balance import Balance
from ._catalogue import Catalogues
from ._events import EventKind, GuardEvent
from ._fetch import Fetcher
from ._logs import fields
from ._loops import HomeLoop
from ._money import MONEY, ZERO, to_amount
from ._options import check_settle, count, make_store, name, seconds
from .errors import (
    BalanceUnavailable,
    ConfigurationError,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
)
from .stores import Hold, Short

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Awaitable, Callable, Iterable
    from decimal import Decimal
    from types import TracebackType

    import aiohttp
    from aiocache.base import BaseCache

    from .stores import Entry, Outcome, Ticket
    from .typing import AmountLike, EventHook, History, Provider, Store

__all__ = ["BalanceGuard", "Policy", "Reservation", "Settle"]

log = logging.getLogger("guard")

_KINDS: frozenset[str] = frozenset(get_args(EventKind))
T = TypeVar("T")

Settle: TypeAlias = Literal["refresh", "invalidate", "debit"]
Policy: TypeAlias = Literal["closed", "open"]


class Reservation:
    """
    An amount held on an account while a guarded block runs; what
    `BalanceGuard.reserve` yields. Read-only.

    Attributes:
        provider: The account's provider.
        amount: The amount held.
        balance: The balance the amount was checked against; None when the
            guard failed open (``on_unavailable="open"``) and nothing was
            checked.
    """

    __slots__ = (
        "_failed",
        "_hold",
        "_outcome",
        "_report",
        "_started",
        "_tracked",
        "amount",
        "provider",
    )

    provider: Provider
    amount: Decimal
    _tracked: Tracked
    _hold: Hold | None
    _failed: bool
    # None, or (for a block entered with reports=True) [the store's ticket
    # or None, the reported balance or None].
    _report: list[Any] | None
    _started: float
    _outcome: Outcome | None

    def __new__(
        cls, provider: Provider, amount: Decimal, tracked: Tracked, hold: Hold | None
    ) -> Reservation:
        # Made on every guarded call: set through the slots, not __setattr__.
        self = object.__new__(cls)
        _RESERVATION_PROVIDER(self, provider)
        _RESERVATION_AMOUNT(self, amount)
        _RESERVATION_TRACKED(self, tracked)
        _RESERVATION_HOLD(self, hold)  # None: let through unchecked
        _RESERVATION_FAILED(self, False)
        _RESERVATION_REPORT(self, None)
        _RESERVATION_STARTED(self, time.monotonic())  # for the settled event
        _RESERVATION_OUTCOME(self, None)  # set once, when it settles
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Reservation is read-only: can't set {name}")

    def __repr__(self) -> str:
        return (
            f"<Reservation {self.provider.name} amount={self.amount} "
            f"checked={self._hold is not None} failed={self._failed}>"
        )

    @property
    def balance(self) -> Balance | None:
        hold = self._hold
        if hold is None or hold.entry is None:
            return None
        return _balance(self._tracked, hold.entry)

    def failed(self) -> None:
        """
        Mark the spend as failed although the block did not raise (a
        provider that answered an error): it settles as a failure, and
        ``settle="debit"`` invalidates the balance instead of debiting it.
        """
        _RESERVATION_FAILED(self, True)

    def report_balance(self, amount: AmountLike) -> None:
        """
        Record the balance the provider reported right after this spend
        (OneClickDZ's ``data.newBalance``): if the spend succeeds, it is
        stored as the account's balance when it settles, less what other
        calls settled since this one was entered (like a fetch, it is never
        stored over an invalidation made meanwhile). It needs a block
        entered with ``reserve(..., reports=True)``; a store that cannot
        tell (no `guard.typing.TicketStore` ``ticket`` method) settles as
        usual.

        Raises:
            AmountError: *amount* is not a non-negative finite number.
            RuntimeError: The block was not entered with ``reports=True``.

        .. versionadded:: 0.2
        """
        value = to_amount(amount, name="amount")
        if self._report is None:
            raise RuntimeError(
                "report_balance needs a block entered with reserve(..., reports=True)"
            )
        self._report[1] = value


(
    _RESERVATION_PROVIDER,
    _RESERVATION_AMOUNT,
    _RESERVATION_TRACKED,
    _RESERVATION_HOLD,
    _RESERVATION_FAILED,
    _RESERVATION_REPORT,
    _RESERVATION_STARTED,
    _RESERVATION_OUTCOME,
) = (
    Reservation.__dict__[name].__set__
    for name in (
        "provider",
        "amount",
        "_tracked",
        "_hold",
        "_failed",
        "_report",
        "_started",
        "_outcome",
    )
)


class _Reserve:
    """
    What `BalanceGuard.reserve` returns: an async context manager for one
    guarded block. Not reusable.
    """

    __slots__ = ("_amount", "_guard", "_provider", "_reservation", "_settle")

    def __init__(
        self,
        guard: BalanceGuard,
        provider: Provider,
        amount: Decimal,
        settle: Settle | None,
    ) -> None:
        self._guard = guard
        self._provider = provider
        self._amount = amount
        self._settle = settle
        self._reservation: Reservation | None = None

    def _enter_now(self) -> Reservation | None:
        """
        Check and hold without awaiting, if the store can (a warm in-process
        balance that covers the amount); None: `_enter` must run.
        """
        guard = self._guard
        hold_now = guard._hold_now
        if hold_now is None or guard._loops.home is not asyncio.get_running_loop():
            return None
        tracked = guard._track(self._provider)
        result = hold_now(tracked.account, self._amount)
        if type(result) is not Hold:
            return None  # a miss or a shortage: the slow path decides
        tracked.last = result.entry
        tracked.stats.allowed += 1
        return Reservation(self._provider, self._amount, tracked, result)

    async def _enter(self) -> Reservation:
        guard = self._guard
        loops = guard._loops
        if loops.home is asyncio.get_running_loop() or loops.at_home():
            return await guard._check_and_hold(self._provider, self._amount)
        return await loops.make(
            functools.partial(guard._check_and_hold, self._provider, self._amount),
            guard._drop,
        )

    async def __aenter__(self) -> Reservation:
        if self._reservation is not None:
            raise RuntimeError("a reserve() block can be entered only once")
        reservation = self._enter_now() or await self._enter()
        self._reservation = reservation
        return reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reservation = self._reservation
        if reservation is None:
            raise RuntimeError("a reserve() block exited without being entered")
        # The one place that decides whether a spend succeeded.
        ok = exc_type is None and not reservation._failed
        guard = self._guard
        if not guard._settle_now(reservation, ok, self._settle):
            await guard._settle(reservation, ok=ok, settle=self._settle)


class _ReserveOther(_Reserve):
    """
    A `_Reserve` off the fast path: for a spend that may report the balance
    left after it (*reports*), or whose amount could not be learned
    (*unavailable*: the guard's policy decides).
    """

    __slots__ = ("_reports", "_unavailable")

    def __init__(
        self,
        guard: BalanceGuard,
        provider: Provider,
        amount: Decimal,
        settle: Settle | None,
        *,
        reports: bool = False,
        unavailable: BalanceUnavailable | None = None,
    ) -> None:
        super().__init__(guard, provider, amount, settle)
        self._reports = reports
        self._unavailable = unavailable

    def _enter_now(self) -> Reservation | None:
        return None

    async def _enter(self) -> Reservation:
        guard = self._guard
        loops = guard._loops
        enter: Callable[[], Awaitable[Reservation]]
        if self._unavailable is not None:
            enter = functools.partial(
                guard._enter_unavailable, self._provider, self._unavailable
            )
        else:
            enter = functools.partial(
                guard._check_and_hold, self._provider, self._amount, self._reports
            )
        if loops.home is asyncio.get_running_loop() or loops.at_home():
            return await enter()
        return await loops.make(enter, guard._drop)


class BalanceGuard:
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
        self._hooks: tuple[EventHook, ...] = ()
        self._kinds: tuple[frozenset[str], ...] = ()
        # The hooks of each event kind: an event no hook wants isn't made.
        self._by_kind: dict[str, tuple[EventHook, ...]] = {}
        for hook in hooks:
            self.add_hook(hook)
        self._store = make_store(
            cache,
            store,
            ttl=None if ttl is None else seconds("ttl", ttl),
            lease=seconds("lease", lease),
            fetch_timeout=fetch_timeout,
        )
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
        # The store's I/O-free check and release, for the fast path.
        self._hold_now = getattr(self._store, "hold_now", None)
        self._release_now = getattr(self._store, "release_now", None)
        self._accounts = Accounts(self.namespace, self._fetcher.track)
        self._catalogues = Catalogues()
        self._track = self._accounts.get
        self.closed = False
        """Whether `aclose` was called."""
        self.history = history
        """Where this guard's balances and calls are recorded, if anywhere."""
        if history is not None:
            history.attach(self)

    @property
    def ttl(self) -> float:
        """Seconds a fetched balance is trusted (the store's)."""
        return self._store.ttl

    @property
    def fetch_timeout(self) -> float:
        """Seconds one balance fetch may take, retries included."""
        return self._fetcher.timeout

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

    # -- public reads ---------------------------------------------------

    async def balance(self, provider: Provider, *, fresh: bool = False) -> Balance:
        """
        Return the balance of *provider*'s account: cached, or fetched if
        there is none (or *fresh* is true).

        Raises:
            BalanceUnavailable: It could not be learned (whatever the
                *on_unavailable* policy: there is no call to let through).
        """
        if not self._loops.at_home():
            return await self._loops.call(self.balance(provider, fresh=fresh))
        tracked = self._track(provider)
        entry = None if fresh else await self._store.read(tracked.account)
        if entry is None:
            entry = await self._fetcher.refresh(
                tracked, time.monotonic() + self.fetch_timeout
            )
        return _balance(tracked, entry)

    async def invalidate(self, provider: Provider) -> None:
        """
        Forget *provider*'s cached balance; the next call fetches it.
        """
        if not self._loops.at_home():
            await self._loops.call(self.invalidate(provider))
            return
        await self._store.invalidate(self._track(provider).account)

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
        checked: object = hook
        if not callable(checked) or _is_async(checked):
            raise ConfigurationError(
                f"hooks must be plain (not async) callables, got {hook!r}"
            )
        wanted = _KINDS if kinds is None else frozenset(kinds)
        unknown = sorted(str(k) for k in wanted - _KINDS)
        if unknown or not wanted:
            raise ConfigurationError(
                f"kinds must be event kinds ({', '.join(sorted(_KINDS))}), "
                f"got {unknown or 'none'}"
            )
        self._hooks = (*self._hooks, hook)
        self._kinds = (*self._kinds, wanted)
        self._index_hooks()

    def remove_hook(self, hook: EventHook) -> None:
        """
        Stop calling *hook* (added with `add_hook` or *hooks*); nothing if
        it is not there.
        """
        kept = [
            (h, k) for h, k in zip(self._hooks, self._kinds, strict=True) if h != hook
        ]
        self._hooks = tuple(h for h, _ in kept)
        self._kinds = tuple(k for _, k in kept)
        self._index_hooks()

    def _index_hooks(self) -> None:
        self._by_kind = {
            kind: tuple(
                h for h, k in zip(self._hooks, self._kinds, strict=True) if kind in k
            )
            for kind in _KINDS
        }

    def accounts(self) -> tuple[AccountState, ...]:
        """
        Return every account this guard has seen, as it sees it now: the
        last balance, what this process holds, and what it counted.
        """
        return tuple(
            self._accounts.state(tracked, self._store.held(tracked.account))
            for tracked in self._accounts
        )

    async def catalogue(
        self,
        provider: Provider,
        name: str,
        load: Callable[[aiohttp.ClientSession], Awaitable[T]],
        *,
        ttl: float,
    ) -> T:
        """
        Return a catalogue of *provider*'s account (a price list): kept
        from an earlier call for *ttl* seconds, else loaded by
        ``load(session)`` through the guard's session, one load per
        account and *name* at a time, within the fetch timeout. A failed
        load is not kept.

        Raises:
            BalanceUnavailable: *load* raised it, or took longer than the
                fetch timeout.

        .. versionadded:: 0.2
        """
        if not self._loops.at_home():
            return await self._loops.call(self.catalogue(provider, name, load, ttl=ttl))
        tracked = self._track(provider)
        try:
            return await self._catalogues.get(
                (tracked.account.key, name),
                load,
                self._fetcher.session(),
                ttl=ttl,
                limit=self.fetch_timeout,
            )
        except TimeoutError:
            raise BalanceUnavailable(
                f"no {name} within {self.fetch_timeout:g} s",
                provider=provider.name,
            ) from None

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

    def held(self, provider: Provider) -> Decimal:
        """
        Sum of the amounts held by *provider*'s running calls in this
        process.
        """
        return self._store.held(self._track(provider).account)

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
        _RESERVATION_REPORT(reservation, report)
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
        if outcome is not None:
            return outcome
        mode = settle or self.settle_mode
        if ok:
            stats = reservation._tracked.stats
            stats.spent = MONEY.add(stats.spent, reservation.amount)
        if mode == "refresh":
            self._fetcher.refresh_soon(reservation._tracked)
            outcome = "spent"
        else:
            outcome = "debit" if ok and mode == "debit" else "forget"
        _RESERVATION_OUTCOME(reservation, outcome)
        return outcome

    def _settled(self, reservation: Reservation, ok: bool) -> None:
        # Once the store settled: a hook reading the cached balance then sees
        # it debited or gone, never the balance before.
        if self._by_kind.get("settled"):
            self._emit(
                "settled",
                reservation._tracked,
                amount=reservation.amount,
                ok=ok,
                duration=time.monotonic() - reservation._started,
            )

    def _settle_now(
        self, reservation: Reservation, ok: bool, settle: Settle | None
    ) -> bool:
        """
        Settle without awaiting when the store can; False: `_settle` must.
        """
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
            stats.spent = MONEY.add(stats.spent, reservation.amount)
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
        if hold is not None:
            await self._store.release(hold, outcome="forget")
        else:
            # What an unchecked call spent is unknown, so a fetch that ran
            # meanwhile can't be corrected: drop it.
            with contextlib.suppress(BalanceUnavailable):
                await self._store.invalidate(reservation._tracked.account)

    def _forget_loop(self) -> None:
        """
        Forget the home loop, in a child process after ``os.fork()``.
        """
        self._loops.forget()

    def _emit(
        self,
        kind: EventKind,
        tracked: Tracked,
        *,
        amount: Decimal | None = None,
        available: Decimal | None = None,
        ok: bool | None = None,
        error: BaseException | None = None,
        duration: float | None = None,
        reported_at: dt.datetime | None = None,
    ) -> None:
        hooks = self._by_kind.get(kind)
        if not hooks:
            return
        provider = tracked.provider
        event = GuardEvent(
            kind=kind,
            provider=provider.name,
            account_id=provider.account_id,
            account=tracked.digest,
            currency=provider.currency,
            amount=amount,
            available=available,
            ok=ok,
            error=error,
            duration=duration,
            reported_at=reported_at,
        )
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                log.exception(
                    "guard hook %r failed on %s",
                    hook,
                    kind,
                    extra=fields(
                        "hook_failed",
                        provider=event.provider,
                        account=event.account,
                        kind=kind,
                    ),
                )


def _balance(tracked: Tracked, entry: Entry) -> Balance:
    provider = tracked.provider
    return Balance(
        provider=provider.name,
        amount=entry.amount,
        currency=provider.currency,
        fetched_at=entry.fetched_at,
        sandbox=tracked.sandbox,
    )


def _is_async(fn: object) -> bool:
    # An object with an ``async def __call__`` is async too.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )
