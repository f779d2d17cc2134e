"""
The history's tables, one list of migrations for both databases.

Each step moves the schema one version up; a database records its version
in ``guard_schema`` and `migrate` applies the steps it lacks, in order, in
one transaction each. A database newer than this code is refused.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Dialect"]


class Dialect:
    """
    How one database spells the schema's column types.
    """

    def __init__(
        self, *, id: str, amount: str, time: str, flag: str, real: str
    ) -> None:
        self.types = {
            "ID": id,
            "AMOUNT": amount,
            "TIME": time,
            "FLAG": flag,
            "REAL": real,
        }

    def render(self, statement: str) -> str:
        return statement.format(**self.types)


MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: readings, calls, the provider's transactions.
    (
        """CREATE TABLE guard_readings (
            id {ID},
            provider TEXT NOT NULL,
            account TEXT NOT NULL,
            currency TEXT NOT NULL,
            amount {AMOUNT} NOT NULL,
            at {TIME} NOT NULL,
            reported_at {TIME}
        )""",
        """CREATE TABLE guard_calls (
            id {ID},
            provider TEXT NOT NULL,
            account TEXT NOT NULL,
            currency TEXT NOT NULL,
            amount {AMOUNT} NOT NULL,
            ok {FLAG} NOT NULL,
            duration {REAL} NOT NULL,
            at {TIME} NOT NULL
        )""",
        """CREATE TABLE guard_transactions (
            provider TEXT NOT NULL,
            account TEXT NOT NULL,
            tx_id TEXT NOT NULL,
            type TEXT NOT NULL,
            amount {AMOUNT} NOT NULL,
            old_balance {AMOUNT} NOT NULL,
            new_balance {AMOUNT} NOT NULL,
            at {TIME} NOT NULL,
            objid TEXT,
            note TEXT NOT NULL,
            consistent {FLAG} NOT NULL,
            PRIMARY KEY (provider, tx_id)
        )""",
    ),
    # 2: alerts, and indexes for the queries by account and time.
    (
        """CREATE TABLE guard_alerts (
            id {ID},
            provider TEXT NOT NULL,
            account TEXT NOT NULL,
            level TEXT NOT NULL,
            balance {AMOUNT},
            at {TIME} NOT NULL,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX guard_readings_at ON guard_readings (provider, account, at)",
        "CREATE INDEX guard_calls_at ON guard_calls (provider, account, at)",
        "CREATE INDEX guard_transactions_at "
        "ON guard_transactions (provider, account, at)",
        "CREATE INDEX guard_alerts_at ON guard_alerts (provider, account, at)",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this guard writes."""
