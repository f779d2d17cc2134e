from __future__ import annotations

from decimal import Decimal, InvalidOperation

__all__ = ["to_amount"]


def to_amount(value: object, *, name: str = "amount") -> Decimal:
    """
    Read *value* as an exact, finite, non-negative amount of money.

    Floats go through ``str()`` so ``0.1`` means ``Decimal("0.1")``, not the
    binary fraction closest to it.

    Raises:
        TypeError: *value* is not an ``int``, ``Decimal``, ``str`` or ``float``
            (``bool`` is refused: ``True`` is no amount).
        ValueError: *value* is negative, NaN, infinite or not a number.
    """
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not a bool ({value!r})")
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(str(value))
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(
                f"{name} must be a decimal number, got {value!r}"
            ) from None
    else:
        raise TypeError(
            f"{name} must be an int, Decimal, str or float, not {type(value).__name__}"
        )
    if not amount.is_finite():
        raise ValueError(f"{name} must be a finite number, got {amount}")
    if amount < 0:
        raise ValueError(f"{name} must not be negative, got {amount}")
    return amount
