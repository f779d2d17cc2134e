from __future__ import annotations

from decimal import Decimal

import pytest

from guard import AmountError, require_balance
from guard._money import to_amount
from guard.testing import InMemoryProvider


class TestToAmount:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (5, Decimal(5)),
            (Decimal("1326.13"), Decimal("1326.13")),
            ("12.50", Decimal("12.50")),
            (" 7 ", Decimal(7)),
            (0.1, Decimal("0.1")),
            (0, Decimal(0)),
        ],
    )
    def test_exact(self, value: object, expected: Decimal) -> None:
        """Numbers, strings and floats become the exact Decimal they spell."""
        assert expected == to_amount(value)
        assert isinstance(to_amount(value), Decimal)

    @pytest.mark.parametrize(
        ("value", "error", "words"),
        [
            (-1, AmountError, "must not be negative"),
            (Decimal("NaN"), AmountError, "finite"),
            (float("inf"), AmountError, "finite"),
            ("Infinity", AmountError, "finite"),
            ("ten", AmountError, "decimal number"),
            (True, AmountError, "bool"),
            (None, AmountError, "NoneType"),
            ([1], AmountError, "list"),
        ],
    )
    def test_rejects(self, value: object, error: type[Exception], words: str) -> None:
        """Bad amounts raise an error that names the parameter and the problem."""
        with pytest.raises(error, match="amount") as info:
            to_amount(value)
        assert words in str(info.value)

    def test_require_balance_checks_at_once(self) -> None:
        """A bad static amount is refused when require_balance is called."""
        with pytest.raises(ValueError, match="amount must not be negative"):
            require_balance(InMemoryProvider(), -5)
