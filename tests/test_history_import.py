"""
The provider's own record in the history: importing OneClickDZ
transactions from the emulator, reconciling them with guard's spends over a
scripted month, and the daily reports (and their command lines).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import sys
import time
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp
import attrs
import pytest

from guard import BalanceGuard, ProviderAuthError, ProviderResponseError
from guard.history import (
    SQLiteHistory,
    Transaction,
    build_report,
    import_oneclickdz,
    reconcile,
    render,
)
from guard.testing import Emulator, Fault, Plan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

KEY = "history-import-key-0123456789"
DAY = dt.timedelta(days=1)


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    plans = [
        Plan(
            "PIXX",
            "Mobilis Pixx",
            "mobilis",
            cost=Decimal("0.97"),
            min_amount=Decimal(50),
            max_amount=Decimal(5000),
        )
    ]
    async with Emulator(plans=plans) as emu:
        emu.add_oneclickdz(KEY, 0)
        yield emu


@pytest.fixture(name="history")
async def _history(tmp_path: Path) -> AsyncIterator[SQLiteHistory]:
    async with SQLiteHistory(tmp_path / "history.db") as history:
        yield history


def ledger(emu: Emulator, n: int) -> None:
    """Give the account *n* transactions: deposits and withdrawals in turn."""
    account = emu.account(KEY)
    for i in range(n):
        emu.set_balance(account, account.balance + (7 if i % 2 == 0 else -3))


class TestImport:
    async def test_ten_thousand_in_100_pages(
        self, emu: Emulator, history: SQLiteHistory
    ) -> None:
        """10,000 transactions come in 100 pages in at most 10 s; again: 0 new."""
        ledger(emu, 10_000)
        provider = emu.oneclickdz(KEY)
        started, cpu = time.perf_counter(), time.process_time()
        first = await import_oneclickdz(history, provider)
        took = time.perf_counter() - started
        # Client and emulator share this process: its CPU time is both.
        print(
            f"imported 10,000 transactions in {took:.2f} s "
            f"({time.process_time() - cpu:.2f} s CPU)"
        )
        again = await import_oneclickdz(history, provider)

        assert (100, 10_000, 10_000, ()) == (
            first.pages,
            first.seen,
            first.added,
            first.flagged,
        )
        assert took <= 10.0, f"the import took {took:.1f} s"
        assert (10_000, 0) == (again.seen, again.added)
        requests = [r for r in emu.requests if r.route == "oneclickdz.transactions"]
        assert {"100"} == {r.query["pageSize"] for r in requests}
        rows = await history.transactions()
        assert 10_000 == len(rows)
        assert {"DEPOSIT", "WITHDRAW"} == {r.type for r in rows}
        assert all(r.consistent for r in rows)

    async def test_tampered_row_flagged(
        self, emu: Emulator, history: SQLiteHistory
    ) -> None:
        """A row whose balances don't add up is stored and flagged."""
        ledger(emu, 30)
        account = emu.account(KEY)
        bad = account.transactions[12]
        account.transactions[12] = attrs.evolve(
            bad, new_balance=bad.new_balance + Decimal("0.01")
        )
        result = await import_oneclickdz(history, emu.oneclickdz(KEY))
        assert [bad.id] == [t.id for t in result.flagged]
        stored = {t.id: t.consistent for t in await history.transactions()}
        assert stored[bad.id] is False
        assert 29 == sum(stored.values())

    async def test_period_filter(self, emu: Emulator, history: SQLiteHistory) -> None:
        """--from/--to import only the transactions of that period."""
        ledger(emu, 3)
        emu.advance(10 * 86400)
        ledger(emu, 2)
        now = emu.account(KEY).transactions[-1].time
        result = await import_oneclickdz(
            history, emu.oneclickdz(KEY), since=now - DAY, until=now + DAY
        )
        assert 2 == result.added
        query = next(r for r in emu.requests if r.route == "oneclickdz.transactions")
        assert {"from", "to", "page", "pageSize"} <= set(query.query)

    async def test_refused_key(self, emu: Emulator, history: SQLiteHistory) -> None:
        """A refused key raises ProviderAuthError without showing the key."""
        with pytest.raises(ProviderAuthError) as caught:
            await import_oneclickdz(history, emu.oneclickdz("wrong-" + KEY))
        assert KEY not in str(caught.value)

    async def test_unreadable_page(self, emu: Emulator, history: SQLiteHistory) -> None:
        """A success envelope without items is a ProviderResponseError."""
        emu.fail(
            "oneclickdz.transactions",
            Fault(status=200, body='{"success": true, "data": {}}'),
        )
        with pytest.raises(ProviderResponseError, match=r"no data\.items"):
            await import_oneclickdz(history, emu.oneclickdz(KEY))

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ("not json", "not valid JSON"),
            ('{"success": false}', "not a success envelope"),
            ('{"success": true, "data": {"items": [{"type": "FLEXY"}]}}', "_id"),
            (
                '{"success": true, "data": {"items": [{"_id": 1, "type": "FLEXY", '
                '"amount": 1, "oldBalance": 2, "newBalance": 1, '
                '"time": "2026-01-01T00:00:00Z"}]}}',
                "not text",
            ),
            (
                '{"success": true, "data": {"items": [{"_id": "a", "type": "FLEXY", '
                '"amount": "1", "oldBalance": 2, "newBalance": 1, '
                '"time": "2026-01-01T00:00:00Z"}]}}',
                "amount",
            ),
            (
                '{"success": true, "data": {"items": [{"_id": "a", "type": "FLEXY", '
                '"amount": 1, "oldBalance": 2, "newBalance": 1, "time": "soon"}]}}',
                "readable",
            ),
        ],
    )
    async def test_malformed_rows(
        self, emu: Emulator, history: SQLiteHistory, body: str, message: str
    ) -> None:
        """Unreadable pages and rows are ProviderResponseErrors saying what."""
        emu.fail("oneclickdz.transactions", Fault(status=200, body=body))
        with pytest.raises(ProviderResponseError, match=message):
            await import_oneclickdz(history, emu.oneclickdz(KEY))

    async def test_pagination_under_meta(
        self, emu: Emulator, history: SQLiteHistory
    ) -> None:
        """Pagination is also read from meta, where one docs page puts it."""
        row = (
            '{"_id": "m1", "type": "BONUS", "amount": 5, "oldBalance": 0, '
            '"newBalance": -5, "objid": null, "note": null, '
            '"time": "2026-01-01T00:00:00.000Z"}'
        )
        emu.fail(
            "oneclickdz.transactions",
            Fault(
                status=200,
                body='{"success": true, "data": {"items": [' + row + "]}, "
                '"meta": {"pagination": {"totalPages": 1}}}',
            ),
        )
        result = await import_oneclickdz(history, emu.oneclickdz(KEY))
        assert (1, 1) == (result.pages, result.added)
        (stored,) = await history.transactions()
        # An unknown type adds up either way; its direction is unknown.
        assert ("unknown", True, "") == (
            stored.direction,
            stored.consistent,
            stored.note,
        )

    async def test_unreachable(self, history: SQLiteHistory) -> None:
        """No server: BalanceUnavailable naming the listing."""
        from guard import BalanceUnavailable
        from guard.providers import OneClickDZ

        provider = OneClickDZ(KEY, base_url="http://127.0.0.1:9")
        with pytest.raises(BalanceUnavailable, match="listing transactions"):
            await import_oneclickdz(history, provider)


async def send(
    http: aiohttp.ClientSession, emu: Emulator, amount: int, phone: str
) -> str:
    async with http.post(
        f"{emu.url}/v3/mobile/send",
        headers={"X-Access-Token": KEY},
        json={"plan_code": "PIXX", "MSSIDN": phone, "amount": amount},
    ) as reply:
        body = await reply.json()
    assert body["success"], body
    return str(body["data"]["topupId"])


async def scripted_month(
    emu: Emulator, tmp_path: Path
) -> tuple[SQLiteHistory, dt.datetime, dt.datetime]:
    """
    30 days of traffic: a deposit, two guarded top-ups a day, one top-up
    made around guard (day 10), one refunded (day 20). The history's clock
    moves with the emulator's.
    """
    shift = [dt.timedelta(0)]
    history = SQLiteHistory(
        tmp_path / "month.db", clock=lambda: dt.datetime.now(dt.UTC) + shift[0]
    )
    await history.open()
    start = dt.datetime.now(dt.UTC)
    provider = emu.oneclickdz(KEY)
    async with (
        BalanceGuard(history=history) as guard,
        aiohttp.ClientSession() as http,
    ):
        emu.set_balance(KEY, 50_000)
        for day in range(30):
            for n, amount in enumerate((500, 1000)):
                if day == 20 and n == 1:
                    emu.topup_statuses = ("REFUNDED",)
                async with guard.reserve(provider, amount):
                    topup = await send(http, emu, amount, f"06600000{day:02d}")
                if day == 20 and n == 1:
                    emu.topup_statuses = ("FULFILLED",)
                    # Checking it is what makes the emulator refund it.
                    async with http.get(
                        f"{emu.url}/v3/mobile/check-id/{topup}",
                        headers={"X-Access-Token": KEY},
                    ) as reply:
                        assert "REFUNDED" == (await reply.json())["data"]["status"]
            if day == 10:
                await send(http, emu, 2000, "0770000000")  # around guard
            emu.advance(86400)
            shift[0] += DAY
    end = dt.datetime.now(dt.UTC) + shift[0]
    await import_oneclickdz(history, provider, since=start, until=end)
    return history, start, end


class TestReconcile:
    async def test_scripted_month(self, emu: Emulator, tmp_path: Path) -> None:
        """Guarded spends, a spend around guard and a refund land in their columns."""
        history, start, end = await scripted_month(emu, tmp_path)
        try:
            rec = await reconcile(history, start, end)
        finally:
            await history.aclose()
        assert 60 == len(rec.through_guard)
        assert [] == list(rec.unmatched)
        assert [Decimal("1940.00")] == [t.amount for t in rec.bypassed]
        assert [("REFUND-FLEXY", Decimal("970.00"))] == [
            (t.type, t.amount) for t in rec.refunds
        ]
        assert Decimal("0.9700") == rec.ratio
        assert Decimal(45_000) == rec.face_total
        assert Decimal("43650.00") == rec.debited_total
        assert all(m.ratio == Decimal("0.9700") for m in rec.through_guard)

    async def test_report_of_the_month(self, emu: Emulator, tmp_path: Path) -> None:
        """The daily report shows deposits, spend, refunds, estimate vs actual."""
        history, start, end = await scripted_month(emu, tmp_path)
        try:
            report = await build_report(history, start.date(), end.date())
        finally:
            await history.aclose()
        days = {d.date: d for d in report.days}
        first, bypass, refund = (days[(start + n * DAY).date()] for n in (0, 10, 20))
        assert (Decimal(0), Decimal(50_000)) == (first.opening, first.deposits)
        assert first.closing == Decimal(50_000) - Decimal("1455.00")
        assert (Decimal(1500), Decimal("3395.00")) == (bypass.estimated, bypass.actual)
        assert Decimal("970.00") == refund.refunds
        assert all(
            a.closing == b.opening
            for a, b in zip(report.days, report.days[1:], strict=False)
        )
        assert report.days[-1].closing == emu.balance(KEY)

        table = list(csv.DictReader(io.StringIO(render(report, "csv"))))
        assert "3395.00" == table[10]["actual_spend"]
        assert "1455.00" == table[0]["spend_FLEXY"]
        doc = json.loads(render(report, "json"))
        assert 1 == doc["reconciliation"]["bypassed"]
        assert "0.9700" == doc["reconciliation"]["ratio"]
        page = render(report, "html")
        assert "<svg" in page
        assert "<script" not in page
        assert "http" not in (page.replace('xmlns="http://www.w3.org/2000/svg"', ""))


async def ninety_days(history: SQLiteHistory) -> tuple[dt.date, dt.date]:
    """Fill *history* with 90 busy days: 40 transactions and alerts a day."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows: list[Transaction] = []
    balance = Decimal(100_000)
    kinds = ["FLEXY", "ADSL", "ORDER", "SERVICE"]
    for i in range(90 * 40):
        at = start + dt.timedelta(minutes=36 * i)
        if i % 40 == 0:
            kind, amount = "DEPOSIT", Decimal(20_000)
            new = balance + amount
        else:
            kind, amount = kinds[i % 4], Decimal(485) + i % 7
            new = balance - amount
        rows.append(
            Transaction("oneclickdz", "acct", f"t{i}", kind, amount, balance, new, at)
        )
        balance = new
    await history.add_transactions(rows)

    class Alert:
        provider, account, level = "oneclickdz", "acct", "warning"

    for _ in range(3):
        history.record_alert(Alert())
    await history.flush()
    return start.date(), (start + 89 * DAY).date()


class TestReport:
    async def test_html_at_most_100_kb_for_90_days(
        self, history: SQLiteHistory
    ) -> None:
        """The HTML report of 90 busy days is one file of at most 100 KB."""
        first, last = await ninety_days(history)
        page = render(await build_report(history, first, last), "html")
        assert 90 == page.count("<tr>") - 1
        assert len(page.encode()) <= 100 * 1024

    async def test_alerts_column(self, history: SQLiteHistory) -> None:
        """Recorded alerts show in their day; without any the column is empty."""
        today = dt.datetime.now(dt.UTC).date()
        await ninety_days(history)
        report = await build_report(history, today, today)
        assert ("warning",) * 3 == report.days[0].alerts
        assert ",warning;warning;warning," in render(report, "csv")
        empty = await build_report(history, dt.date(2026, 1, 1), dt.date(2026, 1, 1))
        assert () == empty.days[0].alerts

    async def test_bad_period_and_format(self, history: SQLiteHistory) -> None:
        """A period ending before it starts, or an unknown format, is refused."""
        with pytest.raises(ValueError, match="before it starts"):
            await build_report(history, dt.date(2026, 2, 1), dt.date(2026, 1, 1))
        report = await build_report(history, dt.date(2026, 1, 1), dt.date(2026, 1, 1))
        with pytest.raises(ValueError, match="format must be"):
            render(report, "pdf")  # type: ignore[arg-type]
        assert (None, None) == (report.days[0].opening, report.days[0].closing)
        assert "no balance recorded" in render(report, "html")


# Rows the API wrote in the same millisecond, listed as the history lists
# them (by id): (id, type, amount, old balance, new balance).
Row = tuple[str, str, int, int, int]


class TestSameInstant:
    @pytest.mark.parametrize(
        ("rows", "closing"),
        [
            pytest.param(
                [
                    ("1", "REFUND-FLEXY", 970, 17505, 18475),
                    ("2", "FLEXY", 970, 18475, 17505),
                ],
                18475,
                id="refund-listed-before-its-debit",
            ),
            pytest.param(
                [
                    ("1", "FLEXY", 970, 18475, 17505),
                    ("2", "REFUND-FLEXY", 970, 17505, 18475),
                ],
                18475,
                id="refund-listed-after-its-debit",
            ),
            pytest.param(
                [
                    ("1", "FLEXY", 500, 18475, 17975),
                    ("2", "FLEXY", 970, 18475, 17505),
                    ("3", "REFUND-FLEXY", 970, 17505, 18475),
                ],
                17975,
                id="a-spend-after-a-refunded-one",
            ),
            pytest.param(
                [("1", "FLEXY", 100, 18475, 18375), ("2", "FLEXY", 100, 9000, 8900)],
                8900,
                id="rows-that-do-not-chain-stay-as-listed",
            ),
        ],
    )
    @pytest.mark.parametrize("earlier", [True, False], ids=["after", "first"])
    async def test_days_chain(
        self, history: SQLiteHistory, rows: list[Row], closing: int, earlier: bool
    ) -> None:
        """
        Whatever order rows of one millisecond are listed in, after other
        rows or first of all, their day closes on the balance they end on,
        and the next day opens on it.
        """
        day = dt.datetime(2026, 12, 19, tzinfo=dt.UTC)
        instant = day + dt.timedelta(hours=12, milliseconds=889)

        def row(at: dt.datetime, n: str, kind: str, *money: int) -> Transaction:
            amount, old, new = (Decimal(m) for m in money)
            return Transaction("oneclickdz", "acct", n, kind, amount, old, new, at)

        await history.add_transactions(
            [
                *([row(day, "0", "DEPOSIT", 18475, 0, 18475)] if earlier else []),
                *(row(instant, *r) for r in rows),
                row(day + DAY, "9", "FLEXY", 485, closing, closing - 485),
            ]
        )
        report = await build_report(history, day.date(), (day + DAY).date())
        first, second = report.days
        end = Decimal(closing)
        opening = Decimal(0 if earlier else 18475)
        assert (opening, end) == (first.opening, first.closing)
        assert (end, end - 485) == (second.opening, second.closing)
        assert (instant, end) == report.points[-2]

    async def test_a_loop_alone(self, history: SQLiteHistory) -> None:
        """A debit and its refund, the only rows: the day ends where it began."""
        at = dt.datetime(2026, 12, 19, 12, tzinfo=dt.UTC)
        low, high = Decimal(17505), Decimal(18475)
        refund = Transaction(
            "oneclickdz", "a", "1", "REFUND-FLEXY", high - low, low, high, at
        )
        debit = Transaction("oneclickdz", "a", "2", "FLEXY", high - low, high, low, at)
        await history.add_transactions([refund, debit])
        (day,) = (await build_report(history, at.date(), at.date())).days
        assert day.opening == day.closing


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line in a thread (it runs its own event loop)."""
    from guard._cli import main

    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def subprocess_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guard",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class TestCommandLine:
    async def test_import_then_report(
        self,
        emu: Emulator,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """import, then report in each format; a tampered row exits 5."""
        ledger(emu, 250)
        db = str(tmp_path / "cli.db")
        monkeypatch.setenv("GUARD_ONECLICKDZ_API_KEY", KEY)
        code, out, err = await cli(
            capsys, "import", "oneclickdz", "--db", db, "--base-url", emu.url
        )
        assert (0, f"250 new of 250 transactions (3 pages) into {db}\n") == (code, out)
        account = emu.account(KEY)
        account.transactions[0] = attrs.evolve(
            account.transactions[0], amount=Decimal(8)
        )
        code, out, err = await cli(
            capsys, "import", "oneclickdz", "--db", db, "--base-url", emu.url
        )
        assert (5, "0 new of 250") == (code, out[:12])
        assert "does not add up" in err
        assert KEY not in out + err
        today = dt.datetime.now(dt.UTC).date().isoformat()
        for fmt in ("csv", "json", "html"):
            code, out, err = await cli(
                capsys, "report", "--db", db, "--from", today, "--to", today,
                "--format", fmt,
            )  # fmt: skip
            assert 0 == code, err
            assert today in out
        target = tmp_path / "report.html"
        # Once through a real `python -m guard`.
        code, out, err = await subprocess_cli(
            "report", "--db", db, "--from", today, "--to", today,
            "--format", "html", "-o", str(target),
        )  # fmt: skip
        assert (0, f"report written to {target}\n") == (code, err)
        assert target.read_text().startswith("<!DOCTYPE html>")

    async def test_usage_errors(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Bad dates, a reversed period, no key: exit 2 with one clear line."""
        db = str(tmp_path / "cli.db")
        with pytest.raises(SystemExit) as exited:
            await cli(capsys, "report", "--db", db, "--from", "2026-13-01", "--to", "x")
        assert 2 == exited.value.code
        assert "must be a date" in capsys.readouterr().err
        code, _, err = await cli(
            capsys, "report", "--db", db, "--from", "2026-02-01", "--to", "2026-01-01"
        )
        assert (2, "guard: --to is before --from\n") == (code, err)
        monkeypatch.delenv("GUARD_ONECLICKDZ_API_KEY", raising=False)
        code, _, err = await cli(capsys, "import", "oneclickdz", "--db", db)
        assert 2 == code
        assert "GUARD_ONECLICKDZ_API_KEY" in err
        code, _, err = await cli(capsys, "dashboard")
        assert 2 == code
        assert "--emulator" in err
        code, _, err = await cli(
            capsys, "report", "--db", str(tmp_path), "--from", "2026-01-01",
            "--to", "2026-01-01",
        )  # fmt: skip
        assert 1 == code
        assert "cannot open the history" in err

    async def test_report_needs_an_account_among_several(
        self, history: SQLiteHistory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A history of several accounts needs --account, listing them."""
        for account in ("a1", "b2"):
            await history.add_transactions(
                [
                    Transaction(
                        "oneclickdz", account, f"t-{account}", "DEPOSIT",
                        Decimal(1), Decimal(0), Decimal(1), dt.datetime.now(dt.UTC),
                    )
                ]
            )  # fmt: skip
        today = dt.datetime.now(dt.UTC).date().isoformat()
        args = ("report", "--db", history.path, "--from", today, "--to", today)
        code, _, err = await cli(capsys, *args)
        assert 2 == code
        assert "choose one with --account: a1, b2" in err
        code, out, _ = await cli(capsys, *args, "--account", "b2")
        assert 0 == code
        assert f"{today},0,1,1" in out
