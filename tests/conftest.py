from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from guard import BalanceGuard
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(name="provider")
def _provider() -> InMemoryProvider:
    return InMemoryProvider(1000, name="memory", currency="DZD")


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    async with BalanceGuard() as guard:
        yield guard
