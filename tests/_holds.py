"""
Reservations held open across statements, for tests that interleave many
of them (``async with guard.reserve(...)`` nests them instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from guard import BalanceGuard, Reservation
    from guard.typing import AmountLike, Provider


class Held:
    """An entered ``guard.reserve()`` block, exited by `release`."""

    def __init__(
        self,
        block: AbstractAsyncContextManager[Reservation],
        reservation: Reservation,
    ) -> None:
        self.block = block
        self.reservation = reservation


async def hold(
    guard: BalanceGuard,
    provider: Provider,
    amount: AmountLike,
    *,
    settle: str | None = None,
) -> Held:
    """Enter ``guard.reserve(provider, amount)`` and keep it open."""
    block = guard.reserve(provider, amount, settle=settle)  # type: ignore[arg-type]
    return Held(block, await block.__aenter__())


async def release(held: Held, *, ok: bool) -> None:
    """Leave the block as a success (*ok*) or as a failed spend."""
    if ok:
        await held.block.__aexit__(None, None, None)
    else:
        error = RuntimeError("the spend failed")
        await held.block.__aexit__(RuntimeError, error, None)
