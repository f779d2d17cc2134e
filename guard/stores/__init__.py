"""
Where a `guard.BalanceGuard` keeps balances and holds.

`MemoryStore` keeps them in this process (balances in any aiocache cache);
`RedisStore` shares them between processes through Redis (the ``redis``
extra); `FallbackStore` stands in for a shared store, in process, while it
is down. Any object implementing `guard.typing.Store` can be passed as
``BalanceGuard(store=...)``; the values below are what a store takes and
returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._fallback import FallbackStore
from ._memory import MemoryStore
from ._values import Account, Entry, Hold, Outcome, Short, Ticket

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "Account",
    "Entry",
    "FallbackStore",
    "Hold",
    "MemoryStore",
    "Outcome",
    "RedisStore",
    "Short",
    "Ticket",
]


def __getattr__(name: str) -> Any:
    # redis-py is an extra: imported only when asked for.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
