"""
What a `BalanceMonitor` watches for and what it tells: `Threshold`,
`Forecast` and `BalanceAlert`.
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - attrs resolves the annotations
from decimal import Decimal
from typing import Literal, TypeAlias

import attrs

from .._money import MONEY, to_amount
from ..errors import ConfigurationError

__all__ = [
    "AlertKind",
    "BalanceAlert",
    "DEFAULT_HYSTERESIS",
    "Forecast",
    "Threshold",
]

AlertKind: TypeAlias = Literal["low", "recovered"]

DEFAULT_HYSTERESIS = Decimal("0.05")
"""
A threshold's default hysteresis, as a fraction of its amount: a threshold
of 1,000 DZD re-arms once the balance is above 1,050 DZD.
"""


def _level(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"level must be a non-empty str, got {value!r}")
    return value.strip()


def _below(value: object) -> Decimal:
    return to_amount(value, name="below")


def _hysteresis(value: object) -> Decimal | None:
    return None if value is None else to_amount(value, name="hysteresis")


@attrs.frozen
class Threshold:
    """
    A balance under which a `BalanceMonitor` alerts, once per crossing.

    Args:
        below: An amount in the account's currency (``int``, ``Decimal``,
            ``str``): a balance at or below it is low.
        level: What the alert is called (``"warning"``, ``"critical"``...).
        hysteresis: How far above *below* the balance must rise before the
            threshold re-arms (and a ``"recovered"`` alert tells so).
            Default: `DEFAULT_HYSTERESIS` (5 %) of *below*.

    Raises:
        AmountError: *below* or *hysteresis* is not a non-negative amount.
        ConfigurationError: *level* is empty.

    .. versionadded:: 0.2
    """

    below: Decimal = attrs.field(converter=_below)
    level: str = attrs.field(default="warning", kw_only=True, converter=_level)
    hysteresis: Decimal | None = attrs.field(
        default=None, kw_only=True, converter=_hysteresis
    )

    @property
    def rearm_above(self) -> Decimal:
        """The balance above which the threshold re-arms."""
        margin = self.hysteresis
        if margin is None:
            margin = MONEY.multiply(self.below, DEFAULT_HYSTERESIS)
        return MONEY.add(self.below, margin)

    @property
    def key(self) -> str:
        """Names the threshold in the alert state (its amount and level)."""
        return f"t:{self.below.normalize():f}:{self.level}"


def _hours(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ConfigurationError(f"hours must be a number, got {value!r}")
    hours = float(value)
    if not 0 < hours < 24 * 366:
        raise ConfigurationError(f"hours must be above 0 and below a year, got {value}")
    return hours


def _window(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"window must be a number of seconds, got {value!r}")
    if not 60 <= value <= 30 * 86400:
        raise ConfigurationError(
            f"window must be between 60 s and 30 days, got {value!r}"
        )
    return float(value)


@attrs.frozen
class Forecast:
    """
    Alert once when the account is expected to run out within *hours*, at
    the rate this process's guarded calls spent over the last *window*
    seconds (settled spends only: refills don't count).

    It re-arms once the forecast is above ``hours * 1.05`` again (a refill,
    or spending slowed down), silently.

    Args:
        hours: Alert when the time to empty falls below this.
        level: What the alert is called.
        window: Seconds of spending the rate is measured over (default one
            hour; at least a minute).

    .. versionadded:: 0.2
    """

    hours: float = attrs.field(converter=_hours)
    level: str = attrs.field(default="warning", kw_only=True, converter=_level)
    window: float = attrs.field(default=3600.0, kw_only=True, converter=_window)

    @property
    def key(self) -> str:
        """Names the forecast in the alert state."""
        return f"f:{self.hours:g}:{self.level}"


def _amount(value: Decimal) -> str:
    # 1000 -> "1,000"; 1000.5 -> "1,000.5": as the user wrote it.
    return f"{value.normalize():,f}" if value == value.to_integral() else f"{value:,}"


@attrs.frozen
class BalanceAlert:
    """
    What a `BalanceMonitor` tells its notifiers.

    Attributes:
        kind: ``"low"`` (the balance crossed a threshold downward, or is
            forecast to run out soon) or ``"recovered"`` (a refill re-armed
            thresholds; the alert names the highest).
        level: The threshold's (or forecast's) level.
        threshold: The threshold's amount; for a forecast, the balance the
            recent spending rate would use up in its hours (an estimate).
        balance: The balance that caused the alert.
        provider: The provider's name.
        account: The non-secret account digest.
        currency: The unit of the amounts.
        at: When the alert was raised (UTC).
        hours_left: For a forecast: the hours the balance is expected to
            last; None otherwise.

    ``str(alert)`` is one readable sentence.

    .. versionadded:: 0.2
    """

    kind: AlertKind
    level: str
    threshold: Decimal
    balance: Decimal
    provider: str
    account: str
    currency: str
    at: dt.datetime
    hours_left: float | None = None

    def __str__(self) -> str:
        balance = f"{self.balance:,.2f} {self.currency}"
        threshold = f"{_amount(self.threshold)} {self.currency}"
        if self.kind == "recovered":
            return (
                f"{self.provider}: {balance}, back above the {threshold} "
                f"{self.level} threshold"
            )
        if self.hours_left is not None:
            return (
                f"{self.provider}: {balance} left, runs out in about "
                f"{self.hours_left:.1f} h at the recent spending rate "
                f"({self.level} forecast)"
            )
        return (
            f"{self.provider}: {balance} left, at or below the {threshold} "
            f"{self.level} threshold"
        )

    def as_dict(self) -> dict[str, str]:
        """
        Every field as a string (amounts exact, ``at`` in ISO 8601), plus
        ``text``: `str` of the alert. What `guard.notify.Webhook` posts.
        """
        return {
            "kind": self.kind,
            "level": self.level,
            "threshold": str(self.threshold),
            "balance": str(self.balance),
            "provider": self.provider,
            "account": self.account,
            "currency": self.currency,
            "at": self.at.isoformat(),
            "hours_left": "" if self.hours_left is None else f"{self.hours_left:.2f}",
            "text": str(self),
        }
