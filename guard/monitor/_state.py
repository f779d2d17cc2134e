"""
The alert state machine: which thresholds of an account have fired.

A reading of the balance turns into *wishes*, one per threshold it says
something about: fire (the balance is at or below it) or arm (the balance
is above it plus its hysteresis); in between, nothing. A state applies the
wishes atomically and returns the *transitions* it made: only a wish that
changes the state is a transition, and only a transition is alerted. Where
the state is shared (Redis), each transition is made by one process, so
each alert is delivered once between them.

A reading older than one already applied is ignored, so a slow process's
stale balance can't undo a newer one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["AlertState", "Applied", "MemoryAlertState", "Wish"]


@attrs.frozen
class Wish:
    """
    What a reading says of one threshold: *fire* (True) or arm (False).
    """

    key: str
    fire: bool


@attrs.frozen
class Applied:
    """
    What applying a reading did.

    Attributes:
        fired: Keys that went from armed to fired, in the wishes' order.
        armed: Keys that went from fired to armed, in the wishes' order.
        now_fired: Every key fired after the reading (for `level`).
    """

    fired: tuple[str, ...] = ()
    armed: tuple[str, ...] = ()
    now_fired: frozenset[str] | None = None


class AlertState(Protocol):
    """
    Where a monitor keeps which thresholds fired, per account.
    """

    async def apply(self, account: str, at_us: int, wishes: Sequence[Wish]) -> Applied:
        """
        Apply *wishes* of a reading made at *at_us* (µs since the epoch)
        atomically; ignore a reading older than the last applied (then
        ``now_fired`` is None).
        """

    async def close(self) -> None:
        """
        Release what the state holds.
        """


class MemoryAlertState:
    """
    Alert state in this process (one event loop touches it).
    """

    def __init__(self) -> None:
        self._fired: dict[str, set[str]] = {}
        self._at: dict[str, int] = {}

    async def apply(self, account: str, at_us: int, wishes: Sequence[Wish]) -> Applied:
        if at_us < self._at.get(account, 0):
            return Applied()
        self._at[account] = at_us
        fired_now = self._fired.setdefault(account, set())
        fired: list[str] = []
        armed: list[str] = []
        for wish in wishes:
            if wish.fire and wish.key not in fired_now:
                fired_now.add(wish.key)
                fired.append(wish.key)
            elif not wish.fire and wish.key in fired_now:
                fired_now.discard(wish.key)
                armed.append(wish.key)
        return Applied(tuple(fired), tuple(armed), frozenset(fired_now))

    async def close(self) -> None:
        return None
