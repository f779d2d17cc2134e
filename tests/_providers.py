"""
Providers for race tests: each builds a race in which the provider has read
the balance and its answer is on its way while other calls run.

`guard.testing.InMemoryProvider` reads its balance only after its delay, so
a spend made during that delay is already in its answer: it can't build
these races.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from decimal import Decimal

    import aiohttp


class Network(InMemoryProvider):
    """
    A provider whose server reads the balance when asked; while `gate` is
    set, the answer arrives only once the gate opens (a slow network).
    """

    def __init__(self, balance: int, **kwargs: Any) -> None:
        super().__init__(balance, **kwargs)
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()
        self.cancelled = False

    def slow_down(self) -> asyncio.Event:
        """Hold the next answers until the returned gate is set."""
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()
        return self.gate

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        self.fetches += 1
        if self._failures:
            raise self._failures.pop(0)
        seen = self.balance
        if self.gate is not None:
            self.asked.set()
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return seen


class During(InMemoryProvider):
    """
    A provider that runs *during* between reading the balance and answering.
    """

    def __init__(self, balance: int, during: Callable[[], Awaitable[None]]) -> None:
        super().__init__(balance)
        self.during = during

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        self.fetches += 1
        seen = self.balance
        await self.during()
        return seen


class LoopRecorder(InMemoryProvider):
    """Records the event loop each fetch runs on."""

    def __init__(self, balance: int, **options: Any) -> None:
        super().__init__(balance, **options)
        self.loops: list[asyncio.AbstractEventLoop] = []

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        self.loops.append(asyncio.get_running_loop())
        return await super().fetch_balance(session)
