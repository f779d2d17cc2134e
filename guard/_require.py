from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._amount import to_amount
from ._guard import BalanceGuard, Settle

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from decimal import Decimal
    from types import TracebackType

    from ._balance import Balance
    from ._store import Hold
    from .typing import AmountSpec, Provider

__all__ = [
    "RequireBalance",
    "get_default_guard",
    "require_balance",
    "set_default_guard",
]

P = ParamSpec("P")
R = TypeVar("R")

_default: BalanceGuard | None = None
_default_lock = threading.Lock()


def get_default_guard() -> BalanceGuard:
    """
    Return the process-wide guard used by `require_balance` when no *guard*
    is given, creating it (in-memory cache, default options) on first use.
    """
    global _default
    guard = _default
    if guard is None:
        with _default_lock:
            if _default is None:
                _default = BalanceGuard()
            guard = _default
    return guard


@contextlib.contextmanager
def _restoring(previous: BalanceGuard | None) -> Iterator[None]:
    global _default
    try:
        yield
    finally:
        _default = previous


def set_default_guard(
    guard: BalanceGuard | None,
) -> contextlib.AbstractContextManager[None]:
    """
    Make *guard* the default guard (None: a fresh one on next use).

    Takes effect at once; also returns a context manager that puts the
    previous default back on exit, for tests::

        with guard.set_default_guard(BalanceGuard(ttl=1)):
            ...

    The guard put aside is not closed: close it yourself if it is done with.
    """
    global _default
    if guard is not None and not isinstance(guard, BalanceGuard):
        raise TypeError(
            f"guard must be a BalanceGuard or None, not {type(guard).__name__}"
        )
    previous, _default = _default, guard
    return _restoring(previous)


class RequireBalance:
    """
    What `require_balance` returns: a decorator and an async context manager.
    """

    __slots__ = ("_amount", "_compute", "_guard", "_holds", "_provider", "_settle")

    def __init__(
        self,
        provider: Provider,
        amount: AmountSpec,
        *,
        guard: BalanceGuard | None,
        settle: Settle | None,
    ) -> None:
        from .typing import Provider as ProviderProtocol

        if not isinstance(provider, ProviderProtocol):
            raise TypeError(
                "provider must implement guard.typing.Provider (name, currency, "
                f"account_id, fetch_balance), not {type(provider).__name__}"
            )
        if guard is not None and not isinstance(guard, BalanceGuard):
            raise TypeError(f"guard must be a BalanceGuard, not {type(guard).__name__}")
        if settle not in (None, "invalidate", "debit"):
            raise ValueError(f"settle must be 'invalidate' or 'debit', got {settle!r}")
        self._provider = provider
        self._guard = guard
        self._settle: Settle | None = settle
        self._holds: dict[asyncio.Task[Any] | None, list[Hold | None]] = {}
        if callable(amount):
            self._compute: Callable[..., Any] | None = amount
            self._amount: Decimal | None = None
        else:
            self._compute = None
            self._amount = to_amount(amount)

    def __repr__(self) -> str:
        amount = "<computed>" if self._compute is not None else str(self._amount)
        return f"<require_balance {self._provider.name} amount={amount}>"

    async def _required(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decimal:
        assert self._compute is not None
        value = self._compute(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return to_amount(value)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if not callable(fn):
            raise TypeError(f"require_balance decorates a function, not {fn!r}")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"require_balance decorates async functions; {fn!r} is not one"
            )
        provider, static, settle = self._provider, self._amount, self._settle

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            guard = self._guard or _default or get_default_guard()
            if static is None:
                required = await self._required(args, kwargs)
            else:
                required = static
            hold = await guard.acquire(provider, required)
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                await guard.settle(hold, ok=False, settle=settle)
                raise
            await guard.settle(hold, ok=True, settle=settle)
            return result

        return guarded

    async def __aenter__(self) -> Balance | None:
        if self._amount is None:
            raise TypeError(
                "amount is a callable: it needs a guarded function's arguments, "
                "so use require_balance as a decorator, or pass a number"
            )
        guard = self._guard or get_default_guard()
        hold = await guard.acquire(self._provider, self._amount)
        self._holds.setdefault(asyncio.current_task(), []).append(hold)
        if hold is None or hold.entry is None:
            return None
        return guard._balance_of(hold.account, hold.entry)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._holds[task]
        hold = stack.pop()
        if not stack:
            del self._holds[task]
        guard = self._guard or get_default_guard()
        await guard.settle(hold, ok=exc_type is None, settle=self._settle)


def require_balance(
    provider: Provider,
    amount: AmountSpec,
    *,
    guard: BalanceGuard | None = None,
    settle: Settle | None = None,
) -> RequireBalance:
    """
    Refuse a call that *provider*'s balance cannot cover.

    Use it as a decorator or as an async context manager::

        @require_balance(oneclick, amount=lambda phone, amount: amount)
        async def send_topup(phone: str, amount: Decimal) -> str: ...

        async with require_balance(clickatell, 3):
            await send_sms(...)

    Before the call runs, the cached balance less the amounts held by calls
    still running must cover *amount*; the amount is then held until the call
    ends, and the cached balance is settled (see *settle*) however it ends.

    Args:
        provider: The account to check, such as a `guard.providers.OneClickDZ`.
        amount: An ``int``, ``Decimal`` or ``str`` (a ``float`` is read through
            ``str()``), or a sync or async callable that receives the
            decorated function's arguments and returns one.
        guard: The `BalanceGuard` to use; default `get_default_guard()`.
        settle: ``"invalidate"`` or ``"debit"``; default: the guard's.

    Raises:
        InsufficientBalance: From the guarded call, before it runs.
        BalanceUnavailable: From the guarded call, if the balance cannot be
            learned and the guard fails closed.
        TypeError, ValueError: At once, for an *amount* that is not a
            non-negative finite number.
    """
    return RequireBalance(provider, amount, guard=guard, settle=settle)
