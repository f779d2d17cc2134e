"""
``python -m guard dashboard --emulator``: the dashboard against the bundled
emulator, with guarded traffic running, for a try-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ._dashboard import dashboard
from ._guard import BalanceGuard
from .errors import GuardError, InsufficientBalance
from .history import SQLiteHistory
from .testing import (
    DEMO_CLICKATELL_API_ID,
    DEMO_CLICKATELL_PASSWORD,
    DEMO_CLICKATELL_USER,
    DEMO_ONECLICKDZ_KEY,
    Emulator,
)

if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["serve_dashboard"]


async def _traffic(
    emu: Emulator, guard: BalanceGuard, http: aiohttp.ClientSession, every: float
) -> None:
    oneclick = emu.oneclickdz(DEMO_ONECLICKDZ_KEY)
    clickatell = emu.clickatell(
        DEMO_CLICKATELL_USER, DEMO_CLICKATELL_PASSWORD, DEMO_CLICKATELL_API_ID
    )
    rng = random.Random(7)
    while True:
        amount = Decimal(rng.randrange(100, 1000, 50))
        try:
            async with (
                guard.reserve(oneclick, amount) as r,
                http.post(
                    f"{emu.url}/v3/mobile/send",
                    headers={"X-Access-Token": DEMO_ONECLICKDZ_KEY},
                    json={
                        "plan_code": "PREPAID_MOBILIS",
                        "MSSIDN": f"066{rng.randrange(10**7):07d}",
                        "amount": int(amount),
                    },
                ) as reply,
            ):
                if reply.status != 200:
                    r.failed()
            async with (
                guard.reserve(clickatell, 1),
                http.post(
                    f"{emu.url}/http/sendmsg",
                    data={
                        "user": DEMO_CLICKATELL_USER,
                        "password": DEMO_CLICKATELL_PASSWORD,
                        "api_id": DEMO_CLICKATELL_API_ID,
                        "to": "213550000000",
                        "text": "Your code is 1234",
                    },
                ) as reply,
            ):
                await reply.read()
        except InsufficientBalance as exc:
            # The try-out refills itself, as an operator would.
            account = (
                DEMO_ONECLICKDZ_KEY
                if exc.provider == "oneclickdz"
                else DEMO_CLICKATELL_USER
            )
            emu.set_balance(account, emu.balance(account) + 10 * exc.required)
        except GuardError:
            pass
        await asyncio.sleep(every)


async def serve_dashboard(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    every: float = 1.0,
    until: asyncio.Event | None = None,
    out: TextIO | None = None,
) -> int:
    """
    Serve the dashboard on *host*:*port* against a fresh emulator with
    traffic every *every* seconds, until *until* is set (or for ever).
    """
    token = token or secrets.token_urlsafe(24)
    say = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="guard-dashboard-") as tmp:
        history = SQLiteHistory(Path(tmp) / "history.db")
        async with (
            Emulator.with_demo_accounts() as emu,
            history,
            BalanceGuard(history=history) as guard,
            aiohttp.ClientSession() as http,
        ):
            app = web.Application()
            app.add_subapp(
                "/guard/", dashboard(guard, history=history, auth=token, refresh=2)
            )

            async def home(request: web.Request) -> web.StreamResponse:
                raise web.HTTPFound("/guard/")

            app.router.add_get("/", home)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            traffic = asyncio.create_task(_traffic(emu, guard, http, every))
            try:
                site = web.TCPSite(runner, host, port)
                await site.start()
                bound = runner.addresses[0][1]
                print(
                    f"guard dashboard on http://{host}:{bound}/guard/ "
                    f"(emulator {emu.url}, live traffic)\n"
                    f"  token: {token}\n"
                    "  a browser asks for it (any user name, the token as "
                    "password);\n"
                    f"  curl -H 'Authorization: Bearer {token}' "
                    f"http://{host}:{bound}/guard/status\n"
                    "Press Ctrl+C to stop.",
                    file=say,
                    flush=True,
                )
                await (until or asyncio.Event()).wait()
            finally:
                traffic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await traffic
                await runner.cleanup()
    return 0
