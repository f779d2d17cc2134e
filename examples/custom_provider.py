"""
Guard a provider guard does not ship: implement the Provider protocol.

The "Acme SMS" API here is served in-process on loopback so the example runs
anywhere; point ``base_url`` at the real service in your code.

Run: python examples/custom_provider.py
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from decimal import Decimal

import aiohttp
import attrs
from aiohttp import web

from guard import BalanceGuard, BalanceUnavailable, InsufficientBalance, require_balance
from guard.errors import ProviderAuthError, ProviderResponseError


@attrs.define(frozen=True)
class AcmeSMS:
    """
    A provider: a name, a unit, a non-secret account identity and one fetch.
    """

    token: str = attrs.field(repr=False)  # a secret: never in a repr
    base_url: str
    name: str = "acme"
    currency: str = "credits"

    @property
    def account_id(self) -> str:
        # Identify the account without revealing the token.
        return hashlib.sha256(f"{self.base_url}\0{self.token}".encode()).hexdigest()[
            :24
        ]

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        try:
            async with session.get(
                f"{self.base_url}/balance", headers={"Authorization": self.token}
            ) as response:
                body = await response.text()
        except aiohttp.ClientError as exc:
            raise BalanceUnavailable(str(exc), provider=self.name) from exc
        if response.status == 401:
            raise ProviderAuthError("token refused", provider=self.name, status=401)
        if response.status != 200:
            raise BalanceUnavailable(
                f"HTTP {response.status}", provider=self.name, status=response.status
            )
        try:
            return Decimal(json.loads(body, parse_float=Decimal)["credits"])
        except (ValueError, KeyError, TypeError, ArithmeticError):
            raise ProviderResponseError(
                "no credits in the answer", provider=self.name, status=200
            ) from None


async def main() -> None:
    credits = Decimal(5)

    async def balance(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "s3cret":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.Response(text=f'{{"credits": {credits}}}')

    app = web.Application()
    app.router.add_get("/balance", balance)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    acme = AcmeSMS("s3cret", base_url=f"http://127.0.0.1:{port}")
    print(f"provider: {acme!r}")

    async with BalanceGuard() as guard:

        @require_balance(acme, amount=lambda to, text: 1, guard=guard)
        async def send_sms(to: str, text: str) -> None:
            nonlocal credits
            credits -= 1  # the real API would debit on send
            print(f"sent to {to}: {text!r}")

        sent = 0
        while True:
            try:
                await send_sms("+213550000000", "Your code is 4242")
            except InsufficientBalance as exc:
                print(f"refused: {exc}")
                break
            sent += 1
        print(f"{sent} messages sent; balance now {(await guard.balance(acme)).amount}")
        assert sent == 5

    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
