"""
Importing the provider's own record: OneClickDZ ``/v3/account/transactions``,
100 rows a page, idempotent on the transaction id, each row's balances
checked.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp
import attrs

from guard._accounts import account_digest
from guard._money import MONEY
from guard.errors import BalanceUnavailable, ProviderResponseError
from guard.providers._oneclickdz import NAME, TOKEN_HEADER, parse_balance

from ._base import utc
from ._records import Transaction, direction_of

if TYPE_CHECKING:
    from guard.providers import OneClickDZ

    from ._base import BaseHistory

__all__ = ["ImportResult", "import_oneclickdz"]

TRANSACTIONS_PATH = "/v3/account/transactions"
PAGE_SIZE = 100
_BODY_LIMIT = 4 * 1024 * 1024
# "from" and "to" must be given together; this stands for "from the start".
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@attrs.define(frozen=True)
class ImportResult:
    """
    What `import_oneclickdz` did.

    Attributes:
        pages: Pages read.
        seen: Transactions read.
        added: Transactions new to the history.
        flagged: The transactions read whose balances don't add up.
    """

    pages: int
    seen: int
    added: int
    flagged: tuple[Transaction, ...]


async def import_oneclickdz(
    history: BaseHistory,
    provider: OneClickDZ,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    session: aiohttp.ClientSession | None = None,
    request_timeout: float = 30.0,
) -> ImportResult:
    """
    Copy *provider*'s transactions from *since* to *until* into *history*.

    Each request may take *request_timeout* seconds. Rows already there
    (same id) are left alone, so importing again adds only what is new.
    Without *until*, the import stops at the time it began, so that rows
    arriving meanwhile don't shift the pages under it.

    Raises:
        guard.ProviderAuthError: The key was refused.
        guard.ProviderResponseError: An answer is not a transaction list.
        guard.BalanceUnavailable: The API could not be reached.
    """
    start = _EPOCH if since is None else utc(since)
    end = dt.datetime.now(dt.UTC) if until is None else utc(until)
    account = account_digest(provider)
    own = session is None
    http = session or aiohttp.ClientSession()
    pages = seen = added = 0
    flagged: list[Transaction] = []
    try:
        page = 1
        while True:
            rows, total_pages = await _page(
                http, provider, page, start, end, request_timeout
            )
            pages += 1
            seen += len(rows)
            found = [_transaction(row, account) for row in rows]
            flagged.extend(t for t in found if not t.consistent)
            added += await history.add_transactions(found)
            if not rows or page >= total_pages:
                break
            page += 1
    finally:
        if own:
            await http.close()
    return ImportResult(pages, seen, added, tuple(flagged))


async def _page(
    http: aiohttp.ClientSession,
    provider: OneClickDZ,
    page: int,
    start: dt.datetime,
    end: dt.datetime,
    request_timeout: float,
) -> tuple[list[dict[str, object]], int]:
    params = {
        "page": str(page),
        "pageSize": str(PAGE_SIZE),
        "from": start.isoformat(),
        "to": end.isoformat(),
    }
    try:
        async with http.get(
            f"{provider.base_url}{TRANSACTIONS_PATH}",
            params=params,
            # SECURITY: the key travels in its header only, never the URL.
            headers={
                TOKEN_HEADER: provider.api_key.reveal(),
                "Accept": "application/json",
            },
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as response:
            body = await response.content.read(_BODY_LIMIT)
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BalanceUnavailable(
            f"{type(exc).__name__} while listing transactions", provider=NAME
        ) from None
    try:
        doc = json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError):
        doc = None
    if not (status == 200 and isinstance(doc, dict) and doc.get("success") is True):
        # The balance reader knows every error envelope of this API.
        parse_balance(status, body, retry_after=retry_after, redact=(provider.api_key,))
        raise _bad("not a success envelope")  # pragma: no cover - raised above
    data = doc.get("data")
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _bad("no data.items list")
    # The docs put pagination under data, the response-format page under meta.
    meta = doc.get("meta")
    pagination = (data.get("pagination") if isinstance(data, dict) else None) or (
        meta.get("pagination") if isinstance(meta, dict) else None
    )
    total = pagination.get("totalPages") if isinstance(pagination, dict) else None
    return items, total if isinstance(total, int) and not isinstance(
        total, bool
    ) else page


def _transaction(row: dict[str, object], account: str) -> Transaction:
    try:
        tx_id = row["_id"]
        kind = row["type"]
        amount, old, new = (
            _number(row[k], k) for k in ("amount", "oldBalance", "newBalance")
        )
        when = dt.datetime.fromisoformat(str(row["time"]))
    except (KeyError, ValueError) as exc:
        raise _bad(f"a transaction without a readable {exc}") from None
    if not isinstance(tx_id, str) or not isinstance(kind, str):
        raise _bad("a transaction whose _id or type is not text")
    objid = row.get("objid")
    note = row.get("note")
    return Transaction(
        provider=NAME,
        account=account,
        id=tx_id,
        type=kind,
        amount=amount,
        old_balance=old,
        new_balance=new,
        at=utc(when),
        objid=objid if isinstance(objid, str) else None,
        note=note if isinstance(note, str) else "",
        consistent=adds_up(kind, amount, old, new),
    )


def adds_up(kind: str, amount: Decimal, old: Decimal, new: Decimal) -> bool:
    """
    Whether a transaction's balances agree with its amount and direction.
    """
    moved = MONEY.subtract(new, old)
    direction = direction_of(kind)
    if direction == "in":
        return moved == amount
    if direction == "out":
        return moved == -amount
    return abs(moved) == abs(amount)


def _number(value: object, key: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(key)
    return Decimal(value)


def _bad(what: str) -> ProviderResponseError:
    return ProviderResponseError(f"transactions: {what}", provider=NAME)
