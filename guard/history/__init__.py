"""
Balance history: what guard read and spent, the provider's own record, and
the reports built from both.

Give a guard a history and it records, off the hot path, every balance it
fetches and every guarded call that ends::

    from guard.history import SQLiteHistory

    async with SQLiteHistory("guard.db") as history, BalanceGuard(history=history) as g:
        ...

`PostgresHistory` (extra ``guard[postgres]``) serves a fleet of processes
with the same API. `import_oneclickdz` copies the provider's transactions
in, `reconcile` matches them with guard's spends, `build_report` and
`render` make the daily report (also ``python -m guard import`` and
``python -m guard report``).
"""

from ._base import BaseHistory, HistoryError
from ._chart import svg_chart
from ._import import ImportResult, import_oneclickdz
from ._postgres import PostgresHistory
from ._reconcile import Match, Reconciliation, reconcile
from ._records import (
    IN_TYPES,
    OUT_TYPES,
    REFUND_TYPES,
    Alert,
    Call,
    Reading,
    Transaction,
    direction_of,
)
from ._report import Day, Report, build_report, render
from ._schema import SCHEMA_VERSION
from ._sqlite import SQLiteHistory

__all__ = [
    "Alert",
    "BaseHistory",
    "Call",
    "Day",
    "HistoryError",
    "IN_TYPES",
    "ImportResult",
    "Match",
    "OUT_TYPES",
    "PostgresHistory",
    "REFUND_TYPES",
    "Reading",
    "Reconciliation",
    "Report",
    "SCHEMA_VERSION",
    "SQLiteHistory",
    "Transaction",
    "build_report",
    "direction_of",
    "import_oneclickdz",
    "reconcile",
    "render",
    "svg_chart",
]
