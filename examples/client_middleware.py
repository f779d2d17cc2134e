"""
Guard outgoing spend requests in an aiohttp client session: a Clickatell
``sendmsg`` and a OneClickDZ ``/v3/mobile/send`` the balance cannot cover
raise `InsufficientBalance` and never leave.

Both APIs are emulated in-process on loopback so the example runs anywhere.

Run: python examples/client_middleware.py
"""

from __future__ import annotations

import asyncio

import aiohttp

from guard import BalanceGuard, InsufficientBalance
from guard.aiohttp import guard_client_middleware
from guard.testing import Emulator, Route


async def main() -> None:
    async with Emulator() as emu:
        emu.add_oneclickdz("example-key", balance=1000)
        emu.add_clickatell("shop", "example-password", "3000001", credits=3)
        oneclick = emu.oneclickdz("example-key")
        clickatell = emu.clickatell("shop", "example-password", "3000001")

        async with BalanceGuard() as guard:
            middleware = guard_client_middleware(
                guard, providers=[oneclick, clickatell]
            )
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                # 2 recipients x 1 part = 2 credits: sent.
                form = {
                    "user": "shop",
                    "password": "example-password",
                    "api_id": "3000001",
                    "to": "213550000001,213550000002",
                    "text": "Your code is 4242",
                }
                url = f"{clickatell.base_url}/http/sendmsg"
                async with session.post(url, data=form) as response:
                    print("sendmsg:", (await response.text()).splitlines())

                refused: InsufficientBalance | None = None
                # 2 recipients x 2 parts (161 GSM-7 characters) = 4 credits:
                # 1 left.
                try:
                    await session.post(url, data={**form, "text": "x" * 161})
                except InsufficientBalance as exc:
                    print("refused:", exc)
                    refused = exc

                body = {"plan_code": "PREPAID_DJEZZY", "MSSIDN": "0770000000"}
                headers = {"X-Access-Token": "example-key"}
                send = f"{oneclick.base_url}/v3/mobile/send"
                async with session.post(
                    send, json={**body, "amount": 800}, headers=headers
                ) as response:
                    print("top-up 800:", response.status)
                try:
                    await session.post(
                        send, json={**body, "amount": 800}, headers=headers
                    )
                except InsufficientBalance as exc:
                    print("refused:", exc)

        print("requests that reached sendmsg:", emu.count(Route.CLICKATELL_SENDMSG))
        print("requests that reached mobile/send:", emu.count(Route.ONECLICKDZ_SEND))
        assert 1 == emu.count(Route.CLICKATELL_SENDMSG)
        assert refused is not None
        assert (4, 1) == (refused.required, refused.available)
        assert 1 == emu.count(Route.ONECLICKDZ_SEND)


if __name__ == "__main__":
    asyncio.run(main())
