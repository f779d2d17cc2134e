"""
Types for extending guard and annotating code that uses it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    import aiohttp

    from ._events import GuardEvent

__all__ = ["AmountLike", "AmountSpec", "EventHook", "Provider"]

AmountLike: TypeAlias = int | Decimal | str | float
"""
An amount of money: exact as ``int``, ``Decimal`` or ``str``; a ``float`` is
read through ``str()``, so ``0.1`` means ``Decimal("0.1")``.
"""

AmountSpec: TypeAlias = (
    AmountLike | Callable[..., AmountLike] | Callable[..., Awaitable[AmountLike]]
)
"""
What `require_balance` takes as *amount*: an amount, or a sync or async
callable that receives the guarded function's arguments and returns one.
"""

EventHook: TypeAlias = "Callable[[GuardEvent], None]"
"""
A callable that `BalanceGuard` calls with each `GuardEvent`; it must not
block and should not raise (what it raises is logged and dropped).
"""


@runtime_checkable
class Provider(Protocol):
    """
    **Protocol:** a prepaid account whose balance guard can read.

    Implement it to guard a provider guard does not ship; see
    ``examples/custom_provider.py``.
    """

    @property
    def name(self) -> str:
        """
        Short lowercase provider name, used in errors, logs and cache keys.
        """

    @property
    def currency(self) -> str:
        """
        Unit of the balance, such as ``"DZD"`` or ``"credits"``.
        """

    @property
    def account_id(self) -> str:
        """
        Stable identity of the account that is safe to show: two provider
        objects for the same account must return the same value. Never a
        credential; hash one if that is all there is.
        """

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        """
        Ask the provider for the current balance, once.

        guard bounds the call with its fetch timeout and retries it.

        Raises:
            guard.ProviderAuthError: Credentials refused; never retried.
            guard.ProviderResponseError: Unreadable answer; never retried.
            guard.BalanceUnavailable: Anything transient; retried.
        """
