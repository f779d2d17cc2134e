"""
Drive guard's async core from synchronous code.

``@require_balance`` on a ``def`` and ``with require_balance(...)`` run the
same coroutines as the async forms, on one private event loop: an anyio
blocking portal in a daemon thread, started on first use and stopped at
interpreter exit. Every guard operation of every calling thread runs on that
one loop, so the guard's state needs no locks of its own; no loop is created
per call.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from anyio.from_thread import start_blocking_portal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager

    from anyio.from_thread import BlockingPortal

    from ._guard import BalanceGuard

__all__ = ["aclose_guard", "close_guard", "on_portal", "portal_loop", "run"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_manager: AbstractContextManager[BlockingPortal] | None = None
_loop: asyncio.AbstractEventLoop | None = None
# Guards that ran on the portal's loop: their sessions live there, so they
# must be closed there.
_guards: weakref.WeakSet[BalanceGuard] = weakref.WeakSet()

_IN_LOOP = (
    "the synchronous require_balance API was called from a running event "
    "loop, where it would block the loop; use the async form instead: "
    "decorate an `async def`, or `async with require_balance(...)`"
)


def _get_portal() -> BlockingPortal:
    global _portal, _manager, _loop
    portal = _portal
    if portal is not None:
        return portal
    with _lock:
        if _portal is None:
            manager = start_blocking_portal(name="guard-sync")
            portal = manager.__enter__()
            _loop = portal.call(asyncio.get_running_loop)
            _manager, _portal = manager, portal
            atexit.register(_shutdown)
        return _portal


def portal_loop() -> asyncio.AbstractEventLoop | None:
    """
    Return the private loop the synchronous API runs on, if it was started.
    """
    return _loop


def run(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    guard: BalanceGuard | None = None,
) -> T:
    """
    Run ``fn(*args)`` on the private loop and wait for its result.

    Args:
        fn: A coroutine function.
        args: Its positional arguments.
        guard: The guard *fn* works on, remembered so that it is closed on
            the private loop (its session lives there).

    Raises:
        RuntimeError: The calling thread is running an event loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(_IN_LOOP)
    portal = _get_portal()
    if guard is not None and guard not in _guards:
        with _lock:
            _guards.add(guard)
    return portal.call(fn, *args)


def close_guard(guard: BalanceGuard) -> bool:
    """
    Close *guard* on the private loop if it ran there; tell whether it did.
    """
    portal = _portal
    if portal is None or guard not in _guards:
        return False
    _guards.discard(guard)
    portal.call(guard.aclose)
    return True


async def on_portal(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """
    Run ``fn(*args)`` on the private loop from a coroutine on another loop.
    """
    future = _get_portal().start_task_soon(fn, *args)
    return await asyncio.wrap_future(future)


async def aclose_guard(guard: BalanceGuard) -> None:
    """
    Close *guard* from a coroutine, on the loop its session lives on.
    """
    portal = _portal
    if portal is not None and guard in _guards:
        _guards.discard(guard)
        await asyncio.wrap_future(portal.start_task_soon(guard.aclose))
    else:
        await guard.aclose()


def _shutdown() -> None:
    global _portal, _manager, _loop
    with _lock:
        portal, manager = _portal, _manager
        _portal = _manager = _loop = None
    if portal is None or manager is None:
        return
    try:
        for guard in list(_guards):
            # Best effort at exit: a guard that fails to close must not keep
            # the others open or the interpreter from exiting.
            try:
                portal.call(guard.aclose)
            except Exception:  # noqa: S112
                continue
        _guards.clear()
    finally:
        manager.__exit__(None, None, None)
