"""
``python -m guard demo``: guarded top-ups and SMS against the bundled
emulator, told as a short story.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from ._aiohttp_client import guard_client_middleware
from ._guard import BalanceGuard
from ._require import require_balance
from .errors import BalanceUnavailable, InsufficientBalance
from .history import (
    SQLiteHistory,
    build_report,
    import_oneclickdz,
    reconcile,
    render,
)
from .monitor import BalanceAlert, BalanceMonitor, Threshold
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

    from ._events import GuardEvent
    from .providers import OneClickDZ

__all__ = ["run_demo"]


def _money(amount: Decimal, unit: str) -> str:
    # One format for every amount the demo prints.
    return f"{amount:,.2f} {unit}"


def _refusal(exc: InsufficientBalance) -> str:
    return (
        f"{_money(exc.required, exc.currency)} required, "
        f"{_money(exc.available, exc.currency)} available"
    )


async def run_demo(*, quiet: bool = False) -> int:
    """
    Run the demo; return 0 when every step turned out as told.

    With *quiet*, print nothing unless a check fails.
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
        say(f"  OneClickDZ account: {_money(emu.balance(DEMO_ONECLICKDZ_KEY), 'DZD')}")
        say(
            "  Clickatell account: "
            f"{_money(emu.balance(DEMO_CLICKATELL_USER), 'credits')}\n"
        )

        def balance_requests() -> int:
            return emu.count(Route.ONECLICKDZ_BALANCE)

        # -- 1. top-ups, the cached balance settled after each -------------
        say("1. Five concurrent top-ups of 1,500.00 DZD:")
        say(
            "   No balance is cached yet, so the five calls share one balance\n"
            "   request instead of making five (single-flight). After each call\n"
            "   the guard settles it: it releases the amount the call held,\n"
            "   takes it off the cached balance, and has the provider's balance\n"
            "   read again in the background (settle='refresh'), so no later\n"
            "   call waits for a balance request."
        )
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
            left = _money(emu.balance(DEMO_ONECLICKDZ_KEY), "DZD")
            say(f"   sent; balance now {left}")
            check(
                "1 balance request served 5 concurrent calls",
                balance_requests() == 1,
            )

            # -- 2. a refusal -----------------------------------------------
            say("\n2. A top-up of 3,000.00 DZD when 2,500.00 DZD are left:")
            sends_before = emu.count(Route.ONECLICKDZ_SEND)
            try:
                await send_topup("0550000000", Decimal(3000))
            except InsufficientBalance as exc:
                say(f"   refused: {_refusal(exc)}")
                check(
                    "required and available are exact Decimals",
                    (exc.required, exc.available) == (Decimal(3000), Decimal(2500)),
                )
            check(
                "the refused top-up never reached the provider",
                emu.count(Route.ONECLICKDZ_SEND) == sends_before,
            )
            check(
                "the refusal names what the provider really has",
                emu.balance(DEMO_ONECLICKDZ_KEY) == Decimal(2500),
            )

            # -- 3. the hold: concurrent calls cannot spend the same money --
            say("\n3. Two top-ups of 1,500.00 DZD at once, with 2,500.00 DZD left:")
            say(
                "   Each fits alone, not both. The first holds its amount while\n"
                "   it runs, so the second sees 1,000.00 DZD available."
            )
            sends_before = emu.count(Route.ONECLICKDZ_SEND)
            results = await asyncio.gather(
                send_topup("0660000001", Decimal(1500)),
                send_topup("0660000002", Decimal(1500)),
                return_exceptions=True,
            )
            refused = [r for r in results if isinstance(r, InsufficientBalance)]
            for refusal in refused:
                say(f"   refused: {_refusal(refusal)}")
            left = _money(emu.balance(DEMO_ONECLICKDZ_KEY), "DZD")
            say(f"   one sent; balance now {left}")
            check(
                "one ran, the other was refused with InsufficientBalance",
                len(refused) == 1 and sum(isinstance(r, str) for r in results) == 1,
            )
            check(
                "the provider saw one top-up, never one it could not cover",
                emu.count(Route.ONECLICKDZ_SEND) == sends_before + 1
                and emu.balance(DEMO_ONECLICKDZ_KEY) == Decimal(1000),
            )

        # -- 4. debit settle: fewer fetches ---------------------------------
        say("\n4. Ten SMS of 1.00 credits each:")
        say(
            "   With settle='debit' the guard subtracts each successful send\n"
            "   from the cached balance instead of forgetting it: no refetch."
        )
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
            say(f"   cached balance {_money(cached.amount, 'credits')}")
            check(
                "ten sends, one balance request, cache debited to 90.00 credits",
                emu.count(Route.CLICKATELL_GETBALANCE) == 1
                and cached.amount == Decimal(90) == emu.balance(DEMO_CLICKATELL_USER),
            )

        # -- 5. an outage ---------------------------------------------------
        say("\n5. OneClickDZ answers 503 to every balance request:")
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
        handler: logging.Handler
        if quiet:
            # Also keeps Python's last-resort handler from printing it.
            handler = logging.NullHandler()
        else:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(
                logging.Formatter("   logged %(levelname)s: %(message)s")
            )
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

        # -- 6. a low-balance alert ------------------------------------------
        emu.set_balance(DEMO_ONECLICKDZ_KEY, 1000)
        say("\n6. A BalanceMonitor watches OneClickDZ, alerting at 1,500.00 DZD:")
        say(
            "   The account stands at 1,000.00 DZD. The monitor sees every\n"
            "   balance the guard learns. An alert fires once per crossing, and\n"
            "   once more when a refill lifts the balance back."
        )
        alerts: list[BalanceAlert] = []

        async def on_alert(alert: BalanceAlert) -> None:
            alerts.append(alert)
            say(
                f"   alert {alert.kind!r} ({alert.level}): balance "
                f"{_money(alert.balance, alert.currency)}, threshold "
                f"{_money(alert.threshold, alert.currency)}"
            )

        async with BalanceGuard() as guard:
            monitor = BalanceMonitor(guard=guard)
            monitor.watch(
                oneclick, [Threshold(1500, level="critical")], notify=[on_alert]
            )
            async with monitor:
                await guard.balance(oneclick)
                await monitor.flush()
                async with (
                    guard.reserve(oneclick, 100),
                    http.post(
                        f"{emu.url}/v3/mobile/send",
                        headers={"X-Access-Token": DEMO_ONECLICKDZ_KEY},
                        json={
                            "plan_code": "PREPAID_DJEZZY",
                            "MSSIDN": "0770000009",
                            "amount": 100,
                        },
                    ) as response,
                ):
                    response.raise_for_status()
                await guard.balance(oneclick)
                await monitor.flush()
                say("   a top-up of 100.00 DZD later: still below, no new alert")
                check(
                    "one 'low' alert for 1,000.00 DZD, none for 900.00 DZD",
                    [(a.kind, a.balance) for a in alerts] == [("low", Decimal(1000))],
                )
                emu.set_balance(DEMO_ONECLICKDZ_KEY, 10000)
                say("   the account is refilled to 10,000.00 DZD")
                await guard.balance(oneclick, fresh=True)
                await monitor.flush()
            check(
                "the refill sent one 'recovered' alert",
                [a.kind for a in alerts] == ["low", "recovered"],
            )

        # -- 7. history, reconciliation and a report -------------------------
        report_path = await _history_step(emu, http, oneclick, say, check)

        # -- 7. a priced fixed-plan top-up ------------------------------------
        say("\n7. A fixed-plan top-up (PIXX_500) through the client middleware:")
        say(
            "   The request names a plan, not an amount. The guard reads the\n"
            "   provider's plan list (500.00 DZD at cost 0.97) and holds what the\n"
            "   provider will really debit, not the face value. The account is\n"
            "   refilled with 1,000.00 DZD first."
        )
        emu.set_balance(
            DEMO_ONECLICKDZ_KEY, emu.balance(DEMO_ONECLICKDZ_KEY) + Decimal(1000)
        )
        async with BalanceGuard() as guard:
            held: list[Decimal] = []

            def on_settled(event: GuardEvent) -> None:
                if event.kind == "settled" and event.amount is not None:
                    held.append(event.amount)

            guard.add_hook(on_settled)
            middleware = guard_client_middleware(guard, providers=[oneclick])
            before = emu.balance(DEMO_ONECLICKDZ_KEY)
            async with (
                aiohttp.ClientSession(middlewares=(middleware,)) as priced,
                priced.post(
                    f"{emu.url}/v3/mobile/send",
                    headers={"X-Access-Token": DEMO_ONECLICKDZ_KEY},
                    json={"plan_code": "PIXX_500", "MSSIDN": "0660000003"},
                ) as response,
            ):
                await response.read()
            debit = before - emu.balance(DEMO_ONECLICKDZ_KEY)
            say(
                f"   held {_money(sum(held, Decimal(0)), 'DZD')}; "
                f"the provider debited {_money(debit, 'DZD')}"
            )
            check(
                "the fixed plan was held at amount x cost, what the provider debited",
                held == [debit] == [Decimal("485.00")],
            )

    failed = [what for what, ok in checks if not ok]
    summary = f"guard demo: {len(checks) - len(failed)} of {len(checks)} checks passed"
    if failed:
        print(f"{summary}; failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    say(summary)
    say(f"\nThe report is in {report_path}")
    return 0


async def _history_step(
    emu: Emulator,
    http: aiohttp.ClientSession,
    oneclick: OneClickDZ,
    say: Callable[[str], None],
    check: Callable[[str, bool], None],
) -> Path:
    say("\n7. Three guarded top-ups of 200.00 DZD, one of 300.00 DZD around guard:")
    say(
        "   A guard given a history records every balance it reads and every\n"
        "   call it settles, off the hot path. The provider's own transactions\n"
        "   are then imported and reconciled with them."
    )

    async def send(amount: int) -> None:
        async with http.post(
            f"{emu.url}/v3/mobile/send",
            headers={"X-Access-Token": DEMO_ONECLICKDZ_KEY},
            json={
                "plan_code": "PREPAID_DJEZZY",
                "MSSIDN": "0770000000",
                "amount": amount,
            },
        ) as response:
            await response.read()

    folder = Path(tempfile.mkdtemp(prefix="guard-demo-"))
    since = dt.datetime.now(dt.UTC)
    async with SQLiteHistory(folder / "history.db") as history:
        async with BalanceGuard(history=history) as guard:
            for _ in range(3):
                async with guard.reserve(oneclick, 200):
                    await send(200)
        await send(300)  # around guard
        imported = await import_oneclickdz(history, oneclick)
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        found = await reconcile(history, since, until)
        report = await build_report(history, since.date(), until.date())
    say(
        f"   imported {imported.added} transactions; {len(found.through_guard)} "
        f"spends went through guard, {len(found.bypassed)} around it "
        f"({_money(found.bypassed_total, 'DZD')})"
    )
    check(
        "the spend made around guard shows up as bypassing it",
        len(found.through_guard) == 3 and found.bypassed_total == Decimal(300),
    )
    check("every imported transaction adds up", not imported.flagged)
    path = folder / "guard-report.html"
    path.write_text(render(report, "html"), encoding="utf-8")
    return path
