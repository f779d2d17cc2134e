"""
Refuse provider-spending calls that a prepaid balance cannot cover.
"""

from __future__ import annotations

from ._balance import Balance
from ._events import GuardEvent
from ._guard import BalanceGuard, Reservation
from ._require import (
    RequireBalance,
    get_default_guard,
    require_balance,
    set_default_guard,
)
from .errors import (
    AmountError,
    BalanceUnavailable,
    ConfigurationError,
    GuardError,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
)

__version__ = "0.1.0"

__all__ = [
    "AmountError",
    "Balance",
    "BalanceGuard",
    "BalanceUnavailable",
    "ConfigurationError",
    "GuardError",
    "GuardEvent",
    "InsufficientBalance",
    "ProviderAuthError",
    "ProviderResponseError",
    "RequireBalance",
    "Reservation",
    "get_default_guard",
    "require_balance",
    "set_default_guard",
]
