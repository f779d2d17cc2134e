"""
The accounts a guard has seen: their identity, what the guard knows of each
besides the store's state, and what it counted.
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - attrs resolves the annotations
import functools
import hashlib
import weakref
from typing import TYPE_CHECKING, Any

import attrs

from ._balance import Balance
from ._money import MONEY, ZERO
from .stores import Account

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterator, Mapping
    from decimal import Decimal

    from ._lane import Lane
    from .errors import BalanceUnavailable, ProviderAuthError
    from .stores import Entry
    from .typing import Provider

__all__ = ["AccountState", "Accounts", "Stats", "Tracked"]

FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds, in seconds, of the fetch-duration histogram's buckets."""


class Stats:
    """
    What a guard counted for one account since it started.

    Plain integers and a Decimal, bumped on the guarded call's path: reading
    them (metrics, a status page) costs the call nothing.
    """

    __slots__ = (
        "allowed",
        "failed_open",
        "fetch_buckets",
        "fetch_count",
        "fetch_seconds",
        "fetches_auth",
        "fetches_bad_response",
        "fetches_ok",
        "fetches_unavailable",
        "refused",
        "spent",
        "unavailable",
        "unavailable_since",
    )

    def __init__(self) -> None:
        self.allowed = 0
        self.refused = 0
        self.unavailable = 0
        self.failed_open = 0
        self.fetches_ok = 0
        self.fetches_unavailable = 0
        self.fetches_auth = 0
        self.fetches_bad_response = 0
        self.fetch_count = 0
        self.fetch_seconds = 0.0
        self.fetch_buckets = [0] * len(FETCH_BUCKETS)
        self.spent = ZERO
        # When the provider last became unreachable (UTC); None while it
        # answers.
        self.unavailable_since: dt.datetime | None = None

    def fetched(self, seconds: float) -> None:
        self.fetch_count += 1
        self.fetch_seconds += seconds
        for i, bound in enumerate(FETCH_BUCKETS):
            if seconds <= bound:
                self.fetch_buckets[i] += 1


def account_digest(provider: Provider) -> str:
    """
    The non-secret digest naming *provider*'s account in cache keys, events
    and the history.
    """
    # Hash again: a user's account_id is trusted to be non-secret, but the
    # key should not depend on that.
    identity = f"{provider.name}\0{provider.account_id}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


class Tracked:
    """
    What a guard knows of one account besides the store's state: its
    provider, the fetch in flight, the fetch back-off and auth cooldown, the
    last balance seen, and its counters.

    *fetches* counts the balances fetched and stored, so that a check that
    missed can tell a fetch finished meanwhile.
    """

    __slots__ = (
        "account",
        "auth_error",
        "auth_until",
        "backoff",
        "digest",
        "down_error",
        "down_until",
        "fetches",
        "inflight",
        "inflight_at",
        "key_type",
        "lane",
        "last",
        "peek",
        "provider",
        "refreshed_at",
        "refreshing",
        "reported_at",
        "stats",
        "typed",
    )

    def __init__(self, provider: Provider, account: Account) -> None:
        self.provider = provider
        self.account = account
        # The non-secret account digest: the last part of the store key.
        self.digest = account.key.rpartition(":")[2]
        self.fetches = 0
        self.inflight: asyncio.Task[Entry | None] | None = None
        self.inflight_at = 0.0  # when it began (time.monotonic())
        self.auth_until = 0.0
        self.auth_error: ProviderAuthError | None = None
        # After a failed fetch, new fetches fail fast until down_until.
        self.down_until = 0.0
        self.down_error: BalanceUnavailable | None = None
        self.backoff = 0.0
        self.last: Entry | None = None
        # The guard's fast path on this account (``_lane.py``), once made.
        self.lane: Lane | None = None
        # The store's current balance, when it can tell without I/O.
        self.peek: Callable[[Account], Entry | None] | None = None
        # The background refresh pending or running, and when the last began.
        self.refreshing: asyncio.Task[None] | None = None
        self.refreshed_at = float("-inf")
        # The provider's own time of the last balance fetched, if it said.
        self.reported_at: dt.datetime | None = None
        self.stats = Stats()
        # "SANDBOX" or "PRODUCTION" once the provider said (*typed*: it was
        # asked).
        self.key_type: str | None = None
        self.typed = False

    @property
    def sandbox(self) -> bool:
        """Whether the provider said its key is a sandbox key."""
        return self.key_type == "SANDBOX"

    def seen(self) -> Entry | None:
        """
        The balance now, if the store can tell without I/O; else the last
        one a check or a fetch saw.
        """
        peek = self.peek
        entry = None if peek is None else peek(self.account)
        return self.last if entry is None else entry

    def replace_provider(self, provider: Provider) -> None:
        # Same account, other settings (a rotated password, a new timeout):
        # use the newest, and let it try its credentials.
        self.provider = provider
        self.typed = False
        self.auth_until = 0.0
        self.auth_error = None


@attrs.frozen
class AccountState:
    """
    One account as a `guard.BalanceGuard` sees it now, from
    `BalanceGuard.accounts`.

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest (also in cache keys).
        currency: The unit of the balance.
        balance: The last balance the guard saw (possibly debited since it
            was fetched); None if it never learned one.
        held: What this process's running calls hold.
        calls: Guarded calls by outcome: ``allowed``, ``refused``,
            ``unavailable``, ``failed_open``.
        fetches: Balance fetches by outcome: ``ok``, ``unavailable``,
            ``auth``, ``bad_response``.
        spent: The sum of the amounts of calls settled as spent.
        fetch_seconds_count: Fetches timed.
        fetch_seconds_sum: Their total duration.
        fetch_seconds_buckets: Cumulative counts of fetches that took at
            most each bound, as ``(bound, count)`` pairs.
        unavailable_since: When the provider last stopped answering; None
            while it answers.
        key_type: ``"SANDBOX"`` (its sends never move money) or
            ``"PRODUCTION"``, for a provider that tells (OneClickDZ); None
            when unknown.
    """

    provider: str
    account: str
    currency: str
    balance: Balance | None
    held: Decimal
    calls: Mapping[str, int]
    fetches: Mapping[str, int]
    spent: Decimal
    fetch_seconds_count: int
    fetch_seconds_sum: float
    fetch_seconds_buckets: tuple[tuple[float, int], ...]
    unavailable_since: dt.datetime | None
    key_type: str | None = None

    @property
    def sandbox(self) -> bool:
        """Whether the account's key is a sandbox key."""
        return self.key_type == "SANDBOX"

    @property
    def available(self) -> Decimal | None:
        """The balance less what is held here; None if it is unknown."""
        if self.balance is None:
            return None
        return MONEY.subtract(self.balance.amount, self.held)


class Accounts:
    """
    The accounts of one guard, found by provider object or by identity.

    Two provider objects for the same account (same name and ``account_id``)
    share one `Tracked`: their holds and balance are one.
    """

    def __init__(self, namespace: str, on_new: Callable[[Tracked], None]) -> None:
        self.namespace = namespace
        self._on_new = on_new
        self._by_identity: dict[tuple[str, str], Tracked] = {}
        self._by_id: dict[int, tuple[weakref.ref[Provider], Tracked]] = {}

    def __len__(self) -> int:
        return len(self._by_identity)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._by_identity.values()))

    def get(self, provider: Provider) -> Tracked:
        # Keyed by id(): cheaper than hashing a frozen attrs provider. The
        # weak reference tells a reused id from the original object.
        found = self._by_id.get(id(provider))
        if found is not None and found[0]() is provider:
            return found[1]
        tracked = self._by_identity_of(provider)
        key = id(provider)
        try:
            ref = weakref.ref(provider, functools.partial(_forget, self._by_id, key))
        except TypeError:  # a provider of the user's own without __weakref__
            return tracked
        self._by_id[key] = (ref, tracked)
        return tracked

    def _by_identity_of(self, provider: Provider) -> Tracked:
        name, account_id = provider.name, provider.account_id
        identity = (name, account_id)
        tracked = self._by_identity.get(identity)
        if tracked is None:
            account = Account(
                f"{self.namespace}:{name}:{account_digest(provider)}",
                name,
                provider.currency,
            )
            tracked = self._by_identity[identity] = Tracked(provider, account)
            self._on_new(tracked)
        elif tracked.provider != provider:
            tracked.replace_provider(provider)
        return tracked

    @staticmethod
    def state(tracked: Tracked, held: Decimal) -> AccountState:
        stats = tracked.stats
        entry = tracked.seen()
        provider = tracked.provider
        balance = (
            None
            if entry is None
            else Balance(
                provider=provider.name,
                amount=entry.amount,
                currency=provider.currency,
                fetched_at=entry.fetched_at,
                sandbox=tracked.sandbox,
            )
        )
        # fetched() counts a fetch in every bucket it fits: already cumulative.
        buckets = tuple(zip(FETCH_BUCKETS, stats.fetch_buckets, strict=True))
        return AccountState(
            provider=provider.name,
            account=tracked.digest,
            currency=provider.currency,
            balance=balance,
            held=held,
            calls={
                "allowed": stats.allowed,
                "refused": stats.refused,
                "unavailable": stats.unavailable,
                "failed_open": stats.failed_open,
            },
            fetches={
                "ok": stats.fetches_ok,
                "unavailable": stats.fetches_unavailable,
                "auth": stats.fetches_auth,
                "bad_response": stats.fetches_bad_response,
            },
            spent=stats.spent,
            fetch_seconds_count=stats.fetch_count,
            fetch_seconds_sum=stats.fetch_seconds,
            fetch_seconds_buckets=buckets,
            unavailable_since=stats.unavailable_since,
            key_type=tracked.key_type,
        )


def _forget(ids: dict[int, Any], key: int, _: object) -> None:
    ids.pop(key, None)
