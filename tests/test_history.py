"""
The history contract, run on both backends (SQLite on a temporary file,
PostgreSQL on the local server), and the recording of a guard's events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from _histories import POSTGRES_DSN, make_history, postgres_or_skip

from guard import BalanceGuard, ConfigurationError
from guard.history import (
    SCHEMA_VERSION,
    Alert,
    BaseHistory,
    HistoryError,
    PostgresHistory,
    SQLiteHistory,
    Transaction,
    direction_of,
)
from guard.testing import Emulator, InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(name="history", params=["sqlite", "postgres"])
async def _history(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BaseHistory]:
    async for history in make_history(request.param, tmp_path):
        yield history


def tx(
    i: int,
    kind: str = "FLEXY",
    amount: str = "485.00",
    old: str = "1000.00",
    new: str = "515.00",
    *,
    at: dt.datetime = T0,
    account: str = "acct",
) -> Transaction:
    return Transaction(
        provider="oneclickdz",
        account=account,
        id=f"tx{i}",
        type=kind,
        amount=Decimal(amount),
        old_balance=Decimal(old),
        new_balance=Decimal(new),
        at=at,
        objid=None,
        note="",
    )


class TestContract:
    """The same query API, with the same answers, on every backend."""

    async def test_schema_is_current(self, history: BaseHistory) -> None:
        """A new database is created at the current schema version."""
        assert SCHEMA_VERSION == await history.schema_version()

    async def test_guard_readings_and_calls(
        self, history: BaseHistory, provider: InMemoryProvider
    ) -> None:
        """A guard given the history records its balances and settled calls."""
        async with BalanceGuard(history=history, settle="invalidate") as guard:
            async with guard.reserve(provider, "0.10"):
                pass
            with pytest.raises(RuntimeError):
                async with guard.reserve(provider, "0.20"):
                    raise RuntimeError
            await guard.balance(provider, fresh=True)
        readings = await history.readings()
        calls = await history.calls()
        digest = guard.accounts()[0].account
        # One fetch per call (each settle invalidates), and the fresh one.
        assert [Decimal(1000)] * 3 == [r.amount for r in readings]
        assert {("memory", digest, "DZD")} == {
            (r.provider, r.account, r.currency) for r in readings
        }
        assert [(Decimal("0.10"), True), (Decimal("0.20"), False)] == [
            (c.amount, c.ok) for c in calls
        ]
        assert all(c.duration >= 0 and c.at.tzinfo is not None for c in calls)

    async def test_call_duration(
        self, history: BaseHistory, provider: InMemoryProvider
    ) -> None:
        """A settled call's duration is how long its block ran."""
        async with (
            BalanceGuard(history=history) as guard,
            guard.reserve(provider, 1),
        ):
            await asyncio.sleep(0.05)
        (call,) = await history.calls()
        assert 0.05 <= call.duration < 5

    async def test_amounts_are_exact(self, history: BaseHistory) -> None:
        """Amounts come back as the exact Decimals written, never floats."""
        huge = Decimal("123456789012345678.123456789")
        tiny = Decimal("0.000000001")
        await history.add_transactions(
            [tx(1, amount=str(huge), old="0", new=str(huge), kind="DEPOSIT")]
        )
        history.record_alert(
            Alert("oneclickdz", "acct", "warning", tiny, T0, "low")  # type: ignore[arg-type]
        )
        await history.flush()
        (row,) = await history.transactions()
        (alert,) = await history.alerts()
        assert (huge, huge) == (row.amount, row.new_balance)
        assert isinstance(row.amount, Decimal)
        assert tiny == alert.balance

    async def test_transactions_idempotent_on_id(self, history: BaseHistory) -> None:
        """Adding a transaction twice stores it once and counts it new once."""
        first = await history.add_transactions([tx(1), tx(2)])
        again = await history.add_transactions([tx(2), tx(3)])
        assert (2, 1) == (first, again)
        assert ["tx1", "tx2", "tx3"] == [t.id for t in await history.transactions()]

    async def test_time_filters(self, history: BaseHistory) -> None:
        """since is included, until excluded, rows come oldest first."""
        rows = [tx(i, at=T0 + dt.timedelta(hours=i)) for i in (3, 0, 2, 1)]
        await history.add_transactions(rows)
        got = await history.transactions(
            since=T0 + dt.timedelta(hours=1), until=T0 + dt.timedelta(hours=3)
        )
        assert ["tx1", "tx2"] == [t.id for t in got]
        assert T0 + dt.timedelta(hours=1) == got[0].at

    async def test_account_filter_and_accounts(self, history: BaseHistory) -> None:
        """Queries filter by account; accounts() lists what is held."""
        await history.add_transactions([tx(1, account="a"), tx(2, account="b")])
        assert ["tx2"] == [t.id for t in await history.transactions(account="b")]
        assert [("oneclickdz", "a"), ("oneclickdz", "b")] == await history.accounts()
        assert [] == await history.accounts("clickatell")

    async def test_alerts_from_any_alert_like_object(
        self, history: BaseHistory
    ) -> None:
        """record_alert takes any object with provider and account fields."""

        @attrs.define
        class Level:
            name: str

        @attrs.define
        class BalanceAlertLike:
            provider: str
            account: str
            level: Level
            balance: Any
            at: dt.datetime

        history.record_alert(
            BalanceAlertLike("oneclickdz", "acct", Level("CRITICAL"), "12.5", T0)
        )
        await history.flush()
        (alert,) = await history.alerts(provider="oneclickdz")
        assert ("critical", Decimal("12.5"), T0) == (
            alert.level,
            alert.balance,
            alert.at,
        )
        with pytest.raises(TypeError, match="'provider' and 'account'"):
            history.record_alert(object())

    async def test_prune(self, history: BaseHistory) -> None:
        """prune() deletes every record older than the given time."""
        await history.add_transactions(
            [tx(1, at=T0 - dt.timedelta(days=40)), tx(2, at=T0)]
        )
        await history.prune(T0 - dt.timedelta(days=30))
        assert ["tx2"] == [t.id for t in await history.transactions()]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_retention(kind: str, tmp_path: Path, provider: InMemoryProvider) -> None:
    """With a retention, records older than it are pruned as new ones arrive."""
    now = [T0]
    async for history in make_history(
        kind, tmp_path, retention=dt.timedelta(days=30), clock=lambda: now[0]
    ):
        await history.add_transactions([tx(1, at=T0 - dt.timedelta(days=31))])
        async with BalanceGuard(history=history) as guard:
            await guard.balance(provider)
        assert [] == await history.transactions()
        assert [T0] == [r.at for r in await history.readings()]


class TestRecorder:
    """Recording stays off the hot path: a bounded queue, drops counted."""

    async def test_full_queue_drops_and_logs(
        self,
        tmp_path: Path,
        provider: InMemoryProvider,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Beyond queue_size, records are dropped, counted and logged."""
        async with (
            SQLiteHistory(tmp_path / "h.db", queue_size=2) as history,
            BalanceGuard(history=history) as guard,
        ):
            with caplog.at_level(logging.WARNING, "guard.history"):
                for _ in range(5):  # no await between: the writer can't run
                    history._on_call(guard._track(provider), Decimal(1), True, 0.1)
            await history.flush()
            assert (3, 2) == (history.dropped, history.written)
            assert "queue full (2 records); 1 dropped" in caplog.text

    async def test_failed_write_is_counted(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Records that could not be written count as dropped and are logged."""
        history = SQLiteHistory(tmp_path / "missing-dir" / "h.db")
        history.record_alert(Alert("p", "a", "warning", None, T0))
        await history.flush()
        assert (1, 0) == (history.dropped, history.written)
        assert "1 records not written" in caplog.text
        await history.aclose()

    async def test_hook_only_queues(self, tmp_path: Path) -> None:
        """The guard's hook queues a record; the write happens later."""
        async with Emulator() as emu:
            emu.add_oneclickdz("k" * 24, 100)
            async with (
                SQLiteHistory(tmp_path / "h.db") as history,
                BalanceGuard(history=history) as guard,
            ):
                seen: list[tuple[int, int]] = []
                guard.add_hook(
                    lambda _: seen.append((len(history._queue), history.written))
                )
                await guard.balance(emu.oneclickdz("k" * 24))
                assert [(1, 0)] == seen
                await history.flush()
                (reading,) = await history.readings()
        # OneClickDZ sends meta.timestamp: kept beside guard's own time.
        assert reading.reported_at is not None
        assert abs((reading.at - reading.reported_at).total_seconds()) < 5

    async def test_detach_on_close(
        self, tmp_path: Path, provider: InMemoryProvider
    ) -> None:
        """A closed guard has flushed its records and records no more."""
        async with SQLiteHistory(tmp_path / "h.db") as history:
            guard = BalanceGuard(history=history)
            await guard.balance(provider)
            await guard.aclose()
            assert 1 == history.written
            assert history._on_event not in guard._hooks
            assert history._on_call not in guard._hooks.recorders

    def test_options_checked(self, tmp_path: Path) -> None:
        """Bad options are refused at once, naming the option."""
        with pytest.raises(ConfigurationError, match="queue_size"):
            SQLiteHistory(tmp_path / "h.db", queue_size=0)
        with pytest.raises(ConfigurationError, match="retention"):
            SQLiteHistory(tmp_path / "h.db", retention=30)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="schema"):
            PostgresHistory(POSTGRES_DSN, schema="x; DROP TABLE y")


class TestMigrations:
    """A versioned schema: old databases are migrated, newer ones refused."""

    async def test_sqlite_v1_migrated(self, tmp_path: Path) -> None:
        """A version-1 database gains the alerts table and keeps its rows."""
        path = tmp_path / "h.db"
        old = SQLiteHistory(path)
        await old._connect()
        await old._migrate(1)
        await old._execute_many(
            "INSERT INTO guard_transactions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [("oneclickdz", "a", "t1", "DEPOSIT", Decimal(5), Decimal(0),
              Decimal(5), T0, None, "", True)],
        )  # fmt: skip
        assert 1 == await old._version()
        await old._disconnect()
        async with SQLiteHistory(path) as history:
            assert SCHEMA_VERSION == await history.schema_version()
            assert ["t1"] == [t.id for t in await history.transactions()]
            assert [] == await history.alerts()

    async def test_newer_schema_refused(self, tmp_path: Path) -> None:
        """A database written by a newer guard is refused, saying so."""
        path = tmp_path / "h.db"
        async with SQLiteHistory(path):
            pass
        with sqlite3.connect(path) as db:
            db.execute("UPDATE guard_schema SET version = 99")
        with pytest.raises(HistoryError, match="schema version 99"):
            async with SQLiteHistory(path):
                pass

    async def test_postgres_concurrent_open(self) -> None:
        """Processes opening one new PostgreSQL history at once migrate it once."""
        await postgres_or_skip()
        import secrets

        from _histories import drop_schema

        schema = f"guard_test_{secrets.token_hex(6)}"
        histories = [PostgresHistory(POSTGRES_DSN, schema=schema) for _ in range(4)]
        try:
            await asyncio.gather(*(h.open() for h in histories))
            assert [SCHEMA_VERSION] * 4 == [await h.schema_version() for h in histories]
        finally:
            for h in histories:
                await h.aclose()
            await drop_schema(schema)

    async def test_postgres_secret_dsn_hidden(self) -> None:
        """The DSN (which may hold a password) is in no repr or error."""
        history = PostgresHistory("postgresql://u:hunter2secret@127.0.0.1:1/x")
        assert "hunter2secret" not in repr(history)
        with pytest.raises(HistoryError) as caught:
            await history.open()
        assert "hunter2secret" not in str(caught.value)


def test_directions() -> None:
    """Each OneClickDZ type is money in or out; others are unknown."""
    assert "out" == direction_of("FLEXY") == direction_of("WITHDRAW")
    assert "in" == direction_of("DEPOSIT") == direction_of("REFUND-ADSL")
    assert "unknown" == direction_of("BONUS")


def _event(
    guard: BalanceGuard, provider: InMemoryProvider, kind: str, **fields: Any
) -> Any:
    from guard import GuardEvent

    return GuardEvent(
        kind=kind,  # type: ignore[arg-type]
        provider=provider.name,
        account_id=provider.account_id,
        account="acct",
        currency=provider.currency,
        **fields,
    )


def test_public_names() -> None:
    """guard.history is thin: a sorted __all__ of exactly its public names."""
    import types

    import guard.history

    public = {
        name
        for name, value in vars(guard.history).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(guard.history.__all__) == guard.history.__all__
    assert public == set(guard.history.__all__)


def test_optional_parts_not_imported() -> None:
    """import guard loads neither the history nor asyncpg; guard.history not asyncpg."""
    import subprocess
    import sys

    code = (
        "import sys, guard; assert 'guard.history' not in sys.modules; "
        "import guard.history; assert 'asyncpg' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603


class TestReportedAt:
    """The provider's meta.timestamp is kept when readable, never fatal."""

    @pytest.mark.parametrize(
        ("meta", "expected"),
        [
            ('{"timestamp": "2026-01-02T03:04:05.678Z"}', T0.replace(
                month=1, day=2, hour=3, minute=4, second=5, microsecond=678000)),
            ('{"timestamp": "2026-01-02T03:04:05"}', T0.replace(
                month=1, day=2, hour=3, minute=4, second=5)),
            ('{"timestamp": "yesterday"}', None),
            ('{"timestamp": 12}', None),
            ("[]", None),
        ],
    )  # fmt: skip
    def test_parse(self, meta: str, expected: dt.datetime | None) -> None:
        """A readable timestamp rides on the balance; anything else is dropped."""
        from guard.providers._oneclickdz import parse_balance

        body = f'{{"success": true, "data": {{"balance": 12.5}}, "meta": {meta}}}'
        balance = parse_balance(200, body.encode())
        assert Decimal("12.5") == balance
        assert expected == getattr(balance, "reported_at", None)

    async def test_stored_as_plain_decimal(self, provider: InMemoryProvider) -> None:
        """A balance carrying its time is cached as a plain Decimal."""
        from guard._balance import Reported

        provider.balance = Reported(Decimal(7), T0)
        events: list[Any] = []
        async with BalanceGuard(hooks=[events.append]) as guard:
            balance = await guard.balance(provider)
        assert Decimal is type(balance.amount)
        assert [T0] == [e.reported_at for e in events if e.kind == "fetched"]
