"""
The emulated Clickatell Platform ("One API"): API-key accounts with a
balance in their billing currency, ``GET /public-client/balance`` with the
error shapes seen in the wild, and ``POST /messages`` that debits it.
"""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs
from aiohttp import web

from guard._sms import sms_parts

from ._common import JSON_TYPE, AmountInput, Refused, dumps, to_decimal
from ._routes import Route

if TYPE_CHECKING:
    import asyncio

    from ._core import Emulator

ERRORS: Final = {
    1: (401, "Invalid or missing Integration API Key"),
    2: (400, "Account is not active"),
    3: (400, "Integration is not active"),
    7: (401, "IP address is not approved"),
    18: (500, "Internal error"),
    19: (503, "Service temporarily unavailable, please retry"),
    20: (402, "Insufficient account balance"),
    41: (400, "Resource does not exist"),
    42: (400, "Method not supported"),
    43: (400, "Rate limit exceeded"),
    46: (400, "Demo access expired"),
}
"""
The One API error table: code -> (HTTP status, description).
"""


def platform_error(code: int, *, status: int | None = None) -> web.Response:
    """
    A One API error reply: ``{"errorCode", "error", "errorDescription"}``,
    with the table's status unless *status* says otherwise (200 and 202
    carry errors too).
    """
    table_status, text = ERRORS.get(code, (400, "Error"))
    body = {"errorCode": code, "error": text, "errorDescription": text}
    return web.Response(
        status=table_status if status is None else status,
        text=dumps(body),
        content_type=JSON_TYPE,
    )


@attrs.define(eq=False)
class PlatformAccount:
    """
    An emulated Clickatell Platform account; change the fields freely.

    Attributes:
        api_key: The key sent in ``Authorization``.
        balance: The balance, in *currency*.
        currency: The billing currency.
        price_per_part: What one SMS part costs, in *currency*.
        error: A One API error code to answer every request with (2, 3,
            46...), or None.
        error_status: The status that error comes with; None: the table's.
        messages: Accepted messages as ``(to, content, charge)``.
    """

    api_key: str = attrs.field(repr=False)
    balance: Decimal
    currency: str = "ZAR"
    price_per_part: Decimal = Decimal("0.25")
    error: int | None = None
    error_status: int | None = None
    messages: list[tuple[str, str, Decimal]] = attrs.field(factory=list, repr=False)


class PlatformServer:
    """
    The Clickatell Platform part of an `Emulator`. A bad key answers 401
    with the code-1 body, or without a body when the emulator's
    ``platform_bare_401`` is set.
    """

    def __init__(self, emu: Emulator, lock: asyncio.Lock) -> None:
        self._emu = emu
        self._lock = lock
        self.accounts: dict[str, PlatformAccount] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(
            "/public-client/balance",
            self._balance,
            name=Route.CLICKATELL_PLATFORM_BALANCE,
        )
        app.router.add_post(
            "/messages", self._messages, name=Route.CLICKATELL_PLATFORM_MESSAGES
        )

    def add(
        self,
        api_key: str,
        balance: AmountInput,
        *,
        currency: str,
        price_per_part: AmountInput,
    ) -> PlatformAccount:
        if not api_key:
            msg = "api_key must not be empty"
            raise ValueError(msg)
        if api_key in self.accounts:
            msg = "a Clickatell Platform account with this api_key exists"
            raise ValueError(msg)
        account = PlatformAccount(
            api_key,
            to_decimal(balance, "balance"),
            currency,
            to_decimal(price_per_part, "price_per_part"),
        )
        self.accounts[api_key] = account
        return account

    def _authenticate(self, request: web.Request) -> PlatformAccount:
        account = self.accounts.get(request.headers.get("Authorization", ""))
        if account is None:
            if self._emu.platform_bare_401:
                raise Refused(web.Response(status=401))
            raise Refused(platform_error(1))
        if account.error is not None:
            raise Refused(platform_error(account.error, status=account.error_status))
        return account

    async def _balance(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        return web.Response(
            text=dumps({"balance": account.balance, "currency": account.currency}),
            content_type=JSON_TYPE,
        )

    async def _messages(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        try:
            doc = json.loads(await request.read(), parse_float=Decimal)
        except (ValueError, RecursionError):
            doc = None
        to = doc.get("to") if isinstance(doc, dict) else None
        content = doc.get("content") if isinstance(doc, dict) else None
        recipients = [to] if isinstance(to, str) else to
        if (
            not isinstance(recipients, list)
            or not recipients
            or not all(isinstance(r, str) and r for r in recipients)
            or not isinstance(content, str)
        ):
            raise Refused(platform_error(101 if doc is None else 41, status=400))
        charge = account.price_per_part * sms_parts(content)
        async with self._lock:
            total = charge * len(recipients)
            if account.balance < total:
                raise Refused(platform_error(20))
            account.balance -= total
            replies = []
            for number in recipients:
                account.messages.append((number, content, charge))
                replies.append(
                    {
                        "apiMessageId": secrets.token_hex(16),
                        "accepted": True,
                        "to": number,
                        "errorCode": None,
                        "error": None,
                        "errorDescription": None,
                    }
                )
        return web.Response(
            status=202,
            text=dumps({"messages": replies, "error": None}),
            content_type=JSON_TYPE,
        )
