"""
``python -m guard demo``: guarded top-ups and SMS against the bundled
emulator, told as a short story.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp

from ._guard import BalanceGuard
from ._require import require_balance
from .errors import BalanceUnavailable, InsufficientBalance
from .testing import (
    DEMO_CLICKATELL_API_ID,
    DEMO_CLICKATELL_PASSWORD,
    DEMO_CLICKATELL_USER,
    DEMO_ONECLICKDZ_KEY,
    Emulator,
    Fault,
    Route,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_demo"]


async def run_demo(*, quiet: bool = False) -> int:
    """
    Run the demo; return 0 when every step turned out as told.
    """
    say: Callable[[str], None] = (lambda _: None) if quiet else print
    checks: list[tuple[str, bool]] = []

    def check(what: str, ok: bool) -> None:
        checks.append((what, ok))
        say(f"   {'ok' if ok else 'FAILED'}: {what}")

    async with (
        Emulator.with_demo_accounts() as emu,
        aiohttp.ClientSession() as http,
    ):
        oneclick = emu.oneclickdz(DEMO_ONECLICKDZ_KEY)
        clickatell = emu.clickatell(
            DEMO_CLICKATELL_USER, DEMO_CLICKATELL_PASSWORD, DEMO_CLICKATELL_API_ID
        )
        say(f"Provider emulator on {emu.url}")
        say(f"  OneClickDZ account: {emu.balance(DEMO_ONECLICKDZ_KEY)} DZD")
        say(f"  Clickatell account: {emu.balance(DEMO_CLICKATELL_USER)} credits\n")

        def balance_requests() -> int:
            return emu.count(Route.ONECLICKDZ_BALANCE)

        # -- 1. top-ups, cache invalidated after each -----------------------
        say("1. Five concurrent 1,500 DZD top-ups (settle='invalidate'):")
        async with BalanceGuard(ttl=30) as guard:

            @require_balance(oneclick, lambda phone, amount: amount, guard=guard)
            async def send_topup(phone: str, amount: Decimal) -> str:
                async with http.post(
                    f"{emu.url}/v3/mobile/send",
                    headers={"X-Access-Token": DEMO_ONECLICKDZ_KEY},
                    json={
                        "plan_code": "PREPAID_DJEZZY",
                        "MSSIDN": phone,
                        "amount": int(amount),
                    },
                ) as response:
                    body = await response.json()
                if not body["success"]:
                    raise RuntimeError(body["error"]["code"])
                return str(body["data"]["topupId"])

            phones = [f"077000000{i}" for i in range(5)]
            await asyncio.gather(*(send_topup(p, Decimal(1500)) for p in phones))
            say(f"   sent; balance now {emu.balance(DEMO_ONECLICKDZ_KEY)} DZD")
            check(
                "1 balance request served 5 concurrent calls (single-flight)",
                balance_requests() == 1,
            )

            # -- 2. a refusal -----------------------------------------------
            say("\n2. A 3,000 DZD top-up when 2,500 DZD are left:")
            sends_before = emu.count(Route.ONECLICKDZ_SEND)
            try:
                await send_topup("0550000000", Decimal(3000))
            except InsufficientBalance as exc:
                say(f"   refused: {exc}")
                check(
                    "required and available are exact Decimals",
                    (exc.required, exc.available) == (Decimal(3000), Decimal(2500)),
                )
            check(
                "the refused top-up never reached the provider",
                emu.count(Route.ONECLICKDZ_SEND) == sends_before,
            )
            check(
                "the settled calls invalidated the cache: 1 more request",
                balance_requests() == 2,
            )

        # -- 3. debit settle: fewer fetches ---------------------------------
        say("\n3. Ten SMS of 1 credit each (settle='debit', no refetch):")
        async with BalanceGuard(settle="debit") as guard:

            @require_balance(clickatell, 1, guard=guard)
            async def send_sms(to: str, text: str) -> str:
                async with http.post(
                    f"{emu.url}/http/sendmsg",
                    data={
                        "user": DEMO_CLICKATELL_USER,
                        "password": DEMO_CLICKATELL_PASSWORD,
                        "api_id": DEMO_CLICKATELL_API_ID,
                        "to": to,
                        "text": text,
                    },
                ) as response:
                    return await response.text()

            for i in range(10):
                await send_sms("213550000000", f"Your code is {1000 + i}")
            cached = await guard.balance(clickatell)
            say(f"   cached balance {cached.amount} credits")
            check(
                "ten sends, one balance request, cache debited to 90",
                emu.count(Route.CLICKATELL_GETBALANCE) == 1
                and cached.amount == Decimal(90) == emu.balance(DEMO_CLICKATELL_USER),
            )

        # -- 4. an outage ---------------------------------------------------
        say("\n4. OneClickDZ answers 503 to every balance request:")
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(503, "SERVICE_UNAVAILABLE", "Upstream timeout"),
            times=None,
        )
        async with BalanceGuard(retries=1, max_retry_after=0.05) as guard:
            try:
                async with require_balance(oneclick, 100, guard=guard):
                    pass
            except BalanceUnavailable as exc:
                say(f"   fail closed (default): {exc}")
                check("on_unavailable='closed' refuses", True)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("   logged %(levelname)s: %(message)s"))
        log = logging.getLogger("guard")
        log.addHandler(handler)
        try:
            async with (
                BalanceGuard(retries=0, on_unavailable="open") as guard,
                require_balance(oneclick, 100, guard=guard) as seen,
            ):
                say("   fail open: the call went ahead unchecked")
                check("on_unavailable='open' lets the call through", seen is None)
        finally:
            log.removeHandler(handler)
        emu.clear_faults()

    failed = [what for what, ok in checks if not ok]
    print(
        f"guard demo: {len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; failed: {'; '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0
