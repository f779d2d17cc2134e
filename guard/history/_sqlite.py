"""
`SQLiteHistory`: the embedded history, one file in WAL mode, written by one
thread (the standard library's sqlite3 blocks; the event loop must not).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._base import BaseHistory, HistoryError, steps
from ._schema import Dialect

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["SQLiteHistory"]

_DIALECT = Dialect(
    id="INTEGER PRIMARY KEY",
    # Exact decimal text: SQLite's own numbers are binary floats.
    amount="TEXT",
    # ISO-8601 UTC text with microseconds, which sorts as time does.
    time="TEXT",
    flag="INTEGER",
    real="REAL",
)


def _encode(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if isinstance(value, bool):
        return int(value)
    return value


class SQLiteHistory(BaseHistory):
    """
    A balance history in one SQLite file (WAL mode, so readers such as the
    dashboard don't wait for the writer).

    ::

        history = SQLiteHistory("guard-history.db", retention=timedelta(days=400))
        async with history, BalanceGuard(history=history) as guard:
            ...

    Args:
        path: The database file; created with its schema if missing.
        queue_size: See `BaseHistory`.
        retention: See `BaseHistory`.
        clock: See `BaseHistory`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue_size: int = 10_000,
        retention: dt.timedelta | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(queue_size=queue_size, retention=retention, clock=clock)
        self.path = os.fspath(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return (
            f"<SQLiteHistory {self.path!r} written={self.written} "
            f"dropped={self.dropped}>"
        )

    async def _run(self, fn: Callable[..., Any], *args: object) -> Any:
        if self._executor is None:
            raise HistoryError("the history is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, fn, *args
        )

    async def _connect(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="guard-history")
        try:
            self._db = await self._run(self._open_db)
        except sqlite3.Error as exc:
            self._executor.shutdown()
            self._executor = None
            raise HistoryError(
                f"cannot open the history {self.path!r}: {exc}"
            ) from None

    def _open_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("CREATE TABLE IF NOT EXISTS guard_schema (version INTEGER NOT NULL)")
        return db

    async def _disconnect(self) -> None:
        executor, self._executor = self._executor, None
        db, self._db = self._db, None
        if executor is None:
            return
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=False)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise HistoryError("the history is closed")
        return self._db

    async def _version(self) -> int:
        return int(await self._run(self._read_version))

    def _read_version(self) -> int:
        row = self._conn().execute("SELECT MAX(version) FROM guard_schema").fetchone()
        return int(row[0] or 0)

    async def _migrate(self, target: int) -> None:
        await self._run(self._migrate_sync, target)

    def _migrate_sync(self, target: int) -> None:
        db = self._conn()
        # IMMEDIATE: one process migrates; another waits, then finds it done.
        db.execute("BEGIN IMMEDIATE")
        try:
            for version, statements in steps(self._read_version(), target):
                for statement in statements:
                    db.execute(_DIALECT.render(statement))
                db.execute("DELETE FROM guard_schema")
                db.execute("INSERT INTO guard_schema (version) VALUES (?)", (version,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        encoded = [tuple(_encode(v) for v in row) for row in rows]
        await self._run(self._execute_sync, sql, encoded)

    def _execute_sync(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Sequence[Any]]:
        encoded = tuple(_encode(v) for v in params)
        rows: list[Sequence[Any]] = await self._run(self._fetch_sync, sql, encoded)
        return rows

    def _fetch_sync(self, sql: str, params: tuple[object, ...]) -> list[Sequence[Any]]:
        return list(self._conn().execute(sql, params).fetchall())
