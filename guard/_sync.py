"""
Drive guard's async core from synchronous code.

``@require_balance`` on a ``def`` and ``with require_balance(...)`` run the
same coroutines as the async forms, on one private event loop: an anyio
blocking portal in a daemon thread, started on first use and stopped at
interpreter exit. Every guard operation of every calling thread runs on that
one loop, so the guard's state needs no locks of its own; no loop is created
per call.

A process forked after the private loop started (Celery prefork, gunicorn
``--preload``) starts its own on first use: the child inherits the parent's
portal but not its thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from anyio import CancelScope
from anyio.from_thread import start_blocking_portal

from ._loops import Handoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager
    from types import TracebackType

    from anyio.from_thread import BlockingPortal

    from ._guard import BalanceGuard
    from ._reservation import Reservation, _Reserve

__all__ = [
    "Block",
    "aclose_guard",
    "close_guard",
    "on_portal",
    "portal_loop",
    "run",
]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_manager: AbstractContextManager[BlockingPortal] | None = None
_loop: asyncio.AbstractEventLoop | None = None
# Guards that ran on the portal's loop: their sessions live there, so they
# must be closed there.
_guards: weakref.WeakSet[BalanceGuard] = weakref.WeakSet()
_at_exit = False
_orphans: list[object] = []

# Seconds guards get to close at interpreter exit.
_CLOSE_TIMEOUT = 5.0

_IN_LOOP = (
    "the synchronous require_balance API was called from a running event "
    "loop, where it would block the loop; use the async form instead: "
    "decorate an `async def`, or `async with require_balance(...)`"
)


def _get_portal() -> BlockingPortal:
    global _portal, _manager, _loop, _at_exit
    portal = _portal
    if portal is not None:
        return portal
    with _lock:
        if _portal is None:
            manager = start_blocking_portal(name="guard-sync")
            portal = manager.__enter__()
            _loop = portal.call(asyncio.get_running_loop)
            _manager, _portal = manager, portal
            if not _at_exit:
                _at_exit = True
                atexit.register(_shutdown)
        return _portal


def _after_fork_in_child() -> None:  # pragma: no cover - in forked children (TestFork)
    # The child has a copy of the portal but not its thread: calls would wait
    # forever. Start afresh; the parent's guards and lock stay the parent's.
    global _portal, _manager, _loop, _lock, _guards
    # Kept referenced, never finalized: finalizing the portal's context
    # manager would stop the portal, waiting on a thread the child lacks.
    _orphans.append((_portal, _manager, _loop))
    for guard in _guards:
        # Bound to the parent's private loop, which looks running here but
        # has no thread: let the guard adopt the child's loop on next use.
        guard._forget_loop()
    _portal = _manager = _loop = None
    _lock = threading.Lock()
    _guards = weakref.WeakSet()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
    portal = _enter(guard)
    return portal.call(fn, *args)


class Block:
    """
    A `BalanceGuard.reserve` block driven from synchronous code: entered and
    exited on the private loop.

    If the wait on entry is interrupted (Ctrl-C, a Celery soft time limit:
    any exception raised in the calling thread), the entry is cancelled,
    and a hold it got all the same is released, not left to block later
    calls.
    """

    __slots__ = ("block",)

    def __init__(self, block: _Reserve) -> None:
        self.block = block

    def __enter__(self) -> Reservation:
        block = self.block
        guard = block._guard
        portal = _enter(guard)
        handoff: Handoff[Reservation] = Handoff()
        future = None
        try:
            # Inside the try: an interruption right after the task starts must
            # find the handoff marked too.
            future = portal.start_task_soon(
                handoff.make, block.__aenter__, functools.partial(_drop, guard)
            )
            return future.result()
        except BaseException:
            reservation = handoff.leave()
            if future is not None:
                future.cancel()
            if reservation is not None:
                # Made just as the caller left: release it before leaving
                # too, so that the caller's next call doesn't find it held.
                with contextlib.suppress(Exception):
                    portal.start_task_soon(_drop, guard, reservation).result(
                        timeout=guard.fetch_timeout
                    )
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        block = self.block
        run(block.__aexit__, exc_type, exc, tb, guard=block._guard)


async def _drop(guard: BalanceGuard, reservation: Reservation) -> None:
    # Shielded: the cancellation that made the caller leave must not stop it.
    with CancelScope(shield=True):
        await guard._drop(reservation)


def _enter(guard: BalanceGuard | None) -> BlockingPortal:
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
    return portal


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


def _shutdown() -> None:  # pragma: no cover - at interpreter exit (test_exit_...)
    global _portal, _manager, _loop
    with _lock:
        portal, manager = _portal, _manager
        _portal = _manager = _loop = None
    if portal is None or manager is None:
        return
    try:
        guards = list(_guards)
        _guards.clear()
        # Best effort at exit, and bounded: a guard that fails or hangs while
        # closing must not keep the others open or the interpreter running.
        portal.call(_close_all, guards)
    except Exception:  # noqa: S110
        pass
    finally:
        # Cancel what still runs there (a caller's slow amount function, a
        # fetch of a daemon thread's call) rather than wait for it.
        with contextlib.suppress(RuntimeError):  # already stopped
            portal.call(portal.stop, True)
        manager.__exit__(None, None, None)


async def _close_all(  # pragma: no cover - at interpreter exit
    guards: list[BalanceGuard],
) -> None:
    closing = [asyncio.ensure_future(g.aclose()) for g in guards]
    if closing:
        await asyncio.wait(closing, timeout=_CLOSE_TIMEOUT)
        for task in closing:
            if task.done():
                if not task.cancelled():
                    task.exception()
            else:
                task.cancel()
