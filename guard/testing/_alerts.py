"""
Collecting the alerts `guard.BalanceMonitor` raises, for tests.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..monitor._monitor import capture

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..monitor import BalanceAlert

__all__ = ["CapturedAlerts", "capture_alerts"]


class CapturedAlerts(list["BalanceAlert"]):
    """
    The alerts every `guard.BalanceMonitor` of this process raised while
    captured, in order: a list, with shortcuts for assertions.
    """

    def kinds(self) -> list[tuple[str, str]]:
        """``(kind, level)`` of each alert, in order."""
        return [(alert.kind, alert.level) for alert in self]


@contextlib.contextmanager
def capture_alerts() -> Iterator[CapturedAlerts]:
    """
    Collect every alert a monitor raises in the block (when it decides to
    alert, before its notifiers are called; ``await monitor.flush()``
    first to see the readings taken so far).

    ::

        with capture_alerts() as alerts:
            ...
            await monitor.flush()
        assert alerts.kinds() == [("low", "critical")]
    """
    alerts = CapturedAlerts()
    capture.append(alerts)
    try:
        yield alerts
    finally:
        capture.remove(alerts)
