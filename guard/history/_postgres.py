"""
`PostgresHistory`: one history for a fleet of processes, on PostgreSQL
through asyncpg (the ``guard[postgres]`` extra).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from guard.errors import ConfigurationError

from ._base import BaseHistory, HistoryError, steps
from ._schema import Dialect

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Sequence

__all__ = ["PostgresHistory"]

_DIALECT = Dialect(
    id="BIGSERIAL PRIMARY KEY",
    amount="NUMERIC",
    time="TIMESTAMPTZ",
    flag="BOOLEAN",
    real="DOUBLE PRECISION",
)

# Any number: processes migrating at once wait for each other on it.
_MIGRATION_LOCK = 0x6775617264  # "guard"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MARK = re.compile(r"\?")


def _numbered(sql: str) -> str:
    # The shared queries use "?"; asyncpg wants $1, $2...
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


class PostgresHistory(BaseHistory):
    """
    A balance history in PostgreSQL, which several processes may write.

    ::

        history = PostgresHistory("postgresql://guard@db/guard")

    Args:
        dsn: A libpq connection string or URL. Shown nowhere: it may hold a
            password.
        schema: The PostgreSQL schema of the tables (created if missing);
            default: the connection's ``search_path``.
        queue_size: See `BaseHistory`.
        retention: See `BaseHistory`.
        clock: See `BaseHistory`.

    Raises:
        ConfigurationError: *schema* is not a plain lowercase name.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        queue_size: int = 10_000,
        retention: dt.timedelta | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(queue_size=queue_size, retention=retention, clock=clock)
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"schema must be a lowercase SQL name, got {schema!r}"
            )
        self._dsn = dsn
        self.schema = schema
        self._pool: Any = None

    def __repr__(self) -> str:
        # SECURITY: never the DSN, which may carry a password.
        return (
            f"<PostgresHistory schema={self.schema!r} written={self.written} "
            f"dropped={self.dropped}>"
        )

    async def _connect(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise ConfigurationError(
                "PostgresHistory needs asyncpg: pip install 'guard[postgres]'"
            ) from None
        settings = {} if self.schema is None else {"search_path": self.schema}
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=4, server_settings=settings
            )
        except (OSError, asyncpg.PostgresError) as exc:
            # SECURITY: the error names the server, never the DSN.
            raise HistoryError(
                f"cannot open the PostgreSQL history: {type(exc).__name__}: {exc}"
            ) from None

    async def _disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _get_pool(self) -> Any:
        if self._pool is None:
            raise HistoryError("the history is closed")
        return self._pool

    async def _version(self) -> int:
        value = await self._get_pool().fetchval("SELECT MAX(version) FROM guard_schema")
        return int(value or 0)

    async def _migrate(self, target: int) -> None:
        async with self._get_pool().acquire() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            if self.schema is not None:
                # Under the lock: two processes creating it at once collide.
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS guard_schema (version INTEGER NOT NULL)"
            )
            current = int(
                await conn.fetchval("SELECT MAX(version) FROM guard_schema") or 0
            )
            for version, statements in steps(current, target):
                for statement in statements:
                    await conn.execute(_DIALECT.render(statement))
                await conn.execute("DELETE FROM guard_schema")
                await conn.execute(
                    "INSERT INTO guard_schema (version) VALUES ($1)", version
                )

    async def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        async with self._get_pool().acquire() as conn, conn.transaction():
            await conn.executemany(_numbered(sql), [tuple(r) for r in rows])

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Sequence[Any]]:
        rows = await self._get_pool().fetch(_numbered(sql), *params)
        return [tuple(r) for r in rows]
