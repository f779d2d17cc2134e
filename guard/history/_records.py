"""
What a history holds: balance readings, settled calls, the provider's own
transactions, and alerts. Frozen values; amounts are exact `Decimal`.
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - attrs resolves the annotations
from decimal import Decimal  # noqa: TC003 - attrs resolves the annotations
from typing import Final, Literal, TypeAlias

import attrs

__all__ = [
    "IN_TYPES",
    "OUT_TYPES",
    "REFUND_TYPES",
    "Alert",
    "Call",
    "Direction",
    "Reading",
    "Transaction",
    "direction_of",
]

Direction: TypeAlias = Literal["in", "out", "unknown"]

# OneClickDZ's transaction types (providers.md 1.2 and 6.2).
IN_TYPES: Final = frozenset(
    {
        "DEPOSIT",
        "REFUND-FLEXY",
        "REFUND-ADSL",
        "REFUND-ORDER",
        "RECEIVE",
        "POINT-EXCHANGE",
    }
)
"""Transaction types that add money to the account."""
OUT_TYPES: Final = frozenset({"FLEXY", "ADSL", "ORDER", "WITHDRAW", "SEND", "SERVICE"})
"""Transaction types that take money from the account."""
REFUND_TYPES: Final = frozenset(t for t in IN_TYPES if t.startswith("REFUND-"))
"""The money-in types that give back a failed spend."""


def direction_of(kind: str) -> Direction:
    """
    Whether a transaction type is money ``"in"``, ``"out"`` or one guard
    does not know (``"unknown"``).
    """
    if kind in IN_TYPES:
        return "in"
    if kind in OUT_TYPES:
        return "out"
    return "unknown"


@attrs.define(frozen=True)
class Reading:
    """
    A balance guard fetched.

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest.
        currency: The unit of *amount*.
        amount: The balance, exact.
        at: When guard read it (its own clock, UTC).
        reported_at: When the provider says it read it, if it said.
    """

    provider: str
    account: str
    currency: str
    amount: Decimal
    at: dt.datetime
    reported_at: dt.datetime | None = None


@attrs.define(frozen=True)
class Call:
    """
    A guarded call that ended.

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest.
        currency: The unit of *amount*.
        amount: The amount guard held for it (the face amount).
        ok: Whether it spent (it neither raised nor was marked failed).
        duration: Seconds it ran.
        at: When it ended (guard's clock, UTC).
    """

    provider: str
    account: str
    currency: str
    amount: Decimal
    ok: bool
    duration: float
    at: dt.datetime


@attrs.define(frozen=True)
class Transaction:
    """
    One movement of money as the provider records it (OneClickDZ
    ``/v3/account/transactions``).

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest.
        id: The provider's transaction id (``_id``).
        type: Such as ``"FLEXY"``, ``"DEPOSIT"``, ``"REFUND-FLEXY"``.
        amount: The amount moved, as the provider wrote it (positive).
        old_balance: The balance before.
        new_balance: The balance after.
        at: When it happened (the provider's clock, UTC).
        objid: The top-up or order it belongs to, if any.
        note: The provider's note.
        consistent: Whether the balances add up: ``old + amount = new``
            for money in, ``old - amount = new`` for money out.
    """

    provider: str
    account: str
    id: str
    type: str
    amount: Decimal
    old_balance: Decimal
    new_balance: Decimal
    at: dt.datetime
    objid: str | None = None
    note: str = ""
    consistent: bool = True

    @property
    def direction(self) -> Direction:
        """``"in"``, ``"out"`` or ``"unknown"``, from the type."""
        return direction_of(self.type)


@attrs.define(frozen=True)
class Alert:
    """
    A low-balance alert, as recorded by `record_alert`.

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest.
        level: The alert's level, as text (``"warning"``, ``"critical"``...).
        balance: The balance that raised it, if known.
        at: When it was raised (UTC).
        message: What it said.
    """

    provider: str
    account: str
    level: str
    balance: Decimal | None
    at: dt.datetime
    message: str = ""
