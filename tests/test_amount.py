from __future__ import annotations

import decimal
from decimal import Decimal

import pytest

from guard import AmountError, BalanceGuard, InsufficientBalance, require_balance
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


class TestLimits:
    @pytest.mark.parametrize(
        ("value", "words"),
        [
            ("0." + "0" * 18 + "1", "at most 18 decimal places"),
            (Decimal("1e-19"), "at most 18 decimal places"),
            (Decimal("1.0000000000000000001"), "at most 18 decimal places"),
            (10**18, "below 1e18"),
            ("1e18", "below 1e18"),
            (Decimal("1000000000000000000.0"), "below 1e18"),
            (1e18, "below 1e18"),
        ],
    )
    def test_beyond_exact(self, value: object, words: str) -> None:
        """Amounts guard can't hold exactly are refused, naming amount and the limit."""
        with pytest.raises(AmountError, match=r"^amount ") as info:
            to_amount(value)
        assert words in str(info.value)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0." + "0" * 17 + "1", Decimal("1e-18")),
            ("1." + "0" * 30, Decimal(1)),  # only zeros beyond 18 places
            ("999999999999999999", Decimal(10**18 - 1)),
            (
                "999999999999999999.999999999999999999",
                Decimal("999999999999999999.999999999999999999"),
            ),
        ],
    )
    def test_at_the_limits(self, value: str, expected: Decimal) -> None:
        """Amounts at the edge of the limits are read exactly."""
        assert expected == to_amount(value)

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            pytest.param(10**5000, "below 1e18", id="10**5000"),
            pytest.param("1e5000", "below 1e18", id="'1e5000'"),
            pytest.param("9" * 100_000, "at most", id="100000 digits"),
            pytest.param(Decimal("1E+999999999"), "below 1e18", id="1E+999999999"),
            pytest.param(Decimal("1E-999999999"), "decimal places", id="1E-999999999"),
            pytest.param(-(10**5000), "below 1e18", id="-10**5000"),
        ],
    )
    async def test_huge(
        self, guard: BalanceGuard, provider: InMemoryProvider, value: object, words: str
    ) -> None:
        """Huge amounts raise AmountError naming amount, from every entry point."""
        with pytest.raises(AmountError, match=r"^amount ") as info:
            to_amount(value)
        assert words in str(info.value)
        with pytest.raises(AmountError, match=r"^amount "):
            guard.reserve(provider, value)  # type: ignore[arg-type]
        with pytest.raises(AmountError, match=r"^amount "):
            require_balance(provider, value, guard=guard)  # type: ignore[arg-type]

        @require_balance(provider, lambda: value, guard=guard)
        async def send() -> None:
            pass  # pragma: no cover - refused

        with pytest.raises(AmountError, match=r"^amount "):
            await send()
        assert 0 == provider.fetches


class TestApplicationContext:
    """
    guard's sums are exact whatever decimal context the application set.
    """

    async def test_low_precision_does_not_admit(self, guard: BalanceGuard) -> None:
        """With prec=6, 1,000,000 is refused on 999,999.7 and nothing stays held."""
        provider = InMemoryProvider(Decimal("999999.7"))
        context = decimal.getcontext()
        precision = context.prec
        context.prec = 6
        try:
            with pytest.raises(InsufficientBalance) as info:
                async with guard.reserve(provider, 1_000_000):
                    pass  # pragma: no cover - refused
            assert Decimal(0) == guard.held(provider)
            # All of it is still there: no phantom hold.
            async with guard.reserve(provider, Decimal("999999.7")):
                assert Decimal("999999.7") == guard.held(provider)
        finally:
            context.prec = precision

        assert Decimal("999999.7") == info.value.available
        assert Decimal(0) == guard.held(provider)

    async def test_long_balance_does_not_round_up(self, guard: BalanceGuard) -> None:
        """A balance of 9.99...9 (30 places) does not admit a 10 DZD call."""
        provider = InMemoryProvider()
        provider.balance = Decimal("9." + "9" * 30)  # as a provider may answer

        with pytest.raises(InsufficientBalance) as info:
            async with guard.reserve(provider, 10):
                pass  # pragma: no cover - refused

        assert info.value.available < 10
        assert Decimal(0) == guard.held(provider)
