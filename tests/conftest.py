from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from guard import BalanceGuard
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from _redis_server import ClusterServers, SentinelServers


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
