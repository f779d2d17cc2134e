"""
What the operating views (Prometheus, OpenTelemetry, ``watch``) read from a
low-balance monitor, and the figures they share.

The monitor is optional and duck-typed: any object with ``watched()``,
``level()`` and ``alert_counts()`` as below (`guard.BalanceMonitor` once it
exists) can be passed as ``monitor=``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from decimal import Decimal

__all__ = [
    "ALERT_OUTCOMES",
    "MonitorLike",
    "WatchedLike",
    "alert_counts",
    "thresholds",
]

ALERT_OUTCOMES = ("delivered", "failed", "dropped")
"""What became of an alert: every outcome is exported, at 0 until it happens."""


class WatchedLike(Protocol):
    """
    One account a monitor watches.
    """

    @property
    def provider(self) -> str: ...

    @property
    def account(self) -> str: ...

    @property
    def currency(self) -> str: ...

    @property
    def thresholds(self) -> Iterable[tuple[Decimal, str]]: ...


class MonitorLike(Protocol):
    """
    The part of a low-balance monitor the operating views read.
    """

    def watched(self) -> Iterable[WatchedLike]: ...

    def level(self, provider: str, account: str) -> str | None: ...

    def alert_counts(self) -> Mapping[tuple[str, str], int]: ...


def thresholds(
    monitor: MonitorLike | None,
) -> dict[tuple[str, str], tuple[tuple[Decimal, str], ...]]:
    """
    The thresholds of every watched account, by ``(provider, account)``.
    """
    if monitor is None:
        return {}
    return {
        (watched.provider, watched.account): tuple(watched.thresholds)
        for watched in monitor.watched()
    }


def alert_counts(monitor: MonitorLike | None) -> dict[tuple[str, str], int]:
    """
    Alerts by ``(level, outcome)``: every level a threshold names, with
    every outcome, so that the series exist before the first alert.
    """
    if monitor is None:
        return {}
    counts = {
        (level, outcome): 0
        for watched in monitor.watched()
        for _, level in watched.thresholds
        for outcome in ALERT_OUTCOMES
    }
    counts.update(monitor.alert_counts())
    return counts
