"""
Low-balance alerts: `BalanceMonitor` watches accounts through a guard and
tells notifiers when a balance crosses a `Threshold` (once per crossing,
once per fleet), recovers, or is `Forecast` to run out.

The names are also exported by `guard`.
"""

from __future__ import annotations

from ._delivery import Notifier, Outcome
from ._monitor import BalanceMonitor, Watched
from ._values import DEFAULT_HYSTERESIS, AlertKind, BalanceAlert, Forecast, Threshold

__all__ = [
    "AlertKind",
    "BalanceAlert",
    "BalanceMonitor",
    "DEFAULT_HYSTERESIS",
    "Forecast",
    "Notifier",
    "Outcome",
    "Threshold",
    "Watched",
]
