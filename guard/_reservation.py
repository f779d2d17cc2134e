"""
What `BalanceGuard.reserve` returns and yields: the block, entered and
exited around a guarded call, and the `Reservation` it holds.

The block only hands over: checking, holding and settling are the guard's
(``_guard.py``), so one module reads as check -> hold -> settle.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

from ._balance import Balance
from ._money import to_amount
from .stores import Hold

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from decimal import Decimal
    from types import TracebackType

    from ._accounts import Tracked
    from ._guard import BalanceGuard, Settle
    from .errors import BalanceUnavailable
    from .stores import Entry, Outcome
    from .typing import AmountLike, Provider

__all__ = ["Reservation"]


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


def _balance(tracked: Tracked, entry: Entry) -> Balance:
    provider = tracked.provider
    return Balance(
        provider=provider.name,
        amount=entry.amount,
        currency=provider.currency,
        fetched_at=entry.fetched_at,
        sandbox=tracked.sandbox,
    )
