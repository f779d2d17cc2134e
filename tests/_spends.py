"""
Numbered accounts of each provider kind on an emulator, and one spend
request on each, sent as an app sends it through the client middleware.

Used by the client-middleware tests and ``benchmarks/bench_client.py``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

    from guard.testing import Emulator
    from guard.typing import Provider

    Add = Callable[[Emulator, int, Decimal], Provider]
    Spend = Callable[[aiohttp.ClientSession, Any], Awaitable[int]]


def add_oneclickdz(emu: Emulator, i: int, balance: Decimal = Decimal(0)) -> Provider:
    emu.add_oneclickdz(f"key-{i:04d}", balance)
    return emu.oneclickdz(f"key-{i:04d}")


def add_clickatell(emu: Emulator, i: int, balance: Decimal = Decimal(0)) -> Provider:
    user, password, api_id = f"user-{i:04d}", f"pw-{i}", f"{3000000 + i}"
    emu.add_clickatell(user, password, api_id, balance)
    return emu.clickatell(user, password, api_id)


def add_platform(emu: Emulator, i: int, balance: Decimal = Decimal(0)) -> Provider:
    emu.add_clickatell_platform(f"platform-key-{i:04d}", balance)
    return emu.clickatell_platform(f"platform-key-{i:04d}")


async def send_oneclickdz(
    session: aiohttp.ClientSession, base_url: str, token: str
) -> int:
    """
    A 100 DZD top-up on a dynamic plan; the answer's status.
    """
    async with session.post(
        f"{base_url}/v3/mobile/send",
        json={"plan_code": "PREPAID_DJEZZY", "MSSIDN": "0770000000", "amount": 100},
        headers={"X-Access-Token": token},
    ) as response:
        await response.read()
        return response.status


async def spend_oneclickdz(session: aiohttp.ClientSession, provider: Any) -> int:
    return await send_oneclickdz(session, provider.base_url, provider.api_key.reveal())


async def spend_clickatell(session: aiohttp.ClientSession, provider: Any) -> int:
    """
    One SMS part to one recipient, credentials in the form.
    """
    async with session.post(
        f"{provider.base_url}/http/sendmsg",
        data={
            "user": provider.user,
            "password": provider.password.reveal(),
            "api_id": provider.api_id.reveal(),
            "to": "213550000001",
            "text": "hello",
        },
    ) as response:
        await response.read()
        return response.status


async def spend_platform(session: aiohttp.ClientSession, provider: Any) -> int:
    """
    One SMS part to one recipient.
    """
    async with session.post(
        f"{provider.base_url}/messages",
        json={"to": ["213550000001"], "content": "hello"},
        headers={"Authorization": provider.api_key.reveal()},
    ) as response:
        await response.read()
        return response.status


KINDS: dict[str, tuple[Add, Spend]] = {
    "OneClickDZ": (add_oneclickdz, spend_oneclickdz),
    "Clickatell": (add_clickatell, spend_clickatell),
    "Platform": (add_platform, spend_platform),
}
"""
Each kind's name, how to add its account number i, and a spend on it.
"""
