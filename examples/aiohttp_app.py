"""
A reseller app whose ``POST /topup`` is guarded by route name: a top-up the
OneClickDZ balance cannot cover is answered ``402`` before the handler runs.

The OneClickDZ API is emulated in-process on loopback so the example runs
anywhere; drop the emulator and use ``OneClickDZ(api_key)`` in your app.

Run: python examples/aiohttp_app.py
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from guard import BalanceGuard
from guard.aiohttp import guard_route, setup_guard
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from guard.providers import OneClickDZ

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def topup_amount(request: web.Request) -> Any:
    # aiohttp keeps the body: the handler can read it again.
    return (await request.json())["amount"]


def make_app(oneclick: OneClickDZ) -> web.Application:
    async def topup(request: web.Request) -> web.Response:
        order = await request.json()
        async with request.app[SESSION].post(
            f"{oneclick.base_url}/v3/mobile/send",
            json={
                "plan_code": "PREPAID_DJEZZY",
                "MSSIDN": order["phone"],
                "amount": order["amount"],
            },
            headers={"X-Access-Token": oneclick.api_key.reveal()},
        ) as sent:
            return web.json_response(await sent.json(), status=sent.status)

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[SESSION] = session
            yield

    app = web.Application()
    app.cleanup_ctx.append(session_context)
    app.router.add_post("/topup", topup, name="topup")
    setup_guard(
        app,
        lambda: BalanceGuard(ttl=30),
        routes={"topup": guard_route(oneclick, amount=topup_amount)},
    )
    return app


async def main() -> None:
    async with Emulator() as emu:
        emu.add_oneclickdz("example-key", balance=1000)
        runner = web.AppRunner(make_app(emu.oneclickdz("example-key")))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as client:
                for amount in (300, 5000):
                    async with client.post(
                        f"http://127.0.0.1:{port}/topup",
                        json={"phone": "0770000000", "amount": amount},
                    ) as response:
                        body = await response.json(content_type=None)
                        print(f"top-up {amount} DZD -> {response.status}")
                        print(f"  {response.content_type}: {json.dumps(body)}")
        finally:
            await runner.cleanup()
        print(f"emulated balance left: {emu.balance('example-key')} DZD")
        assert Decimal(700) == emu.balance("example-key")


if __name__ == "__main__":
    asyncio.run(main())
