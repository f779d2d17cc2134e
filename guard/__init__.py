"""
Refuse provider-spending calls that a prepaid balance cannot cover.
"""

from __future__ import annotations

from ._balance import Balance
from ._events import GuardEvent
from ._guard import BalanceGuard
from ._require import (
    RequireBalance,
    get_default_guard,
    require_balance,
    set_default_guard,
)
from ._reservation import Reservation
from .errors import (
    AmountError,
    BalanceUnavailable,
    ConfigurationError,
    GuardError,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
)
from .monitor import BalanceAlert, BalanceMonitor, Forecast, Threshold

__version__ = "0.1.0"

__all__ = [
    "AmountError",
    "Balance",
    "BalanceAlert",
    "BalanceGuard",
    "BalanceMonitor",
    "BalanceUnavailable",
    "ConfigurationError",
    "Forecast",
    "GuardError",
    "GuardEvent",
    "InsufficientBalance",
    "ProviderAuthError",
    "ProviderResponseError",
    "RequireBalance",
    "Reservation",
    "Threshold",
    "get_default_guard",
    "require_balance",
    "set_default_guard",
]
