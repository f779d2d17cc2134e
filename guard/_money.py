"""
Money: reading amounts, and the decimal context every sum is made in.

guard never computes in the application's decimal context: an application
that lowers ``decimal.getcontext().prec`` must not make a balance round up
into admitting a call. Every amount guard accepts has at most
`MAX_PLACES` decimal places and is below ``10 ** MAX_MAGNITUDE``, so sums
and differences of them are exact in `MONEY`; `MONEY` traps rounding all
the same, so that a bug shows as an error, never as an admission.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_FLOOR, Decimal

from .errors import AmountError

__all__ = [
    "MAX_MAGNITUDE",
    "MAX_PLACES",
    "MONEY",
    "ZERO",
    "add",
    "bounded_balance",
    "subtract",
    "to_amount",
]

MAX_PLACES = 18
"""Decimal places an amount may have."""

MAX_MAGNITUDE = 18
"""Amounts are below ``10 ** MAX_MAGNITUDE``."""

# Amounts have at most 36 digits: 80 leave room for sums of any number of
# them that a process could make.
MONEY = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999,
    Emax=999,
    traps=[
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
        decimal.Inexact,
    ],
)

ZERO = Decimal(0)

# MONEY's sum and difference, bound once: the guarded call's path adds and
# subtracts a few times per call, and the bound method is a third cheaper.
add = MONEY.add
subtract = MONEY.subtract
_LIMIT = Decimal(10) ** MAX_MAGNITUDE
_INT_LIMIT = 10**MAX_MAGNITUDE
# Whole amounts read so far (Decimals are immutable: one may be shared).
_WHOLE: dict[int, Decimal] = {}
_WHOLE_KEPT = 4096
_QUANTUM = Decimal(1).scaleb(-MAX_PLACES)
# Longer strings can't spell an amount within the limits (leading zeros and
# spaces aside); refused before Decimal reads them.
_MAX_TEXT = 2 * (MAX_PLACES + MAX_MAGNITUDE) + 16


def to_amount(value: object, *, name: str = "amount") -> Decimal:
    """
    Read *value* as an exact, finite, non-negative amount of money.

    Floats go through ``str()`` so ``0.1`` means ``Decimal("0.1")``, not the
    binary fraction closest to it.

    Raises:
        AmountError: *value* is not an ``int``, ``Decimal``, ``str`` or
            ``float`` (``bool`` is refused: ``True`` is no amount), or is
            negative, NaN, infinite, not a number, below ``1e-18`` in its
            last place, or not below ``1e18``.
    """
    if type(value) is int:
        # The usual case: a whole amount written in the code, read once
        # per value (an `async with require_balance(p, 5)` reads it on
        # every call).
        found = _WHOLE.get(value)
        if found is not None:
            return found
        if 0 <= value < _INT_LIMIT:
            amount = Decimal(value)  # in range by construction
            if len(_WHOLE) < _WHOLE_KEPT:
                _WHOLE[value] = amount
            return amount
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, bool):
        raise AmountError(f"{name} must be a number, not a bool ({value!r})")
    elif isinstance(value, int):
        if 0 <= value < _INT_LIMIT:
            return Decimal(value)  # the usual case, in range by construction
        # Checked before converting: a huge int is slow to turn into digits.
        if value.bit_length() > 64:
            raise AmountError(f"{name} must be below 1e{MAX_MAGNITUDE}")
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_TEXT:
            raise AmountError(
                f"{name} must be a decimal number of at most {_MAX_TEXT} "
                f"characters, got {len(text)}"
            )
        try:
            amount = Decimal(text)
        except decimal.InvalidOperation:
            raise AmountError(
                f"{name} must be a decimal number, got {value!r}"
            ) from None
    else:
        raise AmountError(
            f"{name} must be an int, Decimal, str or float, not {type(value).__name__}"
        )
    return _checked(amount, name)


def _checked(amount: Decimal, name: str) -> Decimal:
    if not amount.is_finite():
        raise AmountError(f"{name} must be a finite number, got {amount}")
    if amount.is_signed() and amount:
        raise AmountError(f"{name} must not be negative, got {amount}")
    if amount and amount.adjusted() >= MAX_MAGNITUDE:
        raise AmountError(f"{name} must be below 1e{MAX_MAGNITUDE}, got {amount:.6e}")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < -MAX_PLACES:
        try:  # exact, or MONEY traps it
            amount = amount.quantize(_QUANTUM, context=MONEY)
        except decimal.Inexact:
            raise AmountError(
                f"{name} must have at most {MAX_PLACES} decimal places, "
                f"got {amount:.6e}"
            ) from None
    if amount.is_signed():  # -0
        return ZERO
    return amount


def bounded_balance(value: Decimal) -> Decimal | None:
    """
    Return a provider's *value* rounded down to `MAX_PLACES` places, or
    None when it is not a finite number below ``10 ** MAX_MAGNITUDE`` in
    size (an overdrawn account's negative balance is kept).
    """
    if not value.is_finite() or abs(value) >= _LIMIT:
        return None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -MAX_PLACES:
        # Rounding down errs low: it can refuse a call, never admit one.
        with decimal.localcontext(MONEY) as ctx:
            ctx.traps[decimal.Inexact] = False
            value = value.quantize(_QUANTUM, rounding=ROUND_FLOOR)
    return value
