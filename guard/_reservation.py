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

from ._balance import Balance, new_balance
from ._money import to_amount

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Awaitable, Callable
    from decimal import Decimal
    from types import TracebackType

    from ._accounts import Tracked
    from ._guard import BalanceGuard, Settle
    from ._lane import Lane
    from .errors import BalanceUnavailable
    from .stores import Entry, Hold, Outcome
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
        "_amount",
        "_checked",
        "_failed",
        "_fetched",
        "_hold",
        "_lane",
        "_outcome",
        "_provider",
        "_report",
        "_started",
        "_tracked",
    )

    _hold: Hold | None
    # On the lane (``_lane.py``, no Hold made): the lane, the entry as
    # fetched, and the balance the amount was checked against.
    _lane: Lane | None
    _fetched: Entry | None
    _checked: Decimal | None
    # None, or (for a block entered with reports=True) [the store's ticket
    # or None, the reported balance or None].
    _report: list[Any] | None
    _outcome: Outcome | None

    def __init__(
        self,
        provider: Provider,
        amount: Decimal,
        tracked: Tracked,
        hold: Hold | None,
    ) -> None:
        self._provider = provider
        self._amount = amount
        self._tracked = tracked
        self._hold = hold  # None: let through unchecked (or on the lane)
        self._lane = self._fetched = self._checked = None
        self._failed = False
        self._report = None
        self._started = time.monotonic()  # for the settled event
        self._outcome = None  # set once, when it settles

    @classmethod
    def _on_lane(
        cls, lane: Lane, amount: Decimal, fetched: Entry, checked: Decimal
    ) -> Reservation:
        self = cls.__new__(cls)
        tracked = lane.tracked
        self._provider = tracked.provider
        self._amount = amount
        self._tracked = tracked
        self._hold = self._report = self._outcome = None
        self._lane = lane
        self._fetched = fetched
        self._checked = checked
        self._failed = False
        self._started = lane.started()
        return self

    @property
    def provider(self) -> Provider:
        return self._provider

    @provider.setter
    def provider(self, value: object) -> None:
        raise AttributeError("a Reservation is read-only: can't set provider")

    @property
    def amount(self) -> Decimal:
        return self._amount

    @amount.setter
    def amount(self, value: object) -> None:
        raise AttributeError("a Reservation is read-only: can't set amount")

    def __repr__(self) -> str:
        checked = self._hold is not None or self._fetched is not None
        return (
            f"<Reservation {self._provider.name} amount={self._amount} "
            f"checked={checked} failed={self._failed}>"
        )

    @property
    def balance(self) -> Balance | None:
        fetched = self._fetched
        if fetched is not None:
            assert self._checked is not None
            return _balance(self._tracked, self._checked, fetched.fetched_at)
        hold = self._hold
        if hold is None or hold.entry is None:
            return None
        entry = hold.entry
        return _balance(self._tracked, entry.amount, entry.fetched_at)

    @balance.setter
    def balance(self, value: object) -> None:
        raise AttributeError("a Reservation is read-only: can't set balance")

    def failed(self) -> None:
        """
        Mark the spend as failed although the block did not raise (a
        provider that answered an error): it settles as a failure, and
        ``settle="debit"`` invalidates the balance instead of debiting it.
        """
        self._failed = True

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
        Check and hold on the lane (``_lane.py``) if it can; None: `_enter`
        must run.
        """
        lane = self._guard._lane(self._provider)
        amount = self._amount
        fetched = lane.enter(amount, self._settle)
        if fetched is None:
            return None
        return Reservation._on_lane(lane, amount, fetched, lane.amount())

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


def _balance(tracked: Tracked, amount: Decimal, fetched_at: dt.datetime) -> Balance:
    provider = tracked.provider
    return new_balance(
        provider.name, amount, provider.currency, fetched_at, tracked.sandbox
    )
