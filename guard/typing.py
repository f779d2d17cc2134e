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
    from ._guard import BalanceGuard
    from .stores import Account, Entry, Hold, Outcome, Short, Ticket

__all__ = [
    "AmountLike",
    "AmountSpec",
    "EventHook",
    "History",
    "Provider",
    "Store",
    "TicketStore",
]

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


@runtime_checkable
class Store(Protocol):
    """
    **Protocol:** where a `guard.BalanceGuard` keeps balances and holds.

    guard ships `guard.stores.MemoryStore` (this process) and
    `guard.stores.RedisStore` (shared between processes). A store answers,
    atomically for one account, whether there is a usable cached balance,
    whether it covers an amount once the running calls' holds are taken
    off, and if so holds that amount. The guard does everything else
    (fetching, retries, policy) the same way for every store.

    A failure to reach the store's backend is raised as
    `guard.BalanceUnavailable`; every operation is bounded in time.
    """

    @property
    def ttl(self) -> float:
        """
        Seconds a fetched balance is trusted.
        """

    async def read(self, account: Account) -> Entry | None:
        """
        Return the account's usable cached balance, or None.
        """

    async def try_hold(self, account: Account, amount: Decimal) -> Hold | Short | None:
        """
        Hold *amount* if the cached balance, less the holds, covers it.

        Returns the `Hold`; a `Short` when the balance does not cover it;
        None when there is no usable cached balance.
        """

    def held(self, account: Account) -> Decimal:
        """
        Return the sum held by this process's running calls.
        """

    async def begin_fetch(self, account: Account) -> Ticket | Entry:
        """
        Take leave to fetch the balance: a `Ticket` for `put`, or the
        `Entry` another process fetched meanwhile (then nothing is fetched).
        """

    async def abort_fetch(self, account: Account, ticket: Ticket) -> None:
        """
        Give up the fetch *ticket* began (it failed).
        """

    async def put(
        self, account: Account, amount: Decimal, ticket: Ticket
    ) -> Entry | None:
        """
        Cache a fetched balance; None when it was invalidated since *ticket*
        (a value fetched before an invalidation is never stored after it).
        """

    async def release(self, hold: Hold, *, outcome: Outcome) -> None:
        """
        Drop *hold* and settle the cached balance as *outcome* says
        (``"debit"``, ``"spent"`` or ``"forget"``, see `guard.stores.Outcome`).

        Must not leave the hold behind if cancelled while it awaits.
        """

    async def invalidate(self, account: Account) -> None:
        """
        Forget the cached balance; fetches in flight won't store theirs.
        """

    async def close(self) -> None:
        """
        Release the store's connections.
        """


@runtime_checkable
class TicketStore(Store, Protocol):
    """
    **Protocol:** a `Store` that can also store a balance a provider
    reported after a spend (`guard.Reservation.report_balance`), safely.

    The guard takes a `ticket` when a call is held, before its spend is
    sent. When the spend succeeded with a reported balance, it releases the
    hold with the ``"spent"`` outcome (which must not move the generation)
    and calls `put` with that ticket and the reported balance plus the
    call's own amount: `put` drops the value if the balance was invalidated
    since the ticket, and subtracts whatever was settled as spent since
    (this call included). A store without `ticket` settles such calls as
    usual.

    .. versionadded:: 0.2
    """

    async def ticket(self, account: Account) -> Ticket:
        """
        Return a lock-free `Ticket` for `put`: the account's generation
        now, with an empty token (no leave to fetch is taken).
        """


@runtime_checkable
class History(Protocol):
    """
    **Protocol:** where a `guard.BalanceGuard` given ``history=`` records
    its balances and settled calls, such as a `guard.history.SQLiteHistory`.
    """

    def attach(self, guard: BalanceGuard) -> None:
        """
        Start recording *guard*'s events (it calls this when made); must not
        block.
        """

    async def detach(self, guard: BalanceGuard) -> None:
        """
        Stop recording *guard*'s events and write what is queued (it calls
        this when it closes).
        """
