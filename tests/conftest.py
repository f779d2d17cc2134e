"""
Fixtures shared by the test modules.

A module that needs its emulator with accounts in it overrides ``emu`` with
a fixture of the same name that takes this one and adds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import pytest

from guard import BalanceGuard
from guard.testing import Emulator, InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(name="provider")
def _provider() -> InMemoryProvider:
    return InMemoryProvider(1000, name="memory", currency="DZD")


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    async with BalanceGuard() as guard:
        yield guard


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    """A started provider emulator on loopback, with no accounts."""
    async with Emulator() as emu:
        yield emu


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session for talking to the emulator directly."""
    async with aiohttp.ClientSession() as session:
        yield session
