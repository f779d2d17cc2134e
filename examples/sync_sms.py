"""
A synchronous SMS sender (a script, a Django view, a Celery task): the same
``require_balance``, on a ``def`` and in a ``with`` block, from several
threads at once.

The Clickatell API is emulated on loopback in a background thread so the
example runs anywhere.

Run: python examples/sync_sms.py
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import aiohttp

from guard import InsufficientBalance, require_balance
from guard.testing import Emulator

emu = Emulator()
emu.add_clickatell("shop", "example-password", "3000001", credits=5)
loop = asyncio.new_event_loop()
stop = asyncio.Event()


def serve_emulator() -> None:
    async def serve() -> None:
        async with emu:
            ready.set()
            await stop.wait()

    loop.run_until_complete(serve())
    loop.close()


ready = threading.Event()
server = threading.Thread(target=serve_emulator, daemon=True)
server.start()
ready.wait()
clickatell = emu.clickatell("shop", "example-password", "3000001")


def post_sms(to: str, text: str) -> str:
    # Your existing synchronous client (requests, httpx...) goes here.
    async def post() -> str:
        form = {
            "user": "shop",
            "password": "example-password",
            "api_id": "3000001",
            "to": to,
            "text": text,
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{clickatell.base_url}/http/sendmsg", data=form) as response,
        ):
            return await response.text()

    return asyncio.run(post())


@require_balance(clickatell, amount=1)
def send_sms(to: str, text: str) -> str:
    return post_sms(to, text)


def main() -> None:
    with require_balance(clickatell, 2) as balance:
        print("balance before the batch:", balance.amount if balance else None)

    def attempt(n: int) -> str:
        try:
            return send_sms(f"21355000000{n}", f"Order {n} shipped")
        except InsufficientBalance:
            return "refused"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, range(8)))
    for result in results:
        print(result)
    sent = sum(r.startswith("ID:") for r in results)
    print(f"{sent} sent, credits left: {emu.balance('shop')}")
    # Never an overspend: every send the provider accepted was paid for.
    assert not any(r.startswith("ERR") for r in results)
    assert Decimal(5) == sent + emu.balance("shop")


if __name__ == "__main__":
    try:
        main()
    finally:
        loop.call_soon_threadsafe(stop.set)
        server.join()
