from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

from .._money import to_amount
from ..errors import BalanceUnavailable, GuardError

if TYPE_CHECKING:
    from decimal import Decimal

    import aiohttp

    from ..typing import AmountLike

__all__ = ["InMemoryProvider"]

_ids = itertools.count(1)


class InMemoryProvider:
    """
    A provider whose balance lives in this object: no network.

    It implements `guard.typing.Provider`, so a guard treats it like any
    other. Set `balance`, make the next fetches fail with `fail_next`, slow
    them with *delay*, and count them with `fetches`.

    Args:
        balance: The starting balance.
        name: Provider name shown in errors.
        currency: Unit of the balance.
        account_id: Account identity; a fresh one per object by default.
        delay: Seconds each fetch takes.
    """

    def __init__(
        self,
        balance: AmountLike = 0,
        *,
        name: str = "memory",
        currency: str = "DZD",
        account_id: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.balance = to_amount(balance, name="balance")
        self.name = name
        self.currency = currency
        self.account_id = account_id or f"memory-{next(_ids)}"
        self.delay = delay
        self.fetches = 0
        self._failures: list[GuardError] = []

    def __repr__(self) -> str:
        return (
            f"<InMemoryProvider {self.name} account_id={self.account_id!r} "
            f"balance={self.balance} {self.currency}>"
        )

    def fail_next(self, error: GuardError | None = None, *, times: int = 1) -> None:
        """
        Make the next *times* fetches raise *error* (default: a transient
        `BalanceUnavailable`).
        """
        if error is None:
            error = BalanceUnavailable("injected failure", provider=self.name)
        self._failures.extend([error] * times)

    def spend(self, amount: AmountLike) -> Decimal:
        """
        Take *amount* off the balance, as a real provider would on a send;
        return what is left.
        """
        self.balance -= to_amount(amount)
        return self.balance

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        """
        Return `balance` after *delay*, or raise the next injected failure.
        """
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._failures:
            raise self._failures.pop(0)
        return self.balance
