"""
Reconciliation: guard's settled spends against the provider's debits.
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from typing import TYPE_CHECKING

import attrs

from guard._money import MONEY, ZERO

from ._records import REFUND_TYPES, Call, Transaction

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._base import BaseHistory

__all__ = ["Match", "Reconciliation", "ratio", "reconcile"]

# Plans cost 0.92-0.99 of their face value (providers.md 6.2): a debit
# below this share of a spend's face amount is not that spend's.
MIN_RATIO = Decimal("0.9")


@attrs.define(frozen=True)
class Match:
    """A spend that went through guard, and the provider's debit for it."""

    call: Call
    debit: Transaction

    @property
    def ratio(self) -> Decimal:
        """The debit over the face amount (such as 0.97)."""
        return ratio(self.debit.amount, self.call.amount)


@attrs.define(frozen=True)
class Reconciliation:
    """
    Guard's spends and the provider's debits over a period, side by side.

    Attributes:
        through_guard: Debits matched to a spend guard settled.
        bypassed: Debits guard never saw: spends made around it.
        unmatched: Spends guard settled that no debit matches (a send that
            failed at the provider, or a period not imported yet).
        refunds: Money given back for failed spends (``REFUND-*``).
    """

    since: dt.datetime
    until: dt.datetime
    through_guard: tuple[Match, ...]
    bypassed: tuple[Transaction, ...]
    unmatched: tuple[Call, ...]
    refunds: tuple[Transaction, ...]

    @property
    def face_total(self) -> Decimal:
        """The face amounts of the matched spends."""
        return _sum(m.call.amount for m in self.through_guard)

    @property
    def debited_total(self) -> Decimal:
        """What the provider debited for them."""
        return _sum(m.debit.amount for m in self.through_guard)

    @property
    def bypassed_total(self) -> Decimal:
        """What was debited around guard."""
        return _sum(t.amount for t in self.bypassed)

    @property
    def refunded_total(self) -> Decimal:
        """What was refunded."""
        return _sum(t.amount for t in self.refunds)

    @property
    def ratio(self) -> Decimal | None:
        """Actual debit over face amount of the matched spends; None if none."""
        face = self.face_total
        return ratio(self.debited_total, face) if face else None


async def reconcile(
    history: BaseHistory,
    since: dt.datetime,
    until: dt.datetime,
    *,
    provider: str = "oneclickdz",
    account: str | None = None,
    window: dt.timedelta = dt.timedelta(minutes=5),
) -> Reconciliation:
    """
    Match the spends guard settled between *since* and *until* with the
    provider's debits imported for the same period.

    A debit matches a spend when it is at most *window* away from the
    spend's run (clocks differ) and between 0.9 and 1 times its face
    amount; each spend takes the nearest such debit.
    """
    calls = [
        c
        for c in await history.calls(
            provider=provider, account=account, since=since, until=until
        )
        if c.ok
    ]
    rows = await history.transactions(
        provider=provider, account=account, since=since - window, until=until + window
    )
    debits = [t for t in rows if t.direction == "out"]
    refunds = tuple(t for t in rows if t.type in REFUND_TYPES and since <= t.at < until)
    taken: set[str] = set()
    matches: list[Match] = []
    unmatched: list[Call] = []
    for call in calls:
        begun = call.at - dt.timedelta(seconds=call.duration)
        best: Transaction | None = None
        best_gap: dt.timedelta | None = None
        for debit in debits:
            if debit.id in taken or not (
                MONEY.multiply(MIN_RATIO, call.amount) <= debit.amount <= call.amount
            ):
                continue
            if debit.at < begun - window or debit.at > call.at + window:
                continue
            gap = max(begun - debit.at, debit.at - call.at, dt.timedelta(0))
            if best_gap is None or gap < best_gap:
                best, best_gap = debit, gap
        if best is None:
            unmatched.append(call)
        else:
            taken.add(best.id)
            matches.append(Match(call, best))
    bypassed = tuple(d for d in debits if d.id not in taken and since <= d.at < until)
    return Reconciliation(
        since=since,
        until=until,
        through_guard=tuple(matches),
        bypassed=bypassed,
        unmatched=tuple(unmatched),
        refunds=refunds,
    )


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for value in values:
        total = MONEY.add(total, value)
    return total


def ratio(part: Decimal, whole: Decimal) -> Decimal:
    """*part* / *whole* to 4 places (a share, not money: rounding is fine)."""
    context = MONEY.copy()
    context.traps[decimal.Inexact] = False
    return context.divide(part, whole).quantize(Decimal("0.0001"), context=context)
