"""
Fixtures shared by the test modules.

A module that needs its emulator with accounts in it overrides ``emu`` with
a fixture of the same name that takes this one and adds them.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import aiohttp
import pytest

from guard import BalanceGuard, GuardEvent, _sync
from guard.testing import Emulator, InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from _redis_server import ClusterServers, SentinelServers


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts a background command with SIGINT
    # ignored, and a child process inherits that: Ctrl+C, as the tests send
    # it to `guard emulator` and `guard watch`, would then be lost. Python's
    # own handler is reset to the default in a child, which then gets its
    # KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(name="provider")
def _provider() -> InMemoryProvider:
    return InMemoryProvider(1000, name="memory", currency="DZD")


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    async with BalanceGuard() as guard:
        yield guard


@pytest.fixture(name="cluster_servers", scope="session")
def _cluster_servers() -> Iterator[ClusterServers]:
    """A 3-master Redis Cluster with replicas, for the whole session."""
    from _redis_server import ClusterServers

    servers = ClusterServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(name="sentinel_servers", scope="session")
def _sentinel_servers() -> Iterator[SentinelServers]:
    """A primary, a replica and a Sentinel, for the whole session."""
    from _redis_server import SentinelServers

    servers = SentinelServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(name="events")
def _events() -> list[GuardEvent]:
    """Where `debit_guard` and `sync_guard` put the events they emit."""
    return []


@pytest.fixture(name="debit_guard")
async def _debit_guard(events: list[GuardEvent]) -> AsyncIterator[BalanceGuard]:
    """A guard that debits its cached balance after a successful call."""
    async with BalanceGuard(settle="debit", hooks=[events.append]) as guard:
        yield guard


@pytest.fixture(name="sync_guard")
def _sync_guard(events: list[GuardEvent]) -> Iterator[BalanceGuard]:
    """A guard for the synchronous API, closed on its private loop."""
    guard = BalanceGuard(hooks=[events.append])
    yield guard
    _sync.close_guard(guard)


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
