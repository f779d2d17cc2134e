"""
The emulated OneClickDZ (Flexy API v3): accounts, plans, the ledger,
top-ups, the IP lockout after bad keys, and its routes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import secrets
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from ._common import (
    JSON_TYPE,
    AmountInput,
    Clock,
    RawJSON,
    Refused,
    dumps,
    iso,
    new_id,
    request_id,
    to_decimal,
)
from ._oneclickdz_records import (
    GiftCard,
    KeyType,
    OneClickDZAccount,
    Plan,
    Topup,
    Transaction,
)
from ._routes import Route

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterable, Mapping

    from ._core import Emulator


_MSSIDN = re.compile(r"0[567][0-9]{8}", re.ASCII)
_ADSL = re.compile(r"0[0-9]{8}", re.ASCII)
_4G = re.compile(r"213[0-9]{9}", re.ASCII)
_CENT = Decimal("0.01")


def error_body(
    code: str, message: str, details: Mapping[str, object] | None = None
) -> dict[str, object]:
    """
    The API's error envelope; every OneClickDZ error, scripted or not, is
    built here.
    """
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = dict(details)
    return {"success": False, "error": error, "requestId": request_id()}


def refusal(
    status: int,
    code: str,
    message: str,
    *,
    details: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Refused:
    """
    An error reply of the emulated routes, to raise.
    """
    body = error_body(code, message, details)
    headers = {"X-Request-Id": str(body["requestId"]), **(headers or {})}
    return Refused(
        web.Response(
            status=status, text=dumps(body), content_type=JSON_TYPE, headers=headers
        )
    )


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        doc = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise _invalid("body", None, "body must be a JSON object")
    return doc


def _invalid(field: str, value: object, message: str) -> Refused:
    details = {"field": field, "value": value}
    return refusal(400, "ERR_VALIDATION", message, details=details)


class OneClickDZServer:
    """
    The OneClickDZ half of an `Emulator`: its accounts, the bad-key counts
    and IP blocks, and the route handlers. Options are read from *emu* on
    every request, so tests may change them at any time.
    """

    def __init__(self, emu: Emulator, clock: Clock, lock: asyncio.Lock) -> None:
        self._emu = emu
        self._clock = clock
        # Every debit and credit happens under the emulator's lock, so the
        # balances stay exact however callers race.
        self._lock = lock
        self.accounts: dict[str, OneClickDZAccount] = {}
        # Each ledger entry's JSON, written once: paging through a long
        # ledger would otherwise serialize the same rows again and again.
        # Keyed by value, so that a test that replaces an entry sees it.
        self._entry_json: dict[Transaction, RawJSON] = {}
        self._failures: dict[str, list[float]] = {}
        self._blocked: dict[str, float] = {}

    def add_routes(self, app: web.Application) -> None:
        get = app.router.add_get
        get("/v3/account/balance", self._balance, name=Route.ONECLICKDZ_BALANCE)
        get(
            "/v3/account/transactions",
            self._transactions,
            name=Route.ONECLICKDZ_TRANSACTIONS,
        )
        app.router.add_post("/v3/mobile/send", self._send, name=Route.ONECLICKDZ_SEND)
        for by, name in (
            ("ref", Route.ONECLICKDZ_CHECK_REF),
            ("id", Route.ONECLICKDZ_CHECK_ID),
        ):
            get(
                f"/v3/mobile/check-{by}/{{{by}}}",
                partial(self._check, by=by),
                name=name,
            )
        get("/v3/mobile/plans", self._plans, name=Route.ONECLICKDZ_PLANS)
        get(
            "/v3/internet/products",
            self._internet_products,
            name=Route.ONECLICKDZ_INTERNET_PRODUCTS,
        )
        app.router.add_post(
            "/v3/internet/send",
            self._internet_send,
            name=Route.ONECLICKDZ_INTERNET_SEND,
        )
        get(
            "/v3/gift-cards/checkProduct/{productId}",
            self._gift_product,
            name=Route.ONECLICKDZ_GIFT_CARD_PRODUCT,
        )
        app.router.add_post(
            "/v3/gift-cards/placeOrder",
            self._gift_order,
            name=Route.ONECLICKDZ_GIFT_CARD_ORDER,
        )
        get("/v3/validate", self._validate, name=Route.ONECLICKDZ_VALIDATE)
        get("/v3/ping", self._ping, name=Route.ONECLICKDZ_PING)
        # The real API's router (Fastify) answers unknown paths with JSON.
        app.router.add_route("*", "/v3/{tail:.*}", self._not_found)

    # -- accounts --

    def add(
        self,
        api_key: str,
        balance: AmountInput,
        *,
        key_type: KeyType,
        disabled: bool,
        allowed_ips: Iterable[str],
        username: str,
    ) -> OneClickDZAccount:
        if not api_key:
            msg = "api_key must not be empty"
            raise ValueError(msg)
        if api_key in self.accounts:
            msg = "a OneClickDZ account with this api_key exists"
            raise ValueError(msg)
        if key_type not in ("PRODUCTION", "SANDBOX"):
            msg = f"key_type must be 'PRODUCTION' or 'SANDBOX', not {key_type!r}"
            raise ValueError(msg)
        opening = to_decimal(balance, "balance")
        account = OneClickDZAccount(
            api_key,
            Decimal(0),
            key_type=key_type,
            disabled=disabled,
            allowed_ips=tuple(allowed_ips),
            username=username,
        )
        self.accounts[api_key] = account
        # A starting balance shows in the ledger as a deposit.
        self.adjust(account, opening)
        return account

    def adjust(self, account: OneClickDZAccount, delta: Decimal) -> None:
        if delta:
            self._post(
                account,
                "DEPOSIT" if delta > 0 else "WITHDRAW",
                delta,
                objid=None,
                note="set by the emulator",
            )

    def _post(
        self,
        account: OneClickDZAccount,
        kind: str,
        delta: Decimal,
        *,
        objid: str | None,
        note: str,
    ) -> None:
        old = account.balance
        account.balance = old + delta
        entry = Transaction(
            new_id(),
            kind,
            "CREDIT" if delta > 0 else "DEBIT",
            abs(delta),
            old,
            account.balance,
            objid,
            note,
            self._clock.wall(),
        )
        account.transactions.append(entry)
        self._json_of(entry)

    def unblock(self) -> None:
        self._blocked.clear()
        self._failures.clear()

    # -- replies --

    def _ok(self, data: Mapping[str, object], *, meta: bool = True) -> web.Response:
        doc: dict[str, object] = {"success": True, "data": dict(data)}
        headers = {}
        if meta:
            rid = request_id()
            doc["meta"] = {"timestamp": iso(self._clock.wall())}
            doc["requestId"] = rid
            headers["X-Request-Id"] = rid
        return web.Response(text=dumps(doc), content_type=JSON_TYPE, headers=headers)

    def _authenticate(self, request: web.Request) -> OneClickDZAccount:
        emu = self._emu
        ip = request.remote or ""
        now = self._clock.now()
        until = self._blocked.get(ip)
        if until is not None:
            if now < until:
                raise refusal(
                    403,
                    "IP_BLOCKED",
                    "Too many invalid attempts; this IP is blocked",
                    headers={"Retry-After": str(math.ceil(until - now))},
                )
            del self._blocked[ip]
        key = request.headers.get("X-Access-Token")
        if not key:
            raise refusal(
                emu.missing_token_status,
                "MISSING_ACCESS_TOKEN",
                "The X-Access-Token header is required",
            )
        account = self.accounts.get(key)
        if account is None:
            recent = [
                t for t in self._failures.get(ip, []) if now - t < emu.ip_block_seconds
            ]
            recent.append(now)
            left = max(0, emu.auth_failure_limit - len(recent))
            if left == 0:
                self._blocked[ip] = now + emu.ip_block_seconds
                self._failures.pop(ip, None)
            else:
                self._failures[ip] = recent
            raise refusal(
                401,
                emu.invalid_token_code,
                "Invalid access token",
                details={"attemptsLeft": left},
            )
        if account.disabled:
            raise refusal(403, "API_DISABLED", "This API key is disabled")
        if account.allowed_ips and ip not in account.allowed_ips:
            raise refusal(
                403,
                "IP_NOT_ALLOWED",
                "This IP is not allowed for this API key",
                details={"ip": ip},
            )
        return account

    # -- routes (a `Refused` raised here is answered by the emulator core) --

    async def _balance(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        return self._ok({"balance": account.balance})

    async def _send(self, request: web.Request) -> web.Response:
        emu = self._emu
        account = self._authenticate(request)
        plan, mssidn, amount, ref = self._read_send(await request.read())
        charged = (amount * plan.cost).quantize(_CENT, rounding=ROUND_HALF_UP)
        async with self._lock:
            if ref is not None and any(t.ref == ref for t in account.topups):
                raise refusal(
                    403,
                    "DUPLICATED_REF",
                    "This ref was already used",
                    details={"ref": ref},
                )
            if not account.sandbox and account.balance < charged:
                raise refusal(
                    403,
                    emu.insufficient_balance_code,
                    "Insufficient balance",
                    details={"required": charged, "available": account.balance},
                )
            topup = Topup(
                new_id(),
                ref if ref is not None else f"emu-{secrets.token_hex(6)}",
                plan.code,
                mssidn,
                amount,
                Decimal(0) if account.sandbox else charged,
                self._clock.wall(),
                emu.topup_statuses or ("FULFILLED",),
            )
            account.topups.append(topup)
            if not account.sandbox:
                self._post(
                    account, "FLEXY", -charged, objid=topup.id, note=f"Top-up {mssidn}"
                )
            # Read under the lock: the balance right after this debit.
            new_balance = account.balance
        data: dict[str, object] = {"topupId": topup.id, "topupRef": topup.ref}
        if emu.send_new_balance:
            data["newBalance"] = new_balance
        return self._ok(data)

    async def _debit(
        self,
        account: OneClickDZAccount,
        kind: str,
        charged: Decimal,
        objid: str,
        note: str,
    ) -> Decimal:
        """
        Debit *charged* (nothing on a sandbox key) or refuse with the
        insufficient-balance error; return the balance after it.
        """
        async with self._lock:
            if not account.sandbox and account.balance < charged:
                raise refusal(
                    403,
                    self._emu.insufficient_balance_code,
                    "Insufficient balance",
                    details={"required": charged, "available": account.balance},
                )
            if not account.sandbox:
                self._post(account, kind, -charged, objid=objid, note=note)
            return account.balance

    async def _internet_products(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        kind = request.query.get("type")
        if kind not in ("ADSL", "4G"):
            raise _invalid("type", kind, "type must be ADSL or 4G")
        products = [p for p in self._emu.internet_products if p.type == kind]
        return self._ok({"products": [p.to_json() for p in products], "type": kind})

    async def _internet_send(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        doc = _json_object(await request.read())
        kind = doc.get("type")
        if kind not in ("ADSL", "4G"):
            raise _invalid("type", kind, "type must be ADSL or 4G")
        number = doc.get("number")
        pattern = _ADSL if kind == "ADSL" else _4G
        if not isinstance(number, str) or not pattern.fullmatch(number):
            raise _invalid("number", number, f"number is not a valid {kind} number")
        value = doc.get("value")
        product = next(
            (
                p
                for p in self._emu.internet_products
                if p.type == kind
                and not isinstance(value, bool)
                and isinstance(value, int | Decimal)
                and p.value == value
            ),
            None,
        )
        if product is None:
            raise _invalid("value", value, f"no {kind} card of this value")
        if not product.available:
            raise refusal(400, "OUT_OF_STOCK", "This card is out of stock")
        topup_id = new_id()
        new_balance = await self._debit(
            account, "ADSL", product.cost, topup_id, f"{kind} card {number}"
        )
        data: dict[str, object] = {"topupId": topup_id, "topupRef": topup_id}
        if self._emu.send_new_balance:
            data["newBalance"] = new_balance
        return self._ok(data)

    def _gift_card(self, product_id: object) -> GiftCard | None:
        return next(
            (g for g in self._emu.gift_cards if g.product_id == product_id), None
        )

    async def _gift_product(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        card = self._gift_card(request.match_info["productId"])
        if card is None:
            raise refusal(404, "NOT_FOUND", "Product not found")
        return self._ok(
            {
                "productId": card.product_id,
                "productTitle": card.title,
                "types": [t.to_json() for t in card.types],
            }
        )

    async def _gift_order(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        doc = _json_object(await request.read())
        card = self._gift_card(doc.get("productId"))
        if card is None:
            raise _invalid("productId", doc.get("productId"), "unknown productId")
        type_id = doc.get("typeId")
        kind = next((t for t in card.types if t.id == type_id), None)
        if kind is None:
            raise _invalid("typeId", type_id, "unknown typeId for this product")
        quantity = doc.get("quantity", 1)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise _invalid("quantity", quantity, "quantity must be an integer >= 1")
        if quantity > kind.quantity:
            raise refusal(400, "OUT_OF_STOCK", "Not enough cards in stock")
        order_id = new_id()
        new_balance = await self._debit(
            account,
            "ORDER",
            kind.price * quantity,
            order_id,
            f"{quantity} x {card.title} {kind.name}",
        )
        data: dict[str, object] = {"orderId": order_id}
        if self._emu.send_new_balance:
            data["newBalance"] = new_balance
        return self._ok(data)

    def _read_send(self, raw: bytes) -> tuple[Plan, str, Decimal, str | None]:
        try:
            doc = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise _invalid("body", None, "body must be a JSON object")
        code = doc.get("plan_code")
        if not isinstance(code, str) or not code:
            raise _invalid(
                "plan_code", code, "body must have required property 'plan_code'"
            )
        plan = self._emu.plans.get(code)
        if plan is None or not plan.enabled:
            raise _invalid("plan_code", code, "unknown or disabled plan_code")
        mssidn = doc.get("MSSIDN")
        if not isinstance(mssidn, str) or not _MSSIDN.fullmatch(mssidn):
            raise _invalid(
                "MSSIDN", mssidn, 'body/MSSIDN must match pattern "^0[567][0-9]{8}$"'
            )
        amount = doc.get("amount")
        if amount is not None and (
            isinstance(amount, bool) or not isinstance(amount, int | Decimal)
        ):
            raise _invalid("amount", amount, "body/amount must be number")
        if plan.amount is not None:
            if amount is not None and Decimal(amount) != plan.amount:
                raise _invalid(
                    "amount", amount, f"amount must be {plan.amount} for this plan"
                )
            value = plan.amount
        else:
            if amount is None:
                raise _invalid("amount", None, "amount is required for dynamic plans")
            value = Decimal(amount)
            low = plan.min_amount if plan.min_amount is not None else Decimal(0)
            high = plan.max_amount
            if (
                not value.is_finite()
                or value < low
                or (high is not None and value > high)
            ):
                raise _invalid(
                    "amount", amount, f"amount must be between {low} and {high}"
                )
        ref = doc.get("ref")
        if ref is not None and (not isinstance(ref, str) or not ref):
            raise _invalid("ref", ref, "body/ref must be a non-empty string")
        return plan, mssidn, value, ref

    async def _check(self, request: web.Request, by: str) -> web.Response:
        account = self._authenticate(request)
        wanted = request.match_info[by]
        topup = next((t for t in account.topups if getattr(t, by) == wanted), None)
        if topup is None:
            raise refusal(404, "NOT_FOUND", "Top-up not found")
        async with self._lock:
            topup.checks += 1
            if topup.status == "REFUNDED" and not topup.refunded:
                topup.refunded = True
                if topup.charged:
                    self._post(
                        account,
                        "REFUND-FLEXY",
                        topup.charged,
                        objid=topup.id,
                        note=f"Refund of top-up {topup.mssidn}",
                    )
        data = topup.to_json()
        if topup.status == "REFUNDED":
            data["refund_message"] = "The operator refused the top-up"
        return self._ok(data)

    async def _transactions(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        page, size, start, end = _read_listing(request.query)
        items = [
            t
            for t in reversed(account.transactions)
            if start is None or end is None or start <= t.time <= end
        ]
        first = (page - 1) * size
        return self._ok(
            {
                "items": [self._json_of(t) for t in items[first : first + size]],
                "pagination": {
                    "page": page,
                    "pageSize": size,
                    "totalPages": math.ceil(len(items) / size),
                    "totalResults": len(items),
                },
            }
        )

    def _json_of(self, entry: Transaction) -> RawJSON:
        text = self._entry_json.get(entry)
        if text is None:
            text = self._entry_json[entry] = RawJSON(dumps(entry.to_json()))
        return text

    async def _plans(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        plans = list(self._emu.plans.values())
        return self._ok(
            {
                "dynamicPlans": [p.to_json() for p in plans if p.amount is None],
                "fixedPlans": [p.to_json() for p in plans if p.amount is not None],
            }
        )

    async def _validate(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        return self._ok(
            {
                "username": account.username,
                "apiKey": {
                    "key": account.api_key,
                    "isEnabled": not account.disabled,
                    "type": account.key_type,
                    "allowedips": list(account.allowed_ips),
                    "scope": "READ-WRITE",
                },
            },
            meta=False,
        )

    async def _ping(self, request: web.Request) -> web.Response:
        operators = self._emu.operators
        healthy = all(state == "up" for state in operators.values())
        return self._ok(
            {"api": "ok" if healthy else "error", "operators": dict(operators)}
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(
            status=404,
            text=dumps(
                {
                    "message": f"Route {request.method}:{request.path} not found",
                    "error": "Not Found",
                    "statusCode": 404,
                }
            ),
            content_type=JSON_TYPE,
        )


def _read_listing(
    query: Mapping[str, str],
) -> tuple[int, int, dt.datetime | None, dt.datetime | None]:
    numbers = []
    for field, default, high in (("page", 1, 10**9), ("pageSize", 20, 100)):
        text = query.get(field, str(default))
        digits = text.isascii() and text.isdigit() and len(text) <= 10
        if not (digits and 1 <= int(text) <= high):
            raise _invalid(field, text, f"{field} must be an integer from 1 to {high}")
        numbers.append(int(text))
    bounds: list[dt.datetime | None] = []
    for field in ("from", "to"):
        given = query.get(field)
        if given is None:
            bounds.append(None)
            continue
        try:
            when = dt.datetime.fromisoformat(given)
        except ValueError:
            raise _invalid(field, given, f"{field} must be an ISO-8601 date") from None
        bounds.append(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    start, end = bounds
    if (start is None) != (end is None):
        raise _invalid(
            "from" if start is None else "to",
            None,
            "from and to must be given together",
        )
    return numbers[0], numbers[1], start, end
