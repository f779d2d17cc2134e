"""
The figures the operating views (Prometheus, OpenTelemetry, ``watch``)
share: held and available as each store knows them, and what they read
from a low-balance monitor (`guard.BalanceMonitor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._money import MONEY

if TYPE_CHECKING:
    from collections.abc import Mapping
    from decimal import Decimal

    from ._accounts import AccountState
    from .monitor import BalanceMonitor

__all__ = [
    "ALERT_OUTCOMES",
    "alert_counts",
    "held_and_available",
    "thresholds",
]

ALERT_OUTCOMES = ("delivered", "failed", "dropped")
"""What became of an alert: every outcome is exported, at 0 until it happens."""


def held_and_available(
    state: AccountState, everywhere: Mapping[tuple[str, str], Decimal] | None
) -> tuple[Decimal | None, Decimal | None]:
    """
    What running calls hold on the account and the balance less that: this
    process's with a store of this process (*everywhere* None), every
    process's with a shared one (None, None when that is not known).
    """
    if everywhere is None:
        return state.held, state.available
    held = everywhere.get((state.provider, state.account))
    if held is None or state.balance is None:
        return held, None
    return held, MONEY.subtract(state.balance.amount, held)


def thresholds(
    monitor: BalanceMonitor | None,
) -> dict[tuple[str, str], tuple[tuple[Decimal, str], ...]]:
    """
    The thresholds of every watched account, by ``(provider, account)``.
    """
    if monitor is None:
        return {}
    return {
        (watched.provider, watched.account): watched.thresholds
        for watched in monitor.watched()
    }


def alert_counts(monitor: BalanceMonitor | None) -> dict[tuple[str, str], int]:
    """
    Alerts by ``(level, outcome)``: every level a threshold names, with
    every outcome, so that the series exist before the first alert.
    """
    if monitor is None:
        return {}
    counts: dict[tuple[str, str], int] = {
        (level, outcome): 0
        for watched in monitor.watched()
        for _, level in watched.thresholds
        for outcome in ALERT_OUTCOMES
    }
    for key, count in monitor.alert_counts().items():
        counts[key] = count
    return counts
