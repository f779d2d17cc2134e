"""
Event-loop binding: a guard's state is touched by one loop's thread only.

A guard belongs to the first event loop that uses it (its *home*). Calls
from another running loop are forwarded there and awaited; once the home
loop has ended, the next loop to use the guard becomes its home. What a
forwarded call makes (a hold) is handed back through a `Handoff`, so that
one made after its caller left is undone rather than leaked.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

_get_ident = threading.get_ident

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Handoff", "HomeLoop"]

T = TypeVar("T")


class Handoff(Generic[T]):
    """
    A value made on one loop for a caller, in another thread or loop, that
    may leave (cancelled, interrupted) before it arrives.

    The maker calls `make`; a caller that leaves calls `leave`, and undoes
    what it returns. Either the caller gets the value or exactly one of the
    two undoes it.
    """

    __slots__ = ("left", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.left = False
        self.value: T | None = None

    async def make(
        self,
        make: Callable[[], Awaitable[T]],
        undo: Callable[[T], Awaitable[None]],
    ) -> T:
        value = await make()
        with self.lock:
            if not self.left:
                self.value = value
                return value
        # The caller left while this ran: nobody else will undo it. Awaited
        # directly, not in a task of its own: a store releases a hold before
        # its first await, so no call checking meanwhile finds it held.
        await undo(value)
        return value

    def leave(self) -> T | None:
        """
        Mark the caller gone; return the value if it was already made.
        """
        with self.lock:
            self.left = True
            value, self.value = self.value, None
        return value


class HomeLoop:
    """
    The event loop a guard belongs to, and forwarding to it.
    """

    __slots__ = ("forwarding", "home", "lock", "native")

    def __init__(self) -> None:
        self.home: asyncio.AbstractEventLoop | None = None
        # Whether home is one of asyncio's own loops, which say which
        # thread runs them (`here`).
        self.native = False
        self.lock = threading.Lock()
        # Set once a call came from another loop: until then every settle
        # runs at home, and needn't ask which loop runs it.
        self.forwarding = False

    def at_home(self) -> bool:
        """
        Whether the running loop is home, adopting it when there is no home
        loop that still runs (first use, ``asyncio.run`` again).
        """
        loop = asyncio.get_running_loop()
        if self.home is loop:
            return True
        with self.lock:
            home = self.home
            if home is None or home.is_closed() or not home.is_running():
                self.home = home = loop
                self.native = isinstance(loop, asyncio.BaseEventLoop) and hasattr(
                    loop, "_thread_id"
                )
        return home is loop

    def here(self) -> bool:
        """
        Whether the home loop runs this code: ``home is
        asyncio.get_running_loop()`` at a fifth of its cost, for every
        guarded call. A thread runs one loop at a time, so the home loop
        running in this thread is the one running this code.
        """
        home = self.home
        if self.native:
            thread: int | None = home._thread_id  # type: ignore[union-attr]
            return thread == _get_ident()
        return home is not None and home is asyncio.get_running_loop()

    def forget(self) -> None:
        """
        Forget the home loop, in a child process after ``os.fork()``: its
        thread is not there, and the lock may have been copied held.
        """
        self.home = None
        self.native = False
        self.lock = threading.Lock()
        self.forwarding = False

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """
        Run *coro* on the home loop and wait for it from this one.
        """
        assert self.home is not None
        self.forwarding = True
        future = asyncio.run_coroutine_threadsafe(coro, self.home)
        return await asyncio.wrap_future(future)

    async def make(
        self,
        make: Callable[[], Awaitable[T]],
        undo: Callable[[T], Awaitable[None]],
    ) -> T:
        """
        Run *make* on the home loop and return its value; if this caller
        leaves first, the value is undone there.
        """
        home = self.home
        assert home is not None
        handoff: Handoff[T] = Handoff()
        try:
            return await self.call(handoff.make(make, undo))
        except BaseException:
            value = handoff.leave()
            if value is not None:
                asyncio.run_coroutine_threadsafe(_shielded(undo(value)), home)
            raise


async def _shielded(aw: Awaitable[None]) -> None:
    await asyncio.shield(aw)
