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
    from collections.abc import Callable, Iterable, Iterator
    from decimal import Decimal

    from ._accounts import Tracked
    from .typing import EventHook

__all__ = ["EventKind", "GuardEvent", "Hooks", "Recorder", "is_async"]

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

Recorder: TypeAlias = "Callable[[Tracked, Decimal, bool, float | None], None]"

_new = object.__new__
(
    _set_kind,
    _set_provider,
    _set_account_id,
    _set_account,
    _set_currency,
    _set_amount,
    _set_available,
    _set_ok,
    _set_error,
    _set_duration,
    _set_reported_at,
) = (
    GuardEvent.__dict__[name].__set__
    for name in (
        "kind",
        "provider",
        "account_id",
        "account",
        "currency",
        "amount",
        "available",
        "ok",
        "error",
        "duration",
        "reported_at",
    )
)


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

    __slots__ = ("_by_kind", "_hooks", "_kinds", "recorders", "settled")

    def __init__(self) -> None:
        self._hooks: tuple[EventHook, ...] = ()
        self._kinds: tuple[frozenset[str], ...] = ()
        self._by_kind: dict[str, tuple[EventHook, ...]] = {}
        # Told of every settled call without an event being made: a
        # history's recorder, (tracked, amount, ok, duration).
        self.recorders: tuple[Recorder, ...] = ()
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
        # Read on every guarded call: whether anyone wants to hear it ended.
        self.settled = bool(self._by_kind["settled"] or self.recorders)

    def record(self, recorder: Recorder) -> None:
        """Tell *recorder* of every settled call (`tell_settled`)."""
        self.recorders = (*self.recorders, recorder)
        self._index()

    def unrecord(self, recorder: Recorder) -> None:
        self.recorders = tuple(r for r in self.recorders if r != recorder)
        self._index()

    def tell_settled(
        self, tracked: Tracked, amount: Decimal, ok: bool, duration: float | None
    ) -> None:
        """A guarded call ended: tell the hooks and recorders that want it."""
        if self._by_kind["settled"]:
            self.emit("settled", tracked, amount=amount, ok=ok, duration=duration)
        for recorder in self.recorders:
            try:
                recorder(tracked, amount, ok, duration)
            except Exception:
                log.exception(
                    "guard recorder %r failed",
                    recorder,
                    extra=fields(
                        "hook_failed",
                        provider=tracked.provider.name,
                        account=tracked.digest,
                        kind="settled",
                    ),
                )

    def wants(self, kind: EventKind) -> bool:
        return bool(self._by_kind.get(kind))

    def emit(self, kind: EventKind, tracked: Tracked, **values: Any) -> None:
        hooks = self._by_kind.get(kind)
        if not hooks:
            return
        provider = tracked.provider
        # Made for every settled call a hook wants: set through its slots,
        # at a quarter of the cost of its keyword __init__.
        event: GuardEvent = _new(GuardEvent)
        _set_kind(event, kind)
        _set_provider(event, provider.name)
        _set_account_id(event, provider.account_id)
        _set_account(event, tracked.digest)
        _set_currency(event, provider.currency)
        get = values.get
        _set_amount(event, get("amount"))
        _set_available(event, get("available"))
        _set_ok(event, get("ok"))
        _set_error(event, get("error"))
        _set_duration(event, get("duration"))
        _set_reported_at(event, get("reported_at"))
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
