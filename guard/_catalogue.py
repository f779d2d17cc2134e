"""
Provider catalogues (price lists) a guard keeps: loaded through its session,
one load per account and catalogue at a time, kept for a time each
catalogue chooses.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

__all__ = ["Catalogues"]

T = TypeVar("T")


class Catalogues:
    """
    Loaded catalogues by ``(account key, name)``, each with its expiry, and
    the loads in flight.

    A failed load is not kept: the next caller loads again.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[float, Any]] = {}
        self._loading: dict[tuple[str, str], asyncio.Task[Any]] = {}

    async def get(
        self,
        key: tuple[str, str],
        load: Callable[[aiohttp.ClientSession], Awaitable[T]],
        session: aiohttp.ClientSession,
        *,
        ttl: float,
        limit: float,
    ) -> T:
        kept = self._kept.get(key)
        if kept is not None and kept[0] > time.monotonic():
            value: T = kept[1]
            return value
        task = self._loading.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(
                self._load(key, load, session, ttl=ttl, limit=limit)
            )
            self._loading[key] = task
        # Shielded: one caller leaving must not cancel the others' load.
        loaded: T = await asyncio.shield(task)
        return loaded

    async def _load(
        self,
        key: tuple[str, str],
        load: Callable[[aiohttp.ClientSession], Awaitable[T]],
        session: aiohttp.ClientSession,
        *,
        ttl: float,
        limit: float,
    ) -> T:
        try:
            async with asyncio.timeout(limit):
                value = await load(session)
        finally:
            self._loading.pop(key, None)
        self._kept[key] = (time.monotonic() + ttl, value)
        return value
