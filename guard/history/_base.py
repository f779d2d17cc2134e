"""
What both history backends share: recording a guard's events off the hot
path (a bounded queue and one writer task), the schema's migrations, and
the query API. A backend supplies a connection and four primitives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from guard._logs import fields
from guard._money import to_amount
from guard.errors import ConfigurationError, GuardError

from ._records import Alert, Call, Reading, Transaction
from ._schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType
    from typing import Self

    from guard._accounts import Tracked
    from guard._events import GuardEvent
    from guard._guard import BalanceGuard

__all__ = ["BaseHistory", "HistoryError"]

log = logging.getLogger("guard.history")

# What the queue holds, made into a record by the writer: a guard's event
# and its time, a settled call as its figures and time, or an alert.
_Queued = (
    tuple["GuardEvent", "dt.datetime | float"]
    | tuple[str, str, str, "Decimal", bool, float, "dt.datetime | float"]
    | Alert
)
_T = TypeVar("_T")


def _at(stamp: dt.datetime | float) -> dt.datetime:
    """A queued time (``time.time()``, or the history's clock) as UTC."""
    if isinstance(stamp, float):
        return dt.datetime.fromtimestamp(stamp, dt.UTC)
    return stamp


PRUNE_EVERY = 3600.0
"""Seconds between two prunings of records older than the retention."""


class HistoryError(GuardError):
    """
    The history database cannot be used: its schema is newer than this
    guard, or it could not be opened.
    """


def utc(when: dt.datetime) -> dt.datetime:
    """*when* as an aware UTC time; a naive one is taken to be UTC."""
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BaseHistory:
    """
    The recorder and query API of `SQLiteHistory` and `PostgresHistory`.

    Args:
        queue_size: Records waiting to be written at most; beyond it new
            ones are dropped, counted in `dropped` and logged.
        retention: How long guard's own records (readings, calls, alerts)
            and imported transactions are kept; None keeps them for ever.
        clock: Returns the current time (UTC) for the records; defaults to
            the system clock.
    """

    def __init__(
        self,
        *,
        queue_size: int = 10_000,
        retention: dt.timedelta | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        size: object = queue_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(
                f"queue_size must be an int of 1 or more, got {queue_size!r}"
            )
        keep: object = retention
        if keep is not None and (
            not isinstance(keep, dt.timedelta) or keep <= dt.timedelta(0)
        ):
            raise ConfigurationError(
                "retention must be a positive datetime.timedelta or None, "
                f"got {retention!r}"
            )
        self.queue_size = queue_size
        self.retention = retention
        self.clock = clock or _now
        self.dropped = 0
        """Records dropped: the queue was full, or writing them failed."""
        self.written = 0
        """Records written."""
        self._queue: collections.deque[_Queued] = collections.deque()
        # One long-lived writer task: starting a task per record would cost
        # the guarded call more than the record itself.
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._pruned = -PRUNE_EVERY

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """
        Connect and bring the schema up to date; idempotent (a history also
        opens on first use).

        Raises:
            HistoryError: The database's schema is newer than this guard's.
        """
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._is_open():  # another task opened it meanwhile
                return
            await self._connect()
            try:
                await self._migrate(SCHEMA_VERSION)
            except BaseException:
                await self._disconnect()
                raise
            self._opened = True

    def _is_open(self) -> bool:
        return self._opened

    async def aclose(self) -> None:
        """
        Write what is queued, then disconnect. Idempotent.
        """
        await self.flush()
        await self._stop_writer()
        if self._opened:
            self._opened = False
            await self._disconnect()

    async def schema_version(self) -> int:
        """The schema version of the database."""
        await self.open()
        return await self._version()

    # -- recording ------------------------------------------------------------

    def attach(self, guard: BalanceGuard) -> None:
        """
        Record *guard*'s fetched balances and settled calls from now on;
        `BalanceGuard` calls this when given ``history=``.
        """
        guard.add_hook(self._on_event, kinds=("fetched",))
        guard._hooks.record(self._on_call)

    async def detach(self, guard: BalanceGuard) -> None:
        """
        Stop recording *guard*'s events and write what is queued.
        """
        guard.remove_hook(self._on_event)
        guard._hooks.unrecord(self._on_call)
        await self.flush()

    def _on_event(self, event: GuardEvent) -> None:
        # A guard hook, for fetched balances: queue the event and the time,
        # nothing more; the writer makes the record.
        if event.amount is not None and event.kind == "fetched":
            self._enqueue((event, time.time() if self.clock is _now else self.clock()))

    def _on_call(
        self, tracked: Tracked, amount: Decimal, ok: bool, duration: float | None
    ) -> None:
        # The guard's recorder, on every settled call: its figures and the
        # time, with no event made.
        provider = tracked.provider
        self._enqueue(
            (
                provider.name,
                tracked.digest,
                provider.currency,
                amount,
                ok,
                duration or 0.0,
                time.time() if self.clock is _now else self.clock(),
            )
        )

    @staticmethod
    def _record_of(item: _Queued) -> Reading | Call | Alert:
        if not isinstance(item, tuple):
            return item
        if len(item) == 7:
            name, account, currency, amount, ok, duration, stamp = item
            return Call(name, account, currency, amount, ok, duration, _at(stamp))
        event, stamp = item
        assert event.amount is not None
        return Reading(
            event.provider,
            event.account,
            event.currency,
            event.amount,
            _at(stamp),
            event.reported_at,
        )

    def record_alert(self, alert: object) -> None:
        """
        Queue a low-balance alert for the report's and dashboard's "alerts"
        column. Call it from the event loop (a monitor's notifier, say).

        *alert* is any object with ``provider`` and ``account`` (the account
        digest), and optionally ``level``, ``balance``, ``at`` (or ``time``)
        and ``message`` attributes, such as a ``BalanceAlert``.

        Raises:
            TypeError: *alert* has no ``provider`` or ``account`` text.
        """
        provider = getattr(alert, "provider", None)
        account = getattr(alert, "account", None)
        if not isinstance(provider, str) or not isinstance(account, str):
            raise TypeError(
                "an alert needs 'provider' and 'account' text attributes, "
                f"got a {type(alert).__name__}"
            )
        level = getattr(alert, "level", "")
        level_text = str(getattr(level, "name", level) or "").lower()
        balance = getattr(alert, "balance", None)
        if balance is not None and not isinstance(balance, Decimal):
            balance = getattr(balance, "amount", balance)
            balance = (
                to_amount(balance) if isinstance(balance, int | str | Decimal) else None
            )
        when = getattr(alert, "at", None) or getattr(alert, "time", None)
        self._enqueue(
            Alert(
                provider,
                account,
                level_text,
                balance,
                utc(when) if isinstance(when, dt.datetime) else self.clock(),
                str(getattr(alert, "message", "") or ""),
            )
        )

    def _enqueue(self, record: _Queued) -> None:
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "guard history: queue full (%d records); %d dropped so far",
                    self.queue_size,
                    self.dropped,
                    extra=fields(
                        "history_dropped", provider="", account="", dropped=self.dropped
                    ),
                )
            return
        self._queue.append(record)
        self._drained.clear()
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def flush(self) -> None:
        """
        Wait until every queued record is written (or dropped).
        """
        writer = self._writer
        if writer is not None and not writer.done():
            await self._drained.wait()

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write_queued()
            if not self._queue:
                self._drained.set()

    async def _write_queued(self) -> None:
        queue = self._queue
        while queue:
            taken = [queue.popleft() for _ in range(min(len(queue), 500))]
            batch: list[Reading | Call | Alert] = []
            try:
                batch = [self._record_of(item) for item in taken]
                await self.open()
                await self.write(batch)
            except Exception:
                self.dropped += len(taken)
                log.exception(
                    "guard history: %d records not written",
                    len(taken),
                    extra=fields(
                        "history_write_failed",
                        provider="",
                        account="",
                        dropped=len(taken),
                    ),
                )
                continue
            self.written += len(taken)
            if (
                self.retention is not None
                and time.monotonic() - self._pruned >= PRUNE_EVERY
            ):
                self._pruned = time.monotonic()
                try:
                    await self.prune(self.clock() - self.retention)
                except Exception:
                    log.exception(
                        "guard history: pruning failed",
                        extra=fields("history_prune_failed", provider="", account=""),
                    )

    async def write(self, records: Iterable[Reading | Call | Alert]) -> None:
        """
        Write *records* now (readings, calls, alerts), for a backfill from
        elsewhere; a guard's records go through the queue instead.
        """
        await self.open()
        batch = list(records)
        readings = [
            (
                r.provider,
                r.account,
                r.currency,
                r.amount,
                utc(r.at),
                _opt_utc(r.reported_at),
            )
            for r in batch
            if isinstance(r, Reading)
        ]
        calls = [
            (r.provider, r.account, r.currency, r.amount, r.ok, r.duration, utc(r.at))
            for r in batch
            if isinstance(r, Call)
        ]
        alerts = [
            (r.provider, r.account, r.level, r.balance, utc(r.at), r.message)
            for r in batch
            if isinstance(r, Alert)
        ]
        if readings:
            await self._execute_many(
                "INSERT INTO guard_readings (provider, account, currency, amount, at, "
                "reported_at) VALUES (?, ?, ?, ?, ?, ?)",
                readings,
            )
        if calls:
            await self._execute_many(
                "INSERT INTO guard_calls (provider, account, currency, amount, ok, "
                "duration, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                calls,
            )
        if alerts:
            await self._execute_many(
                "INSERT INTO guard_alerts (provider, account, level, balance, at, "
                "message) VALUES (?, ?, ?, ?, ?, ?)",
                alerts,
            )

    # -- the provider's transactions -----------------------------------------

    async def add_transactions(self, rows: Iterable[Transaction]) -> int:
        """
        Store the provider's transactions; one already stored (same provider
        and id) is left as it is. Returns how many were new.
        """
        rows = list(rows)
        if not rows:
            return 0
        await self.open()
        providers = sorted({r.provider for r in rows})
        before = await self._count_transactions(providers)
        await self._execute_many(
            "INSERT INTO guard_transactions (provider, account, tx_id, type, amount, "
            "old_balance, new_balance, at, objid, note, consistent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (provider, tx_id) DO NOTHING",
            [
                (
                    r.provider,
                    r.account,
                    r.id,
                    r.type,
                    r.amount,
                    r.old_balance,
                    r.new_balance,
                    utc(r.at),
                    r.objid,
                    r.note,
                    r.consistent,
                )
                for r in rows
            ],
        )
        return await self._count_transactions(providers) - before

    async def _count_transactions(self, providers: Sequence[str]) -> int:
        marks = ", ".join("?" for _ in providers)
        rows = await self._fetch(
            f"SELECT COUNT(*) FROM guard_transactions WHERE provider IN ({marks})",  # noqa: S608 - placeholders only
            list(providers),
        )
        return int(_cell(rows[0][0]))

    # -- queries ----------------------------------------------------------------

    async def readings(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[Reading]:
        """
        The balances read from *since* (included) to *until* (excluded),
        oldest first; every filter is optional.
        """
        rows = await self._select(
            "provider, account, currency, amount, at, reported_at",
            "guard_readings",
            provider,
            account,
            since,
            until,
            "at, id",
        )
        return [
            Reading(p, a, c, _amount(v), _time(at), None if rep is None else _time(rep))
            for p, a, c, v, at, rep in rows
        ]

    async def calls(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[Call]:
        """
        The guarded calls that ended from *since* to *until*, oldest first.
        """
        rows = await self._select(
            "provider, account, currency, amount, ok, duration, at",
            "guard_calls",
            provider,
            account,
            since,
            until,
            "at, id",
        )
        return [
            Call(p, a, c, _amount(v), bool(ok), float(_cell(d)), _time(at))
            for p, a, c, v, ok, d, at in rows
        ]

    async def transactions(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[Transaction]:
        """
        The provider's transactions from *since* to *until*, oldest first.
        """
        rows = await self._select(
            "provider, account, tx_id, type, amount, old_balance, new_balance, at, "
            "objid, note, consistent",
            "guard_transactions",
            provider,
            account,
            since,
            until,
            "at, tx_id",
        )
        return [
            Transaction(
                p,
                a,
                i,
                k,
                _amount(v),
                _amount(old),
                _amount(new),
                _time(at),
                objid,
                note,
                bool(ok),
            )
            for p, a, i, k, v, old, new, at, objid, note, ok in rows
        ]

    async def alerts(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[Alert]:
        """
        The alerts recorded from *since* to *until*, oldest first.
        """
        rows = await self._select(
            "provider, account, level, balance, at, message",
            "guard_alerts",
            provider,
            account,
            since,
            until,
            "at, id",
        )
        return [
            Alert(p, a, lv, None if b is None else _amount(b), _time(at), m)
            for p, a, lv, b, at, m in rows
        ]

    async def accounts(self, provider: str | None = None) -> list[tuple[str, str]]:
        """
        Every ``(provider, account digest)`` the history holds anything of.
        """
        await self.open()
        found: set[tuple[str, str]] = set()
        for table in ("guard_readings", "guard_calls", "guard_transactions"):
            sql = f"SELECT DISTINCT provider, account FROM {table}"  # noqa: S608 - fixed names
            params: list[object] = []
            if provider is not None:
                sql += " WHERE provider = ?"
                params.append(provider)
            found.update((str(p), str(a)) for p, a in await self._fetch(sql, params))
        return sorted(found)

    async def prune(self, before: dt.datetime) -> None:
        """
        Delete every record older than *before*.
        """
        await self.open()
        for table in (
            "guard_readings",
            "guard_calls",
            "guard_alerts",
            "guard_transactions",
        ):
            await self._execute_many(
                f"DELETE FROM {table} WHERE at < ?",  # noqa: S608 - fixed names
                [(utc(before),)],
            )

    async def _select(
        self,
        columns: str,
        table: str,
        provider: str | None,
        account: str | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
        order: str,
    ) -> list[Sequence[Any]]:
        await self.open()
        where: list[str] = []
        params: list[object] = []
        for clause, value in (
            ("provider = ?", provider),
            ("account = ?", account),
            ("at >= ?", None if since is None else utc(since)),
            ("at < ?", None if until is None else utc(until)),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {columns} FROM {table}"  # noqa: S608 - fixed names
        if where:
            sql += " WHERE " + " AND ".join(where)
        return await self._fetch(f"{sql} ORDER BY {order}", params)

    # -- the backend's part -----------------------------------------------------

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def _version(self) -> int:
        raise NotImplementedError

    async def _migrate(self, target: int) -> None:
        raise NotImplementedError

    async def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        raise NotImplementedError

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Sequence[Any]]:
        raise NotImplementedError


def steps(current: int, target: int) -> list[tuple[int, tuple[str, ...]]]:
    """
    The migrations that take a schema from version *current* to *target*.

    Raises:
        HistoryError: *current* is newer than this guard knows.
    """
    if current > SCHEMA_VERSION:
        raise HistoryError(
            f"the history database has schema version {current}; this guard "
            f"knows up to {SCHEMA_VERSION}: upgrade guard"
        )
    return [(v + 1, MIGRATIONS[v]) for v in range(current, target)]


def _opt_utc(when: dt.datetime | None) -> dt.datetime | None:
    return None if when is None else utc(when)


def _cell(value: object) -> Any:
    return value


def _amount(value: object) -> Decimal:
    # SQLite keeps amounts as exact decimal text, PostgreSQL as NUMERIC.
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _time(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return utc(value)
    return utc(dt.datetime.fromisoformat(str(value)))
