"""
Type-checked by mypy in CI, never run: the public API as users write it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import assert_type

import aiohttp
from aiocache import SimpleMemoryCache

from guard import (
    Balance,
    BalanceGuard,
    BalanceUnavailable,
    GuardError,
    InsufficientBalance,
    require_balance,
    set_default_guard,
)
from guard.providers import Clickatell, ClickatellPlatform, OneClickDZ, Secret

oneclick = OneClickDZ("key", base_url="http://127.0.0.1:8080")
clickatell = Clickatell("user", "password", "3000001")
from_secret = OneClickDZ(Secret("key"))
key: Secret = oneclick.api_key
header: str = key.reveal()


@require_balance(oneclick, amount=lambda phone, amount: amount)
async def send_topup(phone: str, amount: Decimal) -> str:
    return phone


class Sender:
    @require_balance(clickatell, 3)
    async def send(self, to: str, text: str) -> int:
        return len(text)


async def use() -> None:
    assert_type(await send_topup("0550000000", Decimal(100)), str)
    assert_type(await Sender().send("213550000000", "hi"), int)
    async with BalanceGuard(cache=SimpleMemoryCache(), ttl=30) as guard:
        assert_type(await guard.balance(oneclick), Balance)
        assert_type(await guard.balance(oneclick, fresh=True), Balance)
        await guard.invalidate(oneclick)
        with set_default_guard(guard):
            async with require_balance(clickatell, "1.5") as balance:
                assert_type(balance, Balance | None)
    try:
        await send_topup("0550000000", amount=Decimal("12.5"))
    except InsufficientBalance as exc:
        assert_type(exc.required, Decimal)
        assert_type(exc.available, Decimal)
    except GuardError:
        pass


async def priced(platform_key: str) -> None:
    platform = ClickatellPlatform(platform_key, billing_currency="ZAR")
    assert_type(platform.currency, str)
    async with BalanceGuard() as guard:
        async with guard.reserve(oneclick, 485, reports=True) as r:
            r.report_balance(Decimal("515.00"))
        assert_type((await guard.balance(oneclick)).sandbox, bool)

        async def load(session: aiohttp.ClientSession) -> dict[str, Decimal]:
            return {"PIXX_500": Decimal("0.97")}

        assert_type(
            await guard.catalogue(oneclick, "plans", load, ttl=60),
            dict[str, Decimal],
        )
    try:
        await send_topup("0550000000", Decimal(1))
    except BalanceUnavailable as exc:
        assert_type(exc.request_id, str | None)


async def use_history() -> None:
    from aiohttp import web

    from guard.aiohttp import dashboard
    from guard.history import Reconciliation, SQLiteHistory, reconcile

    async with (
        SQLiteHistory("history.db") as history,
        BalanceGuard(history=history) as guard,
    ):
        assert_type(dashboard(guard, history=history, auth="t" * 16), web.Application)
        readings = await history.readings(provider="oneclickdz")
        assert_type(readings[0].amount, Decimal)
        found = await reconcile(history, readings[0].at, readings[-1].at)
        assert_type(found, Reconciliation)
        assert_type(found.ratio, Decimal | None)


async def alerts(guard: BalanceGuard) -> None:
    from guard import BalanceAlert, BalanceMonitor, Forecast, Threshold
    from guard.notify import Email, Webhook

    def on_alert(alert: BalanceAlert) -> None:
        assert_type(alert.threshold, Decimal)
        assert_type(alert.balance, Decimal)

    async def on_alert_async(alert: BalanceAlert) -> None:
        assert_type(alert.hours_left, float | None)

    monitor = BalanceMonitor(guard=guard, interval=300)
    monitor.watch(
        oneclick,
        [Threshold(5000), Threshold("1000", level="critical"), Forecast(6)],
        notify=[
            on_alert,
            on_alert_async,
            Webhook("https://ops.example/hooks/guard"),
            Email("smtp.example", sender="g@example.org", to="ops@example.org"),
        ],
    )
    async with monitor:
        await monitor.flush()
    assert_type(monitor.level("oneclickdz", "digest"), str | None)
    assert_type(monitor.alert_counts()["warning", "delivered"], int)
