"""
Daily financial reports from a history: balances, deposits, spend by type,
refunds, guard's estimate against the provider's debits, alerts; as CSV,
JSON or one self-contained HTML file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal  # noqa: TC003 - attrs resolves the annotations
from html import escape
from itertools import pairwise
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs

from guard._money import MONEY, ZERO

from ._chart import svg_chart
from ._reconcile import Reconciliation, reconcile
from ._records import REFUND_TYPES, Transaction

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._base import BaseHistory

__all__ = ["Day", "Format", "Report", "build_report", "render"]

Format: TypeAlias = Literal["csv", "json", "html"]


@attrs.define(frozen=True)
class Day:
    """
    One UTC day of a report.

    Attributes:
        date: The day.
        opening: The balance when it began (from the provider's
            transactions, or guard's readings if none were imported); None
            if nothing was known yet.
        closing: The balance when it ended.
        deposits: Money in that is not a refund.
        spend: Money out, by transaction type (``"FLEXY"``...).
        refunds: Money given back (``REFUND-*``).
        estimated: What guard settled as spent (face amounts).
        actual: What the provider debited (the sum of *spend*).
        alerts: The levels of the alerts raised, in order.
        flagged: Transactions whose balances don't add up.
    """

    date: dt.date
    opening: Decimal | None
    closing: Decimal | None
    deposits: Decimal
    spend: Mapping[str, Decimal]
    refunds: Decimal
    estimated: Decimal
    actual: Decimal
    alerts: tuple[str, ...]
    flagged: int


@attrs.define(frozen=True)
class Report:
    """
    A report over whole UTC days, from *start* to *end* included.

    Attributes:
        points: The balance over the period, (time, value) oldest first.
        reconciliation: Guard's spends against the provider's debits.
    """

    provider: str
    account: str | None
    start: dt.date
    end: dt.date
    days: tuple[Day, ...]
    points: tuple[tuple[dt.datetime, Decimal], ...]
    reconciliation: Reconciliation

    @property
    def spend_types(self) -> list[str]:
        """Every spend type of the period, sorted."""
        return sorted({kind for day in self.days for kind in day.spend})


async def build_report(
    history: BaseHistory,
    start: dt.date,
    end: dt.date,
    *,
    provider: str = "oneclickdz",
    account: str | None = None,
) -> Report:
    """
    Build the daily report of *provider* (one *account*, or all of the
    provider's) from *start* to *end*, whole UTC days, both included.

    Raises:
        ValueError: *end* is before *start*.
    """
    if end < start:
        raise ValueError(f"the report ends ({end}) before it starts ({start})")
    since = dt.datetime.combine(start, dt.time(), dt.UTC)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    transactions = await history.transactions(provider=provider, account=account)
    readings = await history.readings(provider=provider, account=account, until=until)
    calls = await history.calls(
        provider=provider, account=account, since=since, until=until
    )
    alerts = await history.alerts(
        provider=provider, account=account, since=since, until=until
    )
    # Every known balance: (time, before, after). The provider's record is
    # exact and ordered; guard's readings stand in where none was imported.
    moves = [(t.at, t.old_balance, t.new_balance) for t in _ordered(transactions)]
    if not moves:
        moves = [(r.at, r.amount, r.amount) for r in readings]
    moves = [m for m in moves if m[0] < until]
    days: list[Day] = []
    known: Decimal | None = None
    index = 0
    while index < len(moves) and moves[index][0] < since:
        known = moves[index][2]
        index += 1
    points: list[tuple[dt.datetime, Decimal]] = []
    if known is not None:
        points.append((since, known))
    day = start
    while day <= end:
        day_start = dt.datetime.combine(day, dt.time(), dt.UTC)
        day_end = day_start + dt.timedelta(days=1)
        opening = known
        first = True
        while index < len(moves) and moves[index][0] < day_end:
            when, before, after = moves[index]
            if first:
                opening, first = before, False
            known = after
            points.append((when, after))
            index += 1
        spend: dict[str, Decimal] = {}
        deposits = refunds = ZERO
        flagged = 0
        for t in transactions:
            if not day_start <= t.at < day_end:
                continue
            flagged += not t.consistent
            if t.type in REFUND_TYPES:
                refunds = MONEY.add(refunds, t.amount)
            elif t.direction == "in":
                deposits = MONEY.add(deposits, t.amount)
            elif t.direction == "out":
                spend[t.type] = MONEY.add(spend.get(t.type, ZERO), t.amount)
        estimated = ZERO
        for c in calls:
            if c.ok and day_start <= c.at < day_end:
                estimated = MONEY.add(estimated, c.amount)
        actual = ZERO
        for value in spend.values():
            actual = MONEY.add(actual, value)
        days.append(
            Day(
                date=day,
                opening=opening,
                closing=known,
                deposits=deposits,
                spend=dict(sorted(spend.items())),
                refunds=refunds,
                estimated=estimated,
                actual=actual,
                alerts=tuple(a.level for a in alerts if day_start <= a.at < day_end),
                flagged=flagged,
            )
        )
        day += dt.timedelta(days=1)
    return Report(
        provider=provider,
        account=account,
        start=start,
        end=end,
        days=tuple(days),
        points=tuple(points),
        reconciliation=await reconcile(
            history, since, until, provider=provider, account=account
        ),
    )


def _ordered(transactions: list[Transaction]) -> list[Transaction]:
    """
    *transactions* in time order; those of the same instant (the API writes
    milliseconds) in the order their balances chain: each one's old
    balance is the one before's new.
    """
    result: list[Transaction] = []
    index = 0
    while index < len(transactions):
        end = index
        while (
            end < len(transactions) and transactions[end].at == transactions[index].at
        ):
            end += 1
        group = transactions[index:end]
        if len(group) > 1:
            # The balance before them: the one the row before left, or for
            # the first rows, the one the row after them begins from.
            if result:
                before: Decimal | None = result[-1].new_balance
            else:
                before = (
                    transactions[end].old_balance if end < len(transactions) else None
                )
            group = _chain(group, before) or group
        result.extend(group)
        index = end
    return result


def _chain(
    group: list[Transaction], before: Decimal | None
) -> list[Transaction] | None:
    """
    *group* ordered so each one's old balance is the one before's new,
    starting from *before* where that is a choice; None if they don't
    chain (a tampered row).
    """
    # Each transaction is a step from its old balance to its new: the order
    # is a walk taking every step once (Hierholzer's algorithm).
    steps: dict[Decimal, list[Transaction]] = {}
    surplus: dict[Decimal, int] = {}
    for t in reversed(group):
        steps.setdefault(t.old_balance, []).append(t)
        surplus[t.old_balance] = surplus.get(t.old_balance, 0) + 1
        surplus[t.new_balance] = surplus.get(t.new_balance, 0) - 1
    starts = [balance for balance, n in surplus.items() if n > 0]
    if starts:
        start = starts[0]
    elif before in steps:
        # A loop (a debit and its refund) ends where it begins: begin it
        # where the balance was, or the day would close mid-loop.
        start = before
    else:
        start = group[0].old_balance
    walk: list[tuple[Decimal, Transaction | None]] = [(start, None)]
    chain: list[Transaction] = []
    while walk:
        balance, step = walk[-1]
        if steps.get(balance):
            following = steps[balance].pop()
            walk.append((following.new_balance, following))
        else:
            walk.pop()
            if step is not None:
                chain.append(step)
    chain.reverse()
    if len(chain) < len(group) or any(
        a.new_balance != b.old_balance for a, b in pairwise(chain)
    ):
        return None
    return chain


def render(report: Report, format: Format) -> str:
    """
    Write *report* as ``"csv"``, ``"json"`` or ``"html"``.

    Raises:
        ValueError: An unknown *format*.
    """
    if format == "csv":
        return _csv(report)
    if format == "json":
        return _json(report)
    if format == "html":
        return _html(report)
    raise ValueError(f"format must be 'csv', 'json' or 'html', got {format!r}")


def _text(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def _csv(report: Report) -> str:
    kinds = report.spend_types
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "date",
            "opening",
            "closing",
            "deposits",
            *(f"spend_{k}" for k in kinds),
            "refunds",
            "guard_estimated",
            "actual_spend",
            "alerts",
            "flagged",
        ]
    )
    for d in report.days:
        writer.writerow(
            [
                d.date.isoformat(),
                _text(d.opening),
                _text(d.closing),
                _text(d.deposits),
                *(_text(d.spend.get(k, ZERO)) for k in kinds),
                _text(d.refunds),
                _text(d.estimated),
                _text(d.actual),
                ";".join(d.alerts),
                d.flagged,
            ]
        )
    return out.getvalue()


def _json(report: Report) -> str:
    rec = report.reconciliation
    doc = {
        "provider": report.provider,
        "account": report.account,
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "days": [
            {
                "date": d.date.isoformat(),
                "opening": None if d.opening is None else _text(d.opening),
                "closing": None if d.closing is None else _text(d.closing),
                "deposits": _text(d.deposits),
                "spend": {k: _text(v) for k, v in d.spend.items()},
                "refunds": _text(d.refunds),
                "guard_estimated": _text(d.estimated),
                "actual_spend": _text(d.actual),
                "alerts": list(d.alerts),
                "flagged": d.flagged,
            }
            for d in report.days
        ],
        "reconciliation": {
            "through_guard": len(rec.through_guard),
            "face_total": _text(rec.face_total),
            "debited_total": _text(rec.debited_total),
            "ratio": None if rec.ratio is None else _text(rec.ratio),
            "bypassed": len(rec.bypassed),
            "bypassed_total": _text(rec.bypassed_total),
            "refunds": len(rec.refunds),
            "refunded_total": _text(rec.refunded_total),
            "unmatched": len(rec.unmatched),
        },
    }
    return json.dumps(doc, indent=2) + "\n"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;color:#111;margin:2em;max-width:60em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #ccc;padding:.2em .5em;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #333}
.chart{width:100%;height:auto;max-width:720px}
.chart .line{stroke:#1f5fbf;stroke-width:2}
.chart .axis{stroke:#555}.chart text{font-size:11px;fill:#333}
.flag{color:#a00;font-weight:bold}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dd{margin:0}
@media print{body{margin:0;max-width:none}tr{break-inside:avoid}
.chart .line{stroke:#000}a{color:inherit}}
"""


def _html(report: Report) -> str:
    kinds = report.spend_types
    rec = report.reconciliation
    title = f"{report.provider} balance report, {report.start} to {report.end}"
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in [
            "Date",
            "Opening",
            "Closing",
            "Deposits",
            *(f"Spend {k}" for k in kinds),
            "Refunds",
            "Guard estimate",
            "Actual spend",
            "Alerts",
        ]
    )
    rows = []
    for d in report.days:
        cells = [
            d.date.isoformat(),
            _money(d.opening),
            _money(d.closing),
            _money(d.deposits),
            *(_money(d.spend.get(k, ZERO)) for k in kinds),
            _money(d.refunds),
            _money(d.estimated),
            _money(d.actual),
            ", ".join(d.alerts),
        ]
        flag = (
            f' class="flag" title="{d.flagged} transactions don\'t add up"'
            if d.flagged
            else ""
        )
        rows.append(
            f"<tr{flag}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
        )
    ratio = "n/a" if rec.ratio is None else f"{rec.ratio:.4f}"
    summary = (
        "<dl>"
        f"<dt>Spends through guard</dt><dd>{len(rec.through_guard)}: face "
        f"{_money(rec.face_total)}, debited {_money(rec.debited_total)} "
        f"(ratio {ratio})</dd>"
        f"<dt>Debits that bypassed guard</dt><dd>{len(rec.bypassed)}: "
        f"{_money(rec.bypassed_total)}</dd>"
        f"<dt>Refunds</dt><dd>{len(rec.refunds)}: {_money(rec.refunded_total)}</dd>"
        f"<dt>Guard spends without a debit</dt><dd>{len(rec.unmatched)}</dd>"
        "</dl>"
    )
    account = f" (account {escape(report.account)})" if report.account else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>Days are UTC{account}. Generated "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by guard.</p>"
        f"<h2>Balance</h2>{svg_chart(report.points, label='Balance over the period')}"
        f"<h2>Reconciliation</h2>{summary}"
        f"<h2>Days</h2><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        "</body></html>\n"
    )


def _money(value: Decimal | None) -> str:
    return "" if value is None else f"{value:,.2f}"
