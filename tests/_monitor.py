"""
A stand-in for the low-balance monitor (`guard.BalanceMonitor`): exactly the
contract the operating views read, so that their monitor series are tested
before the monitor itself is on this branch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping


@attrs.frozen
class Watched:
    provider: str
    account: str
    currency: str
    thresholds: tuple[tuple[Decimal, str], ...]


@attrs.define
class StandInMonitor:
    watching: list[Watched] = attrs.field(factory=list)
    levels: dict[tuple[str, str], str] = attrs.field(factory=dict)
    counts: dict[tuple[str, str], int] = attrs.field(factory=dict)

    def watched(self) -> list[Watched]:
        return list(self.watching)

    def level(self, provider: str, account: str) -> str | None:
        return self.levels.get((provider, account))

    def alert_counts(self) -> Mapping[tuple[str, str], int]:
        return dict(self.counts)


def watching(
    provider: str, account: str, currency: str, **levels: int
) -> StandInMonitor:
    """A monitor watching one account, with thresholds by level name."""
    thresholds = tuple(
        sorted(((Decimal(below), level) for level, below in levels.items()))
    )
    return StandInMonitor([Watched(provider, account, currency, thresholds)])
