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


def test_monitor_names() -> None:
    """The alert names are importable from guard, guard.monitor and guard.notify."""
    import guard.monitor
    import guard.notify

    assert guard.BalanceMonitor is guard.monitor.BalanceMonitor
    assert guard.Threshold is guard.monitor.Threshold
    assert guard.BalanceAlert is guard.monitor.BalanceAlert
    for module in (guard.monitor, guard.notify):
        assert sorted(module.__all__) == module.__all__
        assert all(hasattr(module, name) for name in module.__all__)


def test_import_guard_leaves_notifiers_out() -> None:
    """import guard imports neither guard.notify, smtplib nor aiosmtpd."""
    import subprocess
    import sys

    code = (
        "import sys, guard; "
        "print(sorted(m for m in ('guard.notify', 'smtplib', 'aiosmtpd') "
        "if m in sys.modules))"
    )
    out = subprocess.run(  # noqa: S603 - this interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "[]" == out.strip()
