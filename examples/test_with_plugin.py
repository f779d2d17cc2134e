"""
Tests written with guard's pytest plugin (installed with guard): an
emulated provider, an in-memory one, and low funds in one line.

Needs nothing but guard and pytest: the async tests here use guard's
fixtures, so the plugin runs them (or hands them to pytest-asyncio when that
is installed, whatever its mode).

Run: pytest examples/test_with_plugin.py
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from guard import InsufficientBalance, require_balance
from guard.aiohttp import guard_route, setup_guard

if TYPE_CHECKING:
    from guard.pytest_plugin import GuardEmulator, LowFunds
    from guard.testing import InMemoryProvider


@pytest.mark.guard_low_funds(provider="oneclickdz", balance=50)
async def test_topup_refused_on_low_funds(guard_emulator: GuardEmulator) -> None:
    """A 100 DZD top-up is refused when OneClickDZ holds 50 DZD."""
    with pytest.raises(InsufficientBalance) as info:
        async with require_balance(guard_emulator.oneclickdz, 100):
            pass
    assert Decimal(50) == info.value.available


async def test_route_answers_402(
    guard_emulator: GuardEmulator, low_funds: LowFunds
) -> None:
    """The guarded /topup route answers 402 with the amount it needs."""
    low_funds("oneclickdz", 10)

    async def topup(request: web.Request) -> web.Response:
        return web.Response(text="sent")

    app = web.Application()
    app.router.add_post("/topup", topup, name="topup")
    setup_guard(app, routes={"topup": guard_route(guard_emulator.oneclickdz, 20)})
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/topup")

        assert 402 == response.status
        assert "20" == (await response.json(content_type=None))["required"]


async def test_in_memory_provider(memory_provider: InMemoryProvider) -> None:
    """A flaky provider fails closed, and counts its fetches."""
    memory_provider.fail_next(times=5)
    with pytest.raises(Exception, match="injected failure"):
        async with require_balance(memory_provider, 1):
            pass
    assert memory_provider.fetches >= 1


def test_sync_sender(guard_emulator: GuardEmulator, low_funds: LowFunds) -> None:
    """A synchronous sender is refused too."""
    low_funds(guard_emulator.clickatell, 0)

    @require_balance(guard_emulator.clickatell, 1)
    def send_sms() -> None:
        raise AssertionError("not sent")

    with pytest.raises(InsufficientBalance):
        send_sms()
