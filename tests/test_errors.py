from __future__ import annotations

import pickle
from decimal import Decimal

import pytest

from guard import (
    BalanceUnavailable,
    GuardError,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
)

ERRORS: list[GuardError] = [
    InsufficientBalance(
        provider="oneclickdz",
        required=Decimal("500"),
        available=Decimal("320.50"),
        currency="DZD",
    ),
    BalanceUnavailable("HTTP 503", provider="clickatell", status=503, retry_after=5.0),
    ProviderAuthError(
        "Authentication failed", provider="clickatell", code="001", status=200
    ),
    ProviderResponseError("truncated JSON", provider="oneclickdz", status=200),
]


class TestErrors:
    def test_insufficient_balance_message(self) -> None:
        """InsufficientBalance reads as one line with both amounts and the unit."""
        assert (
            "oneclickdz: insufficient balance: 500 DZD required, 320.50 DZD available"
            == str(ERRORS[0])
        )

    def test_attributes_are_decimal(self) -> None:
        """Amounts on InsufficientBalance are Decimals, exactly as given."""
        error = ERRORS[0]
        assert isinstance(error, InsufficientBalance)
        assert Decimal("320.50") == error.available
        assert isinstance(error.required, Decimal)

    @pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
    def test_one_line(self, error: GuardError) -> None:
        """Every error prints one line naming its provider."""
        assert "\n" not in str(error)
        assert str(error).startswith(("oneclickdz", "clickatell"))

    @pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
    def test_pickle_round_trip(self, error: GuardError) -> None:
        """Errors survive pickling (worker pools, multiprocessing) intact."""
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301
        assert type(error) is type(copy)
        assert str(error) == str(copy)
        assert repr(error) == repr(copy)

    def test_auth_error_shows_code(self) -> None:
        """ProviderAuthError shows the provider's code for support tickets."""
        assert "[001]" in str(ERRORS[2])
        assert "retry_after=None" in repr(ERRORS[2])
