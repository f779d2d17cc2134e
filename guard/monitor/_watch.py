"""
The accounts a `BalanceMonitor` watches: the public `Watched` view, what
the monitor keeps per account, and the checks of its options.
"""

from __future__ import annotations

import collections
import time
from decimal import Decimal  # noqa: TC003 - attrs resolves the annotations
from typing import TYPE_CHECKING

import attrs

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .._accounts import Tracked
    from ..typing import Provider
    from ._delivery import Channel
    from ._values import Forecast, Threshold

__all__ = ["Watched"]

# Spending samples kept per account for a forecast.
MAX_SAMPLES = 100_000


@attrs.frozen
class Watched:
    """
    One account a `BalanceMonitor` watches, from `BalanceMonitor.watched`.

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest.
        currency: The unit of the thresholds.
        thresholds: ``(below, level)`` pairs, highest first.
    """

    provider: str
    account: str
    currency: str
    thresholds: tuple[tuple[Decimal, str], ...]


class _Watch:
    """
    What a monitor knows of one watched account (its loop's only).
    """

    __slots__ = (
        "by_key",
        "channels",
        "fired",
        "forecasts",
        "peek",
        "provider",
        "samples",
        "spent",
        "thresholds",
        "tracked",
    )

    def __init__(
        self,
        provider: Provider,
        tracked: Tracked,
        thresholds: list[Threshold],
        forecasts: list[Forecast],
    ) -> None:
        self.provider = provider
        self.tracked = tracked
        # Highest first: alerts of one reading come out lowest level last.
        self.thresholds = sorted(thresholds, key=lambda t: t.below, reverse=True)
        self.forecasts = forecasts
        self.by_key: dict[str, Threshold | Forecast] = {
            t.key: t for t in self.thresholds
        }
        self.by_key.update((f.key, f) for f in forecasts)
        self.channels: list[Channel] = []
        # (monotonic time, what calls spent so far) each time it changed;
        # the oldest is the base of the forecast's window.
        self.spent = tracked.stats.spent
        self.samples: collections.deque[tuple[float, Decimal]] = collections.deque(
            [(time.monotonic(), self.spent)], maxlen=MAX_SAMPLES
        )
        self.fired: frozenset[str] = frozenset()
        self.peek = False


def now_us() -> int:
    return time.time_ns() // 1_000


def count(name: str, value: object, *, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def positive(name: str, value: object, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok) or value != value:
        raise ConfigurationError(
            f"{name} must be {'>= 0' if zero_ok else '> 0'} seconds, got {value!r}"
        )
    return float(value)
