"""
Low-balance alerts by SMS, through your own Clickatell account.

A `BalanceMonitor` watches the OneClickDZ account your top-ups spend from.
When it runs low, the notifier below texts the on-call phone with
Clickatell's ``sendmsg``, the SMS itself guarded like any other spend (one
credit). A refill sends one "recovered" SMS.

Both APIs are emulated on loopback so the example runs anywhere; in
production, build the providers with your own credentials and leave out
``base_url``.

Run: python examples/sms_alerts.py
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp

from guard import BalanceAlert, BalanceGuard, BalanceMonitor, Threshold
from guard.testing import Emulator

if TYPE_CHECKING:
    from guard.providers import Clickatell

ON_CALL = "213550000001"


class SmsAlert:
    """
    A notifier that texts each alert to *to* from your Clickatell account.
    """

    def __init__(self, clickatell: Clickatell, to: str, guard: BalanceGuard) -> None:
        self.clickatell = clickatell
        self.to = to
        self.guard = guard

    async def __call__(self, alert: BalanceAlert) -> None:
        form = {
            "user": self.clickatell.user,
            # Revealed only here, where they go on the wire (a POST body).
            "password": self.clickatell.password.reveal(),
            "api_id": self.clickatell.api_id.reveal(),
            "to": self.to,
            "text": str(alert)[:160],  # one SMS part
        }
        async with (
            self.guard.reserve(self.clickatell, 1) as sms,
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.clickatell.base_url}/http/sendmsg", data=form
            ) as reply,
        ):
            answer = await reply.text()
            if not answer.startswith("ID:"):
                sms.failed()
                # The monitor retries, then logs a WARNING naming the error.
                raise RuntimeError(f"Clickatell refused the SMS: {answer[:12]}")


async def main() -> None:
    async with Emulator() as emu:
        emu.add_oneclickdz("your-oneclickdz-key", 1800)
        account = emu.add_clickatell("you", "your-password", "3000001", credits=10)
        oneclick = emu.oneclickdz("your-oneclickdz-key")
        clickatell = emu.clickatell("you", "your-password", "3000001")

        async with BalanceGuard(settle="debit") as guard:
            monitor = BalanceMonitor(guard=guard, interval=300)
            monitor.watch(
                oneclick,
                [Threshold(1000), Threshold(200, level="critical")],
                notify=[SmsAlert(clickatell, ON_CALL, guard)],
            )
            async with monitor:
                for amount in (500, 500, 600):  # your top-ups
                    async with guard.reserve(oneclick, amount):
                        emu.set_balance(
                            "your-oneclickdz-key",
                            emu.balance("your-oneclickdz-key") - amount,
                        )
                    await monitor.flush()
                emu.set_balance("your-oneclickdz-key", 20000)  # you refilled
                await guard.balance(oneclick, fresh=True)
                await monitor.flush()

        for message in account.messages:
            print(f"SMS to {message.to}: {message.text}")
        assert [
            "oneclickdz: 800.00 DZD left, at or below the 1,000 DZD warning threshold",
            "oneclickdz: 200.00 DZD left, at or below the 200 DZD critical threshold",
            "oneclickdz: 20,000.00 DZD, back above the 1,000 DZD warning threshold",
        ] == [m.text for m in account.messages]
        assert Decimal(7) == emu.balance("you")  # one credit per SMS


if __name__ == "__main__":
    asyncio.run(main())
