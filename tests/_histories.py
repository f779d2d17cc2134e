"""
The history backends under test: SQLite on a temporary file, PostgreSQL on
the machine's server (``GUARD_TEST_POSTGRES``, default
postgresql://postgres@127.0.0.1:5432/test), each test in its own schema.

A missing PostgreSQL skips its tests locally and fails them when ``CI`` is
set: in CI they must run.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from guard.history import PostgresHistory, SQLiteHistory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from guard.history import BaseHistory

__all__ = ["POSTGRES_DSN", "make_history", "postgres_or_skip"]

POSTGRES_DSN = os.environ.get(
    "GUARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


async def postgres_or_skip() -> None:
    """Skip (fail in CI) unless PostgreSQL answers."""
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"no PostgreSQL at {POSTGRES_DSN}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a real PostgreSQL: {message}", pytrace=False)
        pytest.skip(message)
    await conn.close()


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def make_history(
    kind: str, tmp_path: Path, **options: Any
) -> AsyncIterator[BaseHistory]:
    """Yield an open, empty history of *kind*; clean it up after."""
    if kind == "sqlite":
        history: BaseHistory = SQLiteHistory(tmp_path / "history.db", **options)
        async with history:
            yield history
        return
    await postgres_or_skip()
    schema = f"guard_test_{secrets.token_hex(6)}"
    history = PostgresHistory(POSTGRES_DSN, schema=schema, **options)
    try:
        async with history:
            yield history
    finally:
        await drop_schema(schema)
