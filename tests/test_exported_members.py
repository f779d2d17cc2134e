from __future__ import annotations

import types

import guard
import guard.errors
import guard.providers
import guard.typing


def test_all_sorted_and_complete() -> None:
    """guard.__all__ is sorted and lists every public name the package has."""
    public = {
        name
        for name, value in vars(guard).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert sorted(guard.__all__) == guard.__all__
    assert public == set(guard.__all__)


def test_design_names() -> None:
    """The names the design fixes are importable from their documented places."""
    from guard import (  # noqa: F401
        Balance,
        BalanceGuard,
        BalanceUnavailable,
        GuardError,
        InsufficientBalance,
        ProviderAuthError,
        ProviderResponseError,
        require_balance,
    )
    from guard.providers import Clickatell, OneClickDZ  # noqa: F401


def test_error_tree() -> None:
    """The error classes form the tree the errors module docstring draws."""
    assert issubclass(guard.InsufficientBalance, guard.GuardError)
    assert issubclass(guard.BalanceUnavailable, guard.GuardError)
    assert issubclass(guard.ProviderAuthError, guard.BalanceUnavailable)
    assert issubclass(guard.ProviderResponseError, guard.BalanceUnavailable)
    assert issubclass(guard.ConfigurationError, ValueError)
    assert issubclass(guard.ConfigurationError, guard.GuardError)


def test_providers_all_sorted_and_complete() -> None:
    """guard.providers is thin: a sorted __all__ of its public names."""
    public = {
        name
        for name, value in vars(guard.providers).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert sorted(guard.providers.__all__) == guard.providers.__all__
    assert public == set(guard.providers.__all__)
