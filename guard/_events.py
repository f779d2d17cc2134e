"""
What a guard tells its hooks: `GuardEvent`, and the hooks themselves.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

import attrs

from ._logs import fields, log
from .errors import ConfigurationError

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable, Iterator
    from decimal import Decimal

    from ._accounts import Tracked
    from .typing import EventHook

__all__ = ["EventKind", "GuardEvent", "Hooks", "is_async"]

EventKind: TypeAlias = Literal[
    "fetched",
    "settled",
    "refused",
    "unavailable",
    "failed_open",
    "auth_cooldown",
    "degraded",
]


@attrs.define(frozen=True)
class GuardEvent:
    """
    Something a `BalanceGuard` decided or learned, passed to its hooks.

    Attributes:
        kind: ``"fetched"`` (a balance came from the provider),
            ``"settled"`` (a guarded call ended: *ok* says whether it
            spent), ``"refused"`` (`InsufficientBalance` raised), ``"unavailable"``
            (the balance could not be learned), ``"failed_open"`` (same, but
            the call went ahead under ``on_unavailable="open"``),
            ``"auth_cooldown"`` (credentials refused; the account is not
            asked again until the cooldown ends), ``"degraded"`` (the shared
            store is unreachable: this process checks and holds on its own;
            once per outage).
        provider: The provider's name.
        account_id: The provider's non-secret account identity.
        account: The non-secret account digest (as in cache keys).
        currency: The unit of the amounts.
        amount: The balance for ``"fetched"``, the call's amount otherwise.
        available: What was available, for ``"refused"``.
        ok: For ``"settled"``: whether the call succeeded (its amount counts
            as spent).
        error: The error behind ``"unavailable"``, ``"failed_open"``,
            ``"auth_cooldown"`` and ``"degraded"``.
        duration: For ``"settled"``: seconds the guarded block ran.
        reported_at: For ``"fetched"``: when the provider says it read the
            balance (OneClickDZ ``meta.timestamp``), if it said.
    """

    kind: EventKind
    provider: str
    account_id: str
    account: str = ""
    currency: str = ""
    amount: Decimal | None = None
    available: Decimal | None = None
    ok: bool | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)
    duration: float | None = attrs.field(default=None, eq=False)
    reported_at: dt.datetime | None = None


_KINDS: frozenset[str] = frozenset(get_args(EventKind))


def is_async(fn: object) -> bool:
    """Whether *fn* is a coroutine function (or has an ``async __call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


class Hooks:
    """
    A guard's hooks, indexed by the event kinds each wants, so that an event
    no hook wants is never made on the guarded call's path.
    """

    __slots__ = ("_by_kind", "_hooks", "_kinds", "settled")

    def __init__(self) -> None:
        self._hooks: tuple[EventHook, ...] = ()
        self._kinds: tuple[frozenset[str], ...] = ()
        self._by_kind: dict[str, tuple[EventHook, ...]] = {}
        self.settled = False

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __iter__(self) -> Iterator[EventHook]:
        return iter(self._hooks)

    def __contains__(self, hook: object) -> bool:
        return hook in self._hooks

    def add(self, hook: EventHook, kinds: Iterable[EventKind] | None) -> None:
        checked: object = hook
        if not callable(checked) or is_async(checked):
            raise ConfigurationError(
                f"hooks must be plain (not async) callables, got {hook!r}"
            )
        wanted = _KINDS if kinds is None else frozenset(kinds)
        unknown = sorted(str(k) for k in wanted - _KINDS)
        if unknown or not wanted:
            raise ConfigurationError(
                f"kinds must be event kinds ({', '.join(sorted(_KINDS))}), "
                f"got {unknown or 'none'}"
            )
        self._hooks = (*self._hooks, hook)
        self._kinds = (*self._kinds, wanted)
        self._index()

    def remove(self, hook: EventHook) -> None:
        kept = [
            (h, k) for h, k in zip(self._hooks, self._kinds, strict=True) if h != hook
        ]
        self._hooks = tuple(h for h, _ in kept)
        self._kinds = tuple(k for _, k in kept)
        self._index()

    def _index(self) -> None:
        self._by_kind = {
            kind: tuple(
                h for h, k in zip(self._hooks, self._kinds, strict=True) if kind in k
            )
            for kind in _KINDS
        }
        # Read on every guarded call: whether one wants its "settled" event.
        self.settled = bool(self._by_kind["settled"])

    def wants(self, kind: EventKind) -> bool:
        return bool(self._by_kind.get(kind))

    def emit(self, kind: EventKind, tracked: Tracked, **values: Any) -> None:
        hooks = self._by_kind.get(kind)
        if not hooks:
            return
        provider = tracked.provider
        event = GuardEvent(
            kind=kind,
            provider=provider.name,
            account_id=provider.account_id,
            account=tracked.digest,
            currency=provider.currency,
            **values,
        )
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                log.exception(
                    "guard hook %r failed on %s",
                    hook,
                    kind,
                    extra=fields(
                        "hook_failed",
                        provider=event.provider,
                        account=event.account,
                        kind=kind,
                    ),
                )
