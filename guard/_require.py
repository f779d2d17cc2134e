from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _sync
from ._amount import to_amount
from ._guard import BalanceGuard, Settle, _is_async
from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator
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
T = TypeVar("T")

_default: BalanceGuard | None = None
_default_lock = threading.Lock()
_inherited: list[BalanceGuard | None] = []


def get_default_guard() -> BalanceGuard:
    """
    Return the process-wide guard used by `require_balance` when no *guard*
    is given, creating it (in-memory cache, default options) on first use.
    """
    global _default
    guard = _default
    if guard is None or guard.closed:
        with _default_lock:
            if _default is None or _default.closed:
                _default = BalanceGuard()
            guard = _default
    return guard


def _forget_default() -> None:
    # A forked child inherits the default guard but not the private loop
    # thread its state may live on: it makes its own on first use. The old
    # one stays referenced: collecting it would warn of the parent's session.
    global _default, _default_lock
    _inherited.append(_default)
    _default = None
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_forget_default)


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
    What `require_balance` returns: a decorator (of ``async def`` and
    ``def`` functions) and an async and sync context manager.
    """

    __slots__ = (
        "_amount",
        "_compute",
        "_guard",
        "_holds",
        "_provider",
        "_settle",
        "_sync_holds",
    )

    def __init__(
        self,
        provider: Provider,
        amount: AmountSpec,
        *,
        guard: BalanceGuard | None,
        settle: Settle | None,
    ) -> None:
        if not _is_provider(provider):
            raise TypeError(
                "provider must implement guard.typing.Provider (name, currency, "
                f"account_id, fetch_balance), not {type(provider).__name__}"
            )
        if guard is not None and not isinstance(guard, BalanceGuard):
            raise TypeError(f"guard must be a BalanceGuard, not {type(guard).__name__}")
        if settle not in (None, "invalidate", "debit"):
            raise ConfigurationError(
                f"settle must be 'invalidate' or 'debit', got {settle!r}"
            )
        self._provider = provider
        self._guard = guard
        self._settle: Settle | None = settle
        self._holds: dict[
            asyncio.Task[Any] | None, list[tuple[BalanceGuard, Hold]]
        ] = {}
        self._sync_holds: dict[int, list[tuple[BalanceGuard, Hold]]] = {}
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
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # A generator's body runs on iteration, long after the call.
            raise TypeError(
                f"require_balance cannot guard a generator function: {fn!r}"
            )
        if not _is_async(fn):
            return self._wrap_sync(fn)
        provider, static, settle = self._provider, self._amount, self._settle

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            guard = self._guard or get_default_guard()
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

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        provider, static, settle = self._provider, self._amount, self._settle

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            guard = self._guard or get_default_guard()
            required = static
            if required is None:
                required = self._required_sync(args, kwargs)
            hold = _sync.acquire(guard, provider, required)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                _sync.run(_settle, guard, hold, False, settle, guard=guard)
                raise
            _sync.run(_settle, guard, hold, True, settle, guard=guard)
            return result

        return guarded

    def _required_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decimal:
        assert self._compute is not None
        # The amount is computed in the caller's thread, like the call itself;
        # only an async amount function goes to the private loop.
        value = self._compute(*args, **kwargs)
        if inspect.isawaitable(value):
            value = _sync.run(_awaited, value)
        return to_amount(value)

    def __enter__(self) -> Balance | None:
        """
        Check and hold the amount, from synchronous code.

        Runs on guard's private event loop thread (see `require_balance`).

        Raises:
            RuntimeError: Called from a running event loop: use ``async with``.
        """
        if self._amount is None:
            raise TypeError(
                "amount is a callable: it needs a guarded function's arguments, "
                "so use require_balance as a decorator, or pass a number"
            )
        guard = self._guard or get_default_guard()
        hold = _sync.acquire(guard, self._provider, self._amount)
        # Per thread, so one RequireBalance can be entered by many threads.
        stack = self._sync_holds.setdefault(threading.get_ident(), [])
        stack.append((guard, hold))
        if hold.entry is None:
            return None
        return guard._balance_of(hold.account, hold.entry)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ident = threading.get_ident()
        stack = self._sync_holds[ident]
        guard, hold = stack.pop()
        if not stack:
            del self._sync_holds[ident]
        _sync.run(_settle, guard, hold, exc_type is None, self._settle, guard=guard)

    async def __aenter__(self) -> Balance | None:
        if self._amount is None:
            raise TypeError(
                "amount is a callable: it needs a guarded function's arguments, "
                "so use require_balance as a decorator, or pass a number"
            )
        guard = self._guard or get_default_guard()
        hold = await guard.acquire(self._provider, self._amount)
        self._holds.setdefault(asyncio.current_task(), []).append((guard, hold))
        if hold.entry is None:
            return None
        return guard._balance_of(hold.account, hold.entry)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        if task not in self._holds:
            # Exited from another task than the one that entered (an
            # AsyncExitStack, fixtures): one hold of this object is as good
            # as another, since they hold the same amount.
            task = next(iter(self._holds))
        stack = self._holds[task]
        guard, hold = stack.pop()
        if not stack:
            del self._holds[task]
        await guard.settle(hold, ok=exc_type is None, settle=self._settle)


def _is_provider(obj: object) -> bool:
    # What isinstance(obj, guard.typing.Provider) checks, without its cost:
    # on Python 3.11 that re-reads the protocol's members on every call
    # (about 25 us), and `async with require_balance(...)` pays it per call.
    return (
        hasattr(obj, "name")
        and hasattr(obj, "currency")
        and hasattr(obj, "account_id")
        and callable(getattr(obj, "fetch_balance", None))
    )


async def _awaited(value: Awaitable[T]) -> T:
    return await value


async def _settle(
    guard: BalanceGuard, hold: Hold, ok: bool, settle: Settle | None
) -> None:
    await guard.settle(hold, ok=ok, settle=settle)


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

    Synchronous code (Django views, Celery tasks, scripts) uses the same
    forms without ``async``: decorate a ``def``, or ``with
    require_balance(...)``. Their guard work runs on one private event loop
    thread (anyio's blocking portal) shared by every calling thread; calling
    them from a running event loop raises `RuntimeError`. A guard is bound to
    the loop it first fetched on: don't share one between the synchronous
    API and your own event loop.

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
