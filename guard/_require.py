"""
``require_balance``: a decorator and a context manager over
`BalanceGuard.reserve`, for async and for synchronous code.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _sync
from ._events import is_async
from ._guard import BalanceGuard
from ._lane import Entered
from ._money import to_amount
from ._options import check_settle
from ._reservation import _Reserve
from .errors import AmountError
from .stores import Entry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator
    from decimal import Decimal
    from types import TracebackType

    from ._balance import Balance
    from ._guard import Settle
    from ._lane import Lane
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
# Guards the entry bookkeeping of every RequireBalance: threads entering one
# object at once must not both take the slot for its first entry.
_entries_lock = threading.Lock()
_inherited: list[BalanceGuard | None] = []

# What an amount function may raise for arguments it cannot read an amount
# from (a request without one, a body too deep to parse): an AmountError.
_UNREADABLE = (LookupError, TypeError, ValueError, ArithmeticError, RecursionError)


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
    global _default, _default_lock, _entries_lock
    _inherited.append(_default)
    _default = None
    _default_lock = threading.Lock()
    _entries_lock = threading.Lock()


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


class _Open:
    """
    One ``with``/``async with`` of a `RequireBalance`: its reserve block, and
    the one entered before it in the same context (nesting).
    """

    __slots__ = ("block", "outer")

    def __init__(self, block: _Reserve | Entered, outer: _Open | None) -> None:
        self.block = block
        self.outer = outer


class RequireBalance:
    """
    What `require_balance` returns: a decorator (of ``async def`` and
    ``def`` functions) and an async and sync context manager.

    One object may be entered by many tasks and threads at once: the first
    open ``with`` is kept on the object, any other in a context variable
    (per task and per thread), so that each exit finds its own.
    """

    __slots__ = (
        "_amount",
        "_compute",
        "_entered",
        "_free",
        "_given",
        "_guard",
        "_lane",
        "_only",
        "_only_lane",
        "_only_started",
        "_open",
        "_provider",
        "_settle",
    )

    def __init__(
        self,
        provider: Provider,
        amount: AmountSpec,
        *,
        guard: BalanceGuard | None,
        settle: Settle | None,
    ) -> None:
        if type(provider) not in _PROVIDER_TYPES and not _is_provider(provider):
            raise TypeError(
                "provider must implement guard.typing.Provider (name, currency, "
                f"account_id, fetch_balance), not {type(provider).__name__}"
            )
        if (
            guard is not None
            and type(guard) is not BalanceGuard
            and not isinstance(guard, BalanceGuard)
        ):
            raise TypeError(f"guard must be a BalanceGuard, not {type(guard).__name__}")
        if settle is not None:
            check_settle(settle)
        self._provider = provider
        self._guard = guard
        self._settle: Settle | None = settle
        self._given: object = None  # the amount as require_balance() had it
        if callable(amount):
            self._compute: Callable[..., Any] | None = amount
            self._amount: Decimal | None = None
        else:
            self._compute = None
            self._amount = to_amount(amount)
        self._entered: contextvars.ContextVar[_Open | None] | None = None
        # The first open entry: a block, or on the lane (``_lane.py``) the
        # entry as fetched, with its lane in _only_lane.
        self._only: _Reserve | Entered | Entry | None = None
        self._only_lane: Lane | None = None
        self._only_started = 0.0
        # The token for the slot above: taken by the entry that fills it.
        self._free = [True]
        self._lane: Lane | None = None
        # Entries after the first, open at once (made when needed).
        self._open: list[_Reserve | Entered] | None = None

    def __repr__(self) -> str:
        amount = "<computed>" if self._compute is not None else str(self._amount)
        return f"<require_balance {self._provider.name} amount={amount}>"

    def _block(self, amount: Decimal) -> _Reserve:
        guard = self._guard or get_default_guard()
        # The amount was checked already: skip reserve()'s check.
        return _Reserve(guard, self._provider, amount, self._settle)

    # -- decorator --------------------------------------------------------

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
        if not is_async(fn):
            return self._wrap_sync(fn)
        static = self._amount
        provider = self._provider
        settle = self._settle

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            if static is None:
                required = await self._required(args, kwargs)
            else:
                required = static
            guard = self._guard or get_default_guard()
            lane = self._lane
            if lane is None or lane.guard is not guard:
                lane = self._lane = guard._lane(provider)
            fetched = lane.enter(required, settle)
            if fetched is None:
                async with _Reserve(guard, provider, required, settle):
                    return await fn(*args, **kwargs)
            # The same call on the lane: no reservation, nothing awaited.
            started = lane.started() if lane.hooks.settled else 0.0
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                if not lane.exit(required, fetched, False, settle, started):
                    await lane.forget_copy()
                raise
            if not lane.exit(required, fetched, True, settle, started):
                await lane.forget_copy()
            return result

        return guarded

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        static = self._amount

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            required = static
            if required is None:
                required = self._required_sync(args, kwargs)
            with _sync.Block(self._block(required)):
                return fn(*args, **kwargs)

        return guarded

    async def _required(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decimal:
        assert self._compute is not None
        try:
            value = self._compute(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except _UNREADABLE as exc:
            raise _uncomputed(exc) from exc
        return to_amount(value)

    def _required_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decimal:
        assert self._compute is not None
        # The amount is computed in the caller's thread, like the call itself;
        # only an async amount function goes to the private loop.
        try:
            value = self._compute(*args, **kwargs)
            if inspect.isawaitable(value):
                value = _sync.run(_awaited, value)
        except _UNREADABLE as exc:
            raise _uncomputed(exc) from exc
        return to_amount(value)

    # -- context manager --------------------------------------------------

    def _enter(self, block: _Reserve | Entered) -> None:
        if self._entered is None:
            try:
                # Atomic: of entries racing on threads, one takes the slot.
                self._free.pop()
            except IndexError:
                pass
            else:
                # The usual case, a fresh or reused object entered once at a
                # time: no lock, no context variable.
                self._only = block
                return
        with _entries_lock:
            var = self._entered
            if var is None:
                var = self._entered = contextvars.ContextVar("guard_require_balance")
            var.set(_Open(block, var.get(None)))
            if self._open is None:
                self._open = []
            self._open.append(block)

    def _exit(self) -> _Reserve | Entered:
        if self._entered is None:
            block = self._only
            if block is not None:
                return self._vacate(block)
        with _entries_lock:
            var = self._entered
            entered = None if var is None else var.get(None)
            if var is not None and entered is not None:
                var.set(entered.outer)
                assert self._open is not None
                self._open.remove(entered.block)
                return entered.block
            if self._only is not None:
                return self._vacate(self._only)
            # Exited in another task than it was entered in (an
            # AsyncExitStack, fixtures): one block of this object is as good
            # as another, since they hold the same amount.
            if not self._open:  # None or empty
                raise RuntimeError(
                    "a require_balance block exited without being entered"
                )
            return self._open.pop(0)

    def _vacate(self, block: _Reserve | Entered | Entry) -> _Reserve | Entered:
        """Empty the slot of the first open entry, which held *block*."""
        lane = self._only_lane
        self._only = self._only_lane = None
        self._free.append(True)
        if type(block) is Entry:
            assert lane is not None
            assert self._amount is not None
            return Entered(lane, self._amount, block, self._settle, self._only_started)
        assert not isinstance(block, Entry)
        return block

    def _static(self) -> Decimal:
        if self._amount is None:
            raise TypeError(
                "amount is a callable: it needs a guarded function's arguments, "
                "so use require_balance as a decorator, or pass a number"
            )
        return self._amount

    async def __aenter__(self) -> Balance | None:
        amount = self._amount
        if amount is None:
            amount = self._static()  # raises
        guard = self._guard or get_default_guard()
        lane = self._lane
        if lane is None or lane.guard is not guard:
            lane = self._lane = guard._lane(self._provider)
        settle = self._settle
        fetched = lane.enter(amount, settle)
        if fetched is not None:
            if self._entered is None:
                try:
                    self._free.pop()  # as _enter does
                except IndexError:
                    pass
                else:
                    self._only = fetched
                    self._only_lane = lane
                    self._only_started = lane.started() if lane.hooks.settled else 0.0
                    return lane.balance(fetched)
            self._enter(Entered(lane, amount, fetched, settle, lane.started()))
            return lane.balance(fetched)
        block = _Reserve(guard, self._provider, amount, self._settle)
        reservation = await block.__aenter__()
        self._enter(block)
        return reservation.balance

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered is None:
            fetched = self._only
            lane = self._only_lane
            if type(fetched) is Entry and lane is not None and lane.at_home():
                # What _exit and Entered.__aexit__ do, without their cost.
                self._only = self._only_lane = None
                self._free.append(True)
                assert self._amount is not None
                ok = exc_type is None
                if not lane.exit(
                    self._amount, fetched, ok, self._settle, self._only_started
                ):
                    await lane.forget_copy()
                return
        await self._exit().__aexit__(exc_type, exc, tb)

    def __enter__(self) -> Balance | None:
        """
        Check and hold the amount, from synchronous code.

        Runs on guard's private event loop thread (see `require_balance`).

        Raises:
            RuntimeError: Called from a running event loop: use ``async with``.
        """
        block = _sync.Block(self._block(self._static()))
        reservation = block.__enter__()
        self._enter(block.block)
        return reservation.balance

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        block = self._exit()
        _sync.run(block.__aexit__, exc_type, exc, tb, guard=block._guard)


def _uncomputed(exc: BaseException) -> AmountError:
    # The original may echo the caller's input: its type names the problem.
    return AmountError(f"amount could not be computed: {type(exc).__name__}")


def _is_provider(obj: object) -> bool:
    # What isinstance(obj, guard.typing.Provider) checks, without its cost:
    # on Python 3.11 that re-reads the protocol's members on every call
    # (about 25 us), and `async with require_balance(...)` pays it per call.
    # A type whose instance passed is taken at its word after that.
    kind = type(obj)
    if kind in _PROVIDER_TYPES:
        return True
    found = (
        hasattr(obj, "name")
        and hasattr(obj, "currency")
        and hasattr(obj, "account_id")
        and callable(getattr(obj, "fetch_balance", None))
    )
    if found and len(_PROVIDER_TYPES) < 256:
        _PROVIDER_TYPES.add(kind)
    return found


# Kept alive: provider classes are few, and a weak set is slow to ask.
_PROVIDER_TYPES: set[type] = set()


async def _awaited(value: Awaitable[T]) -> T:
    return await value


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

    Each form is `BalanceGuard.reserve` around the call: the cached balance
    less the amounts held by calls still running must cover *amount*; the
    amount is then held until the call ends, and the cached balance is
    settled (see *settle*) however it ends. A decorated call that raises
    counts as a failed spend.

    Synchronous code (Django views, Celery tasks, scripts) uses the same
    forms without ``async``: decorate a ``def``, or ``with
    require_balance(...)``. Their guard work runs on one private event loop
    thread (anyio's blocking portal) shared by every calling thread; calling
    them from a running event loop raises `RuntimeError`. A guard is bound to
    the loop it first fetched on: don't share one between the synchronous
    API and your own event loop.

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
        AmountError: At once for a fixed *amount* that is not a
            non-negative finite number; from the guarded call, before it
            runs, for a computed one (also when its function raised
            `LookupError`, `TypeError`, `ValueError`, `ArithmeticError` or
            `RecursionError`: the original is the ``__cause__``).
    """
    # Validated and normalised once, not per call: an `async with
    # require_balance(p, 5)` written in a loop costs a few comparisons.
    last = _last[0]
    if (
        last is not None
        and last._provider is provider
        and last._guard is guard
        and last._settle == settle
    ):
        given = last._given
        if given is amount or (type(given) is type(amount) and given == amount):
            return last
    made = RequireBalance(provider, amount, guard=guard, settle=settle)
    kind = type(amount)
    if kind is int or kind is str:
        made._given = amount
        _last[0] = made
    return made


# The object require_balance() made last for a whole or text amount: one
# object serves any number of callers, entered by tasks and threads at once.
# Only the last is kept, so that no provider object made per request stays.
_last: list[RequireBalance | None] = [None]
