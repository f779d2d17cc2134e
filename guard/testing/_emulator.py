"""
A local emulator of the OneClickDZ (Flexy API v3) and Clickatell legacy HTTP
APIs: one aiohttp application with real balances that spend routes debit,
scripted faults, and a request log with secrets masked.

It backs guard's own tests, ``python -m guard demo``, and users' integration
tests::

    async with Emulator() as emu:
        emu.add_oneclickdz("key", balance=1000)
        provider = emu.oneclickdz("key")        # pointed at emu.url
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"))

Route names (`Route`) are also the aiohttp resource names, so ``emu.app`` can
be served by pytest-aiohttp's ``aiohttp_server`` as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import enum
import hmac
import json
import math
import re
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, TypeAlias

import attrs
from aiohttp import web
from yarl import URL

from guard._sms import sms_parts
from guard.providers import Clickatell, OneClickDZ

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence
    from types import TracebackType
    from typing import Self

__all__ = [
    "DEMO_CLICKATELL_API_ID",
    "DEMO_CLICKATELL_PASSWORD",
    "DEMO_CLICKATELL_USER",
    "DEMO_ONECLICKDZ_KEY",
    "EMULATOR_KEY",
    "MASK",
    "ClickatellAccount",
    "Emulator",
    "Fault",
    "OneClickDZAccount",
    "Plan",
    "RequestRecord",
    "Route",
    "SentMessage",
    "Topup",
    "Transaction",
    "main",
    "serve",
]

DEMO_ONECLICKDZ_KEY: Final = "demo-oneclickdz-key"
DEMO_CLICKATELL_USER: Final = "demo"
DEMO_CLICKATELL_PASSWORD: Final = "demo-password"  # noqa: S105 - a demo account
DEMO_CLICKATELL_API_ID: Final = "3000001"

MASK: Final = "[secure]"
"""
What the request log shows instead of a secret.
"""

AmountInput: TypeAlias = int | str | Decimal | float
KeyType: TypeAlias = Literal["PRODUCTION", "SANDBOX"]


class Route(enum.StrEnum):
    """
    Names of the emulated routes, for `Emulator.fail` and `Emulator.count`.

    Plain strings such as ``"oneclickdz.balance"`` work too.
    """

    ONECLICKDZ_BALANCE = "oneclickdz.balance"
    """``GET /v3/account/balance``"""
    ONECLICKDZ_TRANSACTIONS = "oneclickdz.transactions"
    """``GET /v3/account/transactions``"""
    ONECLICKDZ_SEND = "oneclickdz.send"
    """``POST /v3/mobile/send`` (spends)"""
    ONECLICKDZ_CHECK_REF = "oneclickdz.check_ref"
    """``GET /v3/mobile/check-ref/{ref}``"""
    ONECLICKDZ_CHECK_ID = "oneclickdz.check_id"
    """``GET /v3/mobile/check-id/{id}``"""
    ONECLICKDZ_PLANS = "oneclickdz.plans"
    """``GET /v3/mobile/plans``"""
    ONECLICKDZ_VALIDATE = "oneclickdz.validate"
    """``GET /v3/validate``"""
    ONECLICKDZ_PING = "oneclickdz.ping"
    """``GET /v3/ping`` (no key needed)"""
    CLICKATELL_AUTH = "clickatell.auth"
    """``GET|POST /http/auth``"""
    CLICKATELL_PING = "clickatell.ping"
    """``GET|POST /http/ping``"""
    CLICKATELL_GETBALANCE = "clickatell.getbalance"
    """``GET|POST /http/getbalance``"""
    CLICKATELL_SENDMSG = "clickatell.sendmsg"
    """``GET|POST /http/sendmsg`` (spends)"""


EMULATOR_KEY: Final = web.AppKey["Emulator"]("guard.emulator")
"""
Where ``emu.app`` keeps its `Emulator`.
"""

# SECURITY: values of these never reach the request log.
_SECRET_HEADERS = frozenset({"x-access-token", "authorization", "cookie"})
_SECRET_FIELDS = frozenset(
    {"password", "api_id", "session_id", "api_key", "x-access-token", "token"}
)

_MSSIDN = re.compile(r"0[567][0-9]{8}", re.ASCII)
_MSISDN = re.compile(r"\+?[1-9][0-9]{6,14}", re.ASCII)
_CENT = Decimal("0.01")

_OK_JSON = "application/json"
_TEXT = "text/plain"


# --- values -------------------------------------------------------------------


def _to_decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        msg = f"{name} must be an int, str or Decimal, not {type(value).__name__}"
        raise TypeError(msg)
    try:
        # Floats through str(): 0.1 means Decimal("0.1"), not its binary value.
        amount = Decimal(str(value) if isinstance(value, float) else value)
    except InvalidOperation:
        msg = f"{name} must be a decimal number, not {value!r}"
        raise ValueError(msg) from None
    if not amount.is_finite():
        msg = f"{name} must be finite, not {value!r}"
        raise ValueError(msg)
    return amount


def _dumps(value: object) -> str:
    """
    Serialize *value* to JSON, writing `Decimal` as an exact JSON number.
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            msg = f"JSON has no {value}"
            raise ValueError(msg)
        return format(value, "f")
    if isinstance(value, int | float | str):
        return json.dumps(value, allow_nan=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"JSON object keys must be str, not {type(key).__name__}"
                raise TypeError(msg)
            items.append(f"{json.dumps(key)}:{_dumps(item)}")
        return "{" + ",".join(items) + "}"
    msg = f"{type(value).__name__} is not JSON serializable"
    raise TypeError(msg)


def _iso(when: dt.datetime) -> str:
    # The API's own form: milliseconds and a Z.
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _new_id() -> str:
    # Shaped like the API's MongoDB ObjectIds.
    return secrets.token_hex(12)


def _request_id() -> str:
    return f"req_{secrets.token_hex(8)}"


def _mask(fields: Mapping[str, str]) -> dict[str, str]:
    return {k: MASK if k.lower() in _SECRET_FIELDS else v for k, v in fields.items()}


def _mask_json(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: MASK if str(k).lower() in _SECRET_FIELDS else _mask_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_json(v) for v in value]
    return value


# --- faults -------------------------------------------------------------------


def _check_status(
    instance: object, attribute: attrs.Attribute[Any], value: int
) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"status must be an int, not {type(value).__name__}"
        raise TypeError(msg)
    if not 100 <= value <= 599:
        msg = f"status must be an HTTP status (100-599), not {value}"
        raise ValueError(msg)


def _check_delay(
    instance: object, attribute: attrs.Attribute[Any], value: float
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{attribute.name} must be a number of seconds"
        raise TypeError(msg)
    if not (math.isfinite(value) and value >= 0):
        msg = f"{attribute.name} must be zero or more seconds, not {value!r}"
        raise ValueError(msg)


def _to_headers(value: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()}


@attrs.define(frozen=True)
class Fault:
    """
    One scripted answer that replaces a route's normal one.

    Queue it with `Emulator.fail`. Without *body* or *json* the answer is
    empty.

    Args:
        status: The HTTP status to answer with.
        body: The raw body (`str` is sent as UTF-8); use this for HTML,
            truncated JSON or ``null``.
        json: A value to send as JSON (`Decimal` becomes an exact number);
            `None` means no JSON.
        headers: Extra response headers, such as ``Retry-After``.
        content_type: The ``Content-Type``; by default ``application/json``
            for *json* and ``text/plain`` for *body*.
        delay: Seconds to wait before answering (real time, so client
            timeouts fire).
        drop: Close the connection instead of answering.
        passthrough: After *delay*, answer normally (a slow but correct
            provider).
    """

    status: int = attrs.field(default=500, validator=_check_status)
    body: str | bytes | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.instance_of((str, bytes))),
    )
    json: object = attrs.field(default=None, kw_only=True, hash=False)
    headers: Mapping[str, str] = attrs.field(
        factory=dict, kw_only=True, converter=_to_headers, hash=False
    )
    content_type: str | None = attrs.field(default=None, kw_only=True)
    delay: float = attrs.field(default=0.0, kw_only=True, validator=_check_delay)
    drop: bool = attrs.field(default=False, kw_only=True)
    passthrough: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.body is not None and self.json is not None:
            msg = "give a Fault a body or json, not both"
            raise ValueError(msg)
        if self.drop and self.passthrough:
            msg = "a Fault cannot both drop and pass through"
            raise ValueError(msg)
        # Fail at the test line that builds the fault, not in the server.
        _dumps(self.json)

    @classmethod
    def oneclickdz(
        cls,
        status: int,
        code: str,
        message: str = "Emulated error",
        *,
        details: Mapping[str, object] | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """
        A OneClickDZ error envelope, such as
        ``Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after=5)``.

        Args:
            status: The HTTP status.
            code: The ``error.code``.
            message: The ``error.message``.
            details: The optional ``error.details``.
            retry_after: A ``Retry-After`` header: seconds, or any string
                (an HTTP-date, or nonsense to test parsing).
            delay: Seconds to wait before answering.
        """
        error: dict[str, object] = {"code": code, "message": message}
        if details is not None:
            error["details"] = dict(details)
        headers = {}
        if isinstance(retry_after, str):
            headers["Retry-After"] = retry_after
        elif retry_after is not None:
            seconds = float(retry_after)
            headers["Retry-After"] = (
                str(int(seconds)) if seconds.is_integer() else str(seconds)
            )
        return cls(
            status,
            json={"success": False, "error": error, "requestId": _request_id()},
            headers=headers,
            delay=delay,
        )

    @classmethod
    def clickatell_err(
        cls, code: int | str, text: str, *, digits: int = 3, delay: float = 0.0
    ) -> Fault:
        """
        A Clickatell ``ERR: <code>, <text>`` line with HTTP 200, such as
        ``Fault.clickatell_err(901, "Internal error")``.

        Args:
            code: The error code; an `int` is zero-padded to *digits*, a `str`
                is sent as given.
            text: The description.
            digits: Width of an `int` code (3, or 4 as one wiki shows).
            delay: Seconds to wait before answering.
        """
        rendered = code if isinstance(code, str) else f"{code:0{digits}d}"
        return cls(200, body=f"ERR: {rendered}, {text}", delay=delay)

    @classmethod
    def html(cls, status: int = 502, title: str = "Bad gateway") -> Fault:
        """
        An HTML error page as a proxy (Cloudflare) in front of the API sends.
        """
        page = (
            f"<!DOCTYPE html><html><head><title>{status} {title}</title></head>"
            f"<body><h1>{status} {title}</h1><p>cloudflare</p></body></html>"
        )
        return cls(status, body=page, content_type="text/html")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """
        Answer normally, but only after *delay* seconds.
        """
        return cls(delay=delay, passthrough=True)

    def response(self) -> web.Response:
        """
        Build the aiohttp response this fault answers with.
        """
        headers = dict(self.headers)
        content_type = self.content_type
        body: bytes | None = None
        if self.json is not None:
            body = _dumps(self.json).encode()
            content_type = content_type or _OK_JSON
        elif self.body is not None:
            body = self.body.encode() if isinstance(self.body, str) else self.body
            content_type = content_type or _TEXT
        if content_type is not None and "content-type" not in {
            h.lower() for h in headers
        }:
            headers["Content-Type"] = content_type
        return web.Response(status=self.status, body=body, headers=headers)


# --- records ------------------------------------------------------------------


@attrs.define(frozen=True)
class RequestRecord:
    """
    One request the emulator received, with secrets replaced by ``[secure]``.

    Attributes:
        seq: Arrival order, from 1.
        route: The route name, or `None` for an unknown path.
        method: The HTTP method.
        path: The URL path (never carries a secret on emulated routes).
        query: Query parameters, masked.
        headers: Request headers, masked.
        form: Form fields of a form-encoded body, masked; else `None`.
        json: A JSON body (secret-named keys masked); else `None`.
        remote: The client address.
        at: The emulator clock when it arrived (see `Emulator.now`).
        status: The status answered; `None` while in flight or if dropped.
        fault: The `Fault` that answered, if one did.
    """

    seq: int
    route: Route | None
    method: str
    path: str
    query: Mapping[str, str] = attrs.field(hash=False)
    headers: Mapping[str, str] = attrs.field(hash=False, repr=False)
    form: Mapping[str, str] | None = attrs.field(hash=False)
    json: object = attrs.field(hash=False)
    remote: str | None
    at: float
    status: int | None = None
    fault: Fault | None = None


@attrs.define(frozen=True)
class Transaction:
    """
    A OneClickDZ ledger entry, as ``/v3/account/transactions`` lists it.
    """

    id: str
    type: str
    operation: str
    amount: Decimal
    old_balance: Decimal
    new_balance: Decimal
    objid: str | None
    note: str
    time: dt.datetime

    def to_json(self) -> dict[str, object]:
        """
        The API's JSON shape of this entry.
        """
        return {
            "_id": self.id,
            "type": self.type,
            "operation": self.operation,
            "amount": self.amount,
            "oldBalance": self.old_balance,
            "newBalance": self.new_balance,
            "objid": self.objid,
            "note": self.note,
            "time": _iso(self.time),
        }


@attrs.define(frozen=True)
class Plan:
    """
    A OneClickDZ mobile plan: dynamic (*min_amount* to *max_amount*) or fixed
    (*amount*). The emulator charges ``amount * cost`` rounded to the cent.
    """

    code: str
    name: str
    operator: str
    cost: Decimal = Decimal(1)
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    amount: Decimal | None = None
    enabled: bool = True

    def to_json(self) -> dict[str, object]:
        """
        The API's JSON shape of this plan.
        """
        data: dict[str, object] = {
            "code": self.code,
            "name": self.name,
            "operator": self.operator,
            "cost": self.cost,
            "isEnabled": self.enabled,
        }
        if self.amount is None:
            data["min_amount"] = self.min_amount
            data["max_amount"] = self.max_amount
        else:
            data["amount"] = self.amount
        return data


DEFAULT_PLANS: Final = (
    *(
        Plan(
            f"PREPAID_{operator.upper()}",
            f"{operator.title()} prepaid",
            operator,
            min_amount=Decimal(50),
            max_amount=Decimal(5000),
        )
        for operator in ("djezzy", "mobilis", "ooredoo")
    ),
    Plan("DJEZZY_HADAYA_1000", "Djezzy Hadaya 1000", "djezzy", amount=Decimal(1000)),
)
"""
The plans an `Emulator` offers by default: ``PREPAID_DJEZZY``,
``PREPAID_MOBILIS`` and ``PREPAID_OOREDOO`` (50 to 5000 DZD) and the fixed
``DJEZZY_HADAYA_1000``, all charged at face value.
"""


@attrs.define(eq=False)
class Topup:
    """
    A OneClickDZ mobile top-up the emulator accepted.

    Each check by id or ref moves it one step along *statuses*; the last one
    sticks. Reaching ``REFUNDED`` credits *charged* back once.
    """

    id: str
    ref: str
    plan_code: str
    mssidn: str
    amount: Decimal
    charged: Decimal
    created_at: dt.datetime
    statuses: tuple[str, ...]
    checks: int = 0
    refunded: bool = False

    @property
    def status(self) -> str:
        """
        The status the last check reported (the first one before any check).
        """
        return self.statuses[max(0, min(self.checks, len(self.statuses)) - 1)]

    def to_json(self) -> dict[str, object]:
        """
        The API's JSON shape of this top-up.
        """
        return {
            "_id": self.id,
            "ref": self.ref,
            "status": self.status,
            "plan_code": self.plan_code,
            "MSSIDN": self.mssidn,
            "topup_amount": self.amount,
            "balance_amount": self.charged,
            "created_at": _iso(self.created_at),
        }


@attrs.define(eq=False)
class OneClickDZAccount:
    """
    An emulated OneClickDZ API key and its balance; change the fields freely.

    Attributes:
        api_key: The ``X-Access-Token`` value.
        balance: The balance in DZD.
        key_type: ``"PRODUCTION"``, or ``"SANDBOX"`` whose sends never debit.
        disabled: Answer ``403 API_DISABLED``.
        allowed_ips: When not empty, other client addresses get
            ``403 IP_NOT_ALLOWED``.
        username: What ``/v3/validate`` reports.
        transactions: The ledger, oldest first.
        topups: Accepted top-ups, oldest first.
    """

    api_key: str = attrs.field(repr=False)
    balance: Decimal
    key_type: KeyType = "PRODUCTION"
    disabled: bool = False
    allowed_ips: tuple[str, ...] = ()
    username: str = "emulated-user"
    transactions: list[Transaction] = attrs.field(factory=list, repr=False)
    topups: list[Topup] = attrs.field(factory=list, repr=False)

    @property
    def sandbox(self) -> bool:
        """
        Whether this is a sandbox key.
        """
        return self.key_type == "SANDBOX"


@attrs.define(frozen=True)
class SentMessage:
    """
    An SMS the emulated Clickatell account accepted (and paid for).
    """

    id: str
    to: str
    text: str
    parts: int
    charge: Decimal


@attrs.define(eq=False)
class ClickatellAccount:
    """
    An emulated Clickatell legacy account; change the fields freely.

    Attributes:
        user: The user name.
        password: The password.
        api_id: The HTTP API id.
        credits: The balance in credits.
        frozen: Answer ``ERR: 004, Account frozen``.
        credits_per_part: What one SMS part costs.
        max_credits_per_message: Refuse dearer messages with ``ERR: 302``.
        allowed_ips: When not empty, other client addresses get
            ``ERR: 007, IP Lockdown violation``.
        messages: Accepted messages, oldest first.
    """

    user: str
    password: str = attrs.field(repr=False)
    api_id: str = attrs.field(repr=False)
    credits: Decimal
    frozen: bool = False
    credits_per_part: Decimal = Decimal(1)
    max_credits_per_message: Decimal | None = None
    allowed_ips: tuple[str, ...] = ()
    messages: list[SentMessage] = attrs.field(factory=list, repr=False)


Account: TypeAlias = OneClickDZAccount | ClickatellAccount


@attrs.define(eq=False)
class _Queued:
    fault: Fault
    remaining: int | None


@attrs.define(eq=False)
class _Session:
    user: str
    expires_at: float


class _Refused(Exception):
    """
    Carries the answer a route refuses with.
    """

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


# --- the emulator -------------------------------------------------------------


class Emulator:
    """
    An aiohttp server speaking OneClickDZ and Clickatell legacy HTTP, with
    balances that spend routes really debit.

    Use it as an async context manager, or `start` and `close` it::

        async with Emulator() as emu:
            emu.add_clickatell("user", "secret", "3000001", credits=10)
            balance = await emu.clickatell("user", "secret", "3000001").fetch_balance(s)

    Every option is also a public attribute that tests may change at any time.

    Args:
        host: Where to listen; loopback by default.
        port: The port; 0 picks a free one (see `url`).
        latency: Seconds every answer waits (real time).
        clock: Monotonic seconds for IP blocks and sessions; `advance` moves
            it forward. Defaults to `time.monotonic`.
        plans: The OneClickDZ mobile plan catalogue.
        missing_token_status: Status of ``MISSING_ACCESS_TOKEN``: 401 per the
            error-handling page, 400 per the validate-token page.
        invalid_token_code: ``"INVALID_ACCESS_TOKEN"`` or its alias
            ``"ERR_AUTH"``.
        insufficient_balance_code: ``"INSUFFICIENT_BALANCE"`` or
            ``"NO_BALANCE"``.
        auth_failure_limit: Bad keys from one address before ``IP_BLOCKED``.
        ip_block_seconds: How long an address stays blocked.
        topup_statuses: The statuses a new top-up walks through, one per
            check; for example ``("PENDING", "HANDLING", "REFUNDED")``.
        send_new_balance: Whether a send answers ``data.newBalance``.
        operators: What ``/v3/ping`` reports per operator.
        clickatell_label: ``"Credit"`` (Clickatell's overview, every client)
            or ``"Credits"`` (the archived docs).
        clickatell_places: Decimal places of the balance; `None` writes it as
            stored.
        clickatell_trailing_space: Append a space after the balance.
        clickatell_line_end: ``""``, ``"\\n"`` or ``"\\r\\n"`` after replies.
        clickatell_code_digits: Width of ``ERR`` codes: 3 (``001``) or 4.
        clickatell_login_error: 1 (``Authentication failed``) or 2
            (``Unknown username or password``) for bad credentials.
        clickatell_ping_echo: Whether ``ping`` answers ``OK: <session_id>``
            rather than ``OK:``.
        session_seconds: Inactivity expiry of Clickatell sessions.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        clock: Callable[[], float] | None = None,
        plans: Iterable[Plan] = DEFAULT_PLANS,
        missing_token_status: int = 401,
        invalid_token_code: str = "INVALID_ACCESS_TOKEN",  # noqa: S107 - an error code
        insufficient_balance_code: str = "INSUFFICIENT_BALANCE",
        auth_failure_limit: int = 5,
        ip_block_seconds: float = 900.0,
        topup_statuses: Sequence[str] = ("FULFILLED",),
        send_new_balance: bool = True,
        operators: Mapping[str, str] | None = None,
        clickatell_label: str = "Credit",
        clickatell_places: int | None = None,
        clickatell_trailing_space: bool = False,
        clickatell_line_end: str = "",
        clickatell_code_digits: int = 3,
        clickatell_login_error: int = 1,
        clickatell_ping_echo: bool = False,
        session_seconds: float = 900.0,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.plans = {plan.code: plan for plan in plans}
        self.missing_token_status = missing_token_status
        self.invalid_token_code = invalid_token_code
        self.insufficient_balance_code = insufficient_balance_code
        self.auth_failure_limit = auth_failure_limit
        self.ip_block_seconds = ip_block_seconds
        self.topup_statuses = tuple(topup_statuses)
        self.send_new_balance = send_new_balance
        self.operators = dict(
            operators
            if operators is not None
            else {
                "mobilis": "up",
                "ooredoo": "up",
                "djezzy": "up",
                "mobilisFixedPlans": "up",
            }
        )
        self.clickatell_label = clickatell_label
        self.clickatell_places = clickatell_places
        self.clickatell_trailing_space = clickatell_trailing_space
        self.clickatell_line_end = clickatell_line_end
        self.clickatell_code_digits = clickatell_code_digits
        self.clickatell_login_error = clickatell_login_error
        self.clickatell_ping_echo = clickatell_ping_echo
        self.session_seconds = session_seconds

        self._clock = clock or time.monotonic
        self._offset = 0.0
        # Every debit and credit happens under this lock, so the balances
        # stay exact however callers race.
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._oneclickdz: dict[str, OneClickDZAccount] = {}
        self._clickatell: dict[str, ClickatellAccount] = {}
        self._sessions: dict[str, _Session] = {}
        self._failures: dict[str, list[float]] = {}
        self._blocked: dict[str, float] = {}
        self._faults: dict[Route, deque[_Queued]] = {}
        self._requests: list[RequestRecord] = []
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.app = self._build_app()

    @classmethod
    def with_demo_accounts(
        cls, *, host: str = "127.0.0.1", port: int = 0, **options: Any
    ) -> Emulator:
        """
        Create an emulator holding the documented demo accounts.

        - OneClickDZ key ``"demo-oneclickdz-key"`` with 10000 DZD.
        - Clickatell user ``"demo"``, password ``"demo-password"``, api_id
          ``"3000001"`` with 100 credits.

        Args:
            host: Where to listen.
            port: The port; 0 picks a free one.
            options: Any other `Emulator` option.
        """
        emu = cls(host=host, port=port, **options)
        emu.add_oneclickdz(DEMO_ONECLICKDZ_KEY, 10000, username="demo")
        emu.add_clickatell(
            DEMO_CLICKATELL_USER,
            DEMO_CLICKATELL_PASSWORD,
            DEMO_CLICKATELL_API_ID,
            100,
        )
        return emu

    # -- lifecycle --

    async def start(self) -> None:
        """
        Start serving on *host* and *port*.

        Raises:
            RuntimeError: It was already started.
            OSError: The address cannot be bound.
        """
        if self._runner is not None or self._closing.is_set():
            msg = "an Emulator can be started only once"
            raise RuntimeError(msg)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            # A client that gives up cancels its handler, like a real server.
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self._url = str(URL.build(scheme="http", host=self.host, port=port))

    async def close(self) -> None:
        """
        Stop serving; delayed faults end at once. Safe to call twice.
        """
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """
        The base URL, such as ``"http://127.0.0.1:41234"``.

        Raises:
            RuntimeError: The emulator is not started.
        """
        if self._url is None:
            msg = "the Emulator is not started: use `async with Emulator()`"
            raise RuntimeError(msg)
        return self._url

    # -- clock --

    def now(self) -> float:
        """
        The emulator clock: the *clock* plus everything `advance` added.
        """
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """
        Move the emulator clock forward, to expire IP blocks and sessions.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            msg = f"seconds must be zero or more, not {seconds!r}"
            raise ValueError(msg)
        self._offset += seconds

    def _wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._offset)

    # -- accounts --

    def add_oneclickdz(
        self,
        api_key: str,
        balance: AmountInput = 0,
        *,
        key_type: KeyType = "PRODUCTION",
        disabled: bool = False,
        allowed_ips: Iterable[str] = (),
        username: str = "emulated-user",
    ) -> OneClickDZAccount:
        """
        Add a OneClickDZ API key holding *balance* DZD.

        A non-zero starting balance shows in the ledger as a ``DEPOSIT``.

        Raises:
            ValueError: The key exists, or an argument is invalid.
        """
        if not api_key:
            msg = "api_key must not be empty"
            raise ValueError(msg)
        if api_key in self._oneclickdz:
            msg = "a OneClickDZ account with this api_key exists"
            raise ValueError(msg)
        if key_type not in ("PRODUCTION", "SANDBOX"):
            msg = f"key_type must be 'PRODUCTION' or 'SANDBOX', not {key_type!r}"
            raise ValueError(msg)
        opening = _to_decimal(balance, "balance")
        account = OneClickDZAccount(
            api_key,
            Decimal(0),
            key_type=key_type,
            disabled=disabled,
            allowed_ips=tuple(allowed_ips),
            username=username,
        )
        self._oneclickdz[api_key] = account
        self._adjust(account, opening)
        return account

    def add_clickatell(
        self,
        user: str,
        password: str,
        api_id: str,
        credits: AmountInput = 0,
        *,
        frozen: bool = False,
        credits_per_part: AmountInput = Decimal(1),
        max_credits_per_message: AmountInput | None = None,
        allowed_ips: Iterable[str] = (),
    ) -> ClickatellAccount:
        """
        Add a Clickatell legacy account holding *credits*.

        Raises:
            ValueError: The user exists, or an argument is invalid.
        """
        for name, value in (("user", user), ("password", password), ("api_id", api_id)):
            if not value:
                msg = f"{name} must not be empty"
                raise ValueError(msg)
        if user in self._clickatell:
            msg = f"a Clickatell account for user {user!r} exists"
            raise ValueError(msg)
        account = ClickatellAccount(
            user,
            password,
            api_id,
            _to_decimal(credits, "credits"),
            frozen=frozen,
            credits_per_part=_to_decimal(credits_per_part, "credits_per_part"),
            max_credits_per_message=(
                None
                if max_credits_per_message is None
                else _to_decimal(max_credits_per_message, "max_credits_per_message")
            ),
            allowed_ips=tuple(allowed_ips),
        )
        self._clickatell[user] = account
        return account

    def account(self, account_or_key: object) -> Account:
        """
        Find an account by record, OneClickDZ key, Clickatell user, or a
        `guard.providers` provider object.

        Raises:
            KeyError: No such account.
        """
        if isinstance(account_or_key, OneClickDZAccount | ClickatellAccount):
            return account_or_key
        found: Account | None
        if isinstance(account_or_key, OneClickDZ):
            found = self._oneclickdz.get(account_or_key.api_key.reveal())
        elif isinstance(account_or_key, Clickatell):
            found = self._clickatell.get(account_or_key.user)
        elif isinstance(account_or_key, str):
            found = self._oneclickdz.get(account_or_key) or self._clickatell.get(
                account_or_key
            )
        else:
            found = None
        if found is None:
            # SECURITY: the lookup value may be a key; don't echo it.
            msg = "no such emulated account"
            raise KeyError(msg)
        return found

    def balance(self, account_or_key: object) -> Decimal:
        """
        The balance of an account: DZD for OneClickDZ, credits for Clickatell.
        """
        account = self.account(account_or_key)
        if isinstance(account, OneClickDZAccount):
            return account.balance
        return account.credits

    def set_balance(self, account_or_key: object, amount: AmountInput) -> None:
        """
        Set the balance of an account; OneClickDZ logs the change in its
        ledger as a ``DEPOSIT`` or ``WITHDRAW``.
        """
        account = self.account(account_or_key)
        value = _to_decimal(amount, "amount")
        if isinstance(account, OneClickDZAccount):
            self._adjust(account, value - account.balance)
        else:
            account.credits = value

    def _adjust(self, account: OneClickDZAccount, delta: Decimal) -> None:
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
        account.transactions.append(
            Transaction(
                _new_id(),
                kind,
                "CREDIT" if delta > 0 else "DEBIT",
                abs(delta),
                old,
                account.balance,
                objid,
                note,
                self._wall(),
            )
        )

    def oneclickdz(
        self, api_key: str, *, base_url: str | None = None, timeout: float = 10.0
    ) -> OneClickDZ:
        """
        A `guard.providers.OneClickDZ` pointed at this emulator.
        """
        return OneClickDZ(api_key, base_url=base_url or self.url, timeout=timeout)

    def clickatell(
        self,
        user: str,
        password: str,
        api_id: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> Clickatell:
        """
        A `guard.providers.Clickatell` pointed at this emulator.
        """
        return Clickatell(
            user, password, api_id, base_url=base_url or self.url, timeout=timeout
        )

    def unblock(self) -> None:
        """
        Forget every OneClickDZ IP block and counted bad key.
        """
        self._blocked.clear()
        self._failures.clear()

    # -- faults and the log --

    def fail(self, route: Route | str, fault: Fault, *, times: int | None = 1) -> None:
        """
        Answer the next *times* requests to *route* with *fault*.

        Faults queue up per route in the order given.

        Args:
            route: A `Route` or its name, such as ``"oneclickdz.balance"``.
            fault: The answer.
            times: How many requests it answers; `None` for all of them until
                `clear_faults`.

        Raises:
            ValueError: Unknown route or bad *times*.
        """
        name = _route(route)
        if times is not None and (isinstance(times, bool) or times < 1):
            msg = f"times must be 1 or more, or None, not {times!r}"
            raise ValueError(msg)
        self._faults.setdefault(name, deque()).append(_Queued(fault, times))

    def clear_faults(self, route: Route | str | None = None) -> None:
        """
        Drop queued faults, for one route or all.
        """
        if route is None:
            self._faults.clear()
        else:
            self._faults.pop(_route(route), None)

    def _next_fault(self, route: Route | None) -> Fault | None:
        queue = self._faults.get(route) if route is not None else None
        if not queue:
            return None
        head = queue[0]
        if head.remaining is not None:
            head.remaining -= 1
            if head.remaining == 0:
                queue.popleft()
        return head.fault

    @property
    def requests(self) -> list[RequestRecord]:
        """
        A copy of the request log, oldest first.
        """
        return list(self._requests)

    def count(self, route: Route | str | None = None) -> int:
        """
        How many requests reached *route* (all routes when `None`), faults
        included.
        """
        if route is None:
            return len(self._requests)
        name = _route(route)
        return sum(1 for r in self._requests if r.route == name)

    def reset_log(self) -> None:
        """
        Empty the request log.
        """
        self._requests.clear()

    # -- the application --

    def _build_app(self) -> web.Application:
        @web.middleware
        async def emulate(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            return await self._dispatch(request, handler)

        app = web.Application(middlewares=[emulate])
        app[EMULATOR_KEY] = self
        app.on_shutdown.append(self._on_shutdown)
        add = app.router.add_get
        add("/v3/account/balance", self._balance, name=Route.ONECLICKDZ_BALANCE)
        add(
            "/v3/account/transactions",
            self._transactions,
            name=Route.ONECLICKDZ_TRANSACTIONS,
        )
        app.router.add_post("/v3/mobile/send", self._send, name=Route.ONECLICKDZ_SEND)
        add(
            "/v3/mobile/check-ref/{ref}",
            self._check_ref,
            name=Route.ONECLICKDZ_CHECK_REF,
        )
        add("/v3/mobile/check-id/{id}", self._check_id, name=Route.ONECLICKDZ_CHECK_ID)
        add("/v3/mobile/plans", self._plans, name=Route.ONECLICKDZ_PLANS)
        add("/v3/validate", self._validate, name=Route.ONECLICKDZ_VALIDATE)
        add("/v3/ping", self._ping, name=Route.ONECLICKDZ_PING)
        # The real API's router (Fastify) answers unknown paths with JSON.
        app.router.add_route("*", "/v3/{tail:.*}", self._not_found)
        for command, handler, route in (
            ("auth", self._ct_auth, Route.CLICKATELL_AUTH),
            ("ping", self._ct_ping, Route.CLICKATELL_PING),
            ("getbalance", self._ct_getbalance, Route.CLICKATELL_GETBALANCE),
            ("sendmsg", self._ct_sendmsg, Route.CLICKATELL_SENDMSG),
        ):
            resource = app.router.add_resource(f"/http/{command}", name=route)
            resource.add_route("GET", handler)
            resource.add_route("POST", handler)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            # Closing the emulator cuts every pause short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    async def _dispatch(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        name = resource.name if resource is not None else None
        route = Route(name) if name in _ROUTE_NAMES else None
        fault = self._next_fault(route)
        record = await self._record(request, route, fault)
        status: int | None = None
        try:
            if fault is not None and not fault.passthrough:
                await self._pause(fault.delay)
                if fault.drop:
                    if request.transport is not None:
                        request.transport.abort()
                    raise web.HTTPServiceUnavailable
                response: web.StreamResponse = fault.response()
            else:
                await self._pause(self.latency + (fault.delay if fault else 0))
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = None if fault is not None and fault.drop else exc.status
            raise
        finally:
            self._finish(record, status)

    async def _record(
        self, request: web.Request, route: Route | None, fault: Fault | None
    ) -> RequestRecord:
        self._seq += 1
        form: dict[str, str] | None = None
        body: object = None
        if request.body_exists:
            if request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                posted = await request.post()
                form = _mask({k: v for k, v in posted.items() if isinstance(v, str)})
            else:
                raw = await request.read()
                with contextlib.suppress(ValueError, RecursionError):
                    body = _mask_json(json.loads(raw, parse_float=Decimal))
        record = RequestRecord(
            seq=self._seq,
            route=route,
            method=request.method,
            path=request.path,
            query=_mask(dict(request.query)),
            headers={
                k: MASK if k.lower() in _SECRET_HEADERS else v
                for k, v in request.headers.items()
            },
            form=form,
            json=body,
            remote=request.remote,
            at=self.now(),
            fault=fault,
        )
        self._requests.append(record)
        return record

    def _finish(self, record: RequestRecord, status: int | None) -> None:
        # Records are frozen; swap in the answered copy if still logged.
        for i in range(len(self._requests) - 1, -1, -1):
            if self._requests[i] is record:
                self._requests[i] = attrs.evolve(record, status=status)
                return

    # -- OneClickDZ --

    def _oneclickdz_error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        error: dict[str, object] = {"code": code, "message": message}
        if details is not None:
            error["details"] = dict(details)
        request_id = _request_id()
        return web.Response(
            status=status,
            text=_dumps({"success": False, "error": error, "requestId": request_id}),
            content_type=_OK_JSON,
            headers={"X-Request-Id": request_id, **(headers or {})},
        )

    def _oneclickdz_ok(
        self, data: Mapping[str, object], *, meta: bool = True
    ) -> web.Response:
        doc: dict[str, object] = {"success": True, "data": dict(data)}
        headers = {}
        if meta:
            request_id = _request_id()
            doc["meta"] = {"timestamp": _iso(self._wall())}
            doc["requestId"] = request_id
            headers["X-Request-Id"] = request_id
        return web.Response(text=_dumps(doc), content_type=_OK_JSON, headers=headers)

    def _invalid(self, field: str, value: object, message: str) -> _Refused:
        return _Refused(
            self._oneclickdz_error(
                400,
                "ERR_VALIDATION",
                message,
                details={"field": field, "value": value},
            )
        )

    def _authenticate(self, request: web.Request) -> OneClickDZAccount:
        ip = request.remote or ""
        now = self.now()
        until = self._blocked.get(ip)
        if until is not None:
            if now < until:
                raise _Refused(
                    self._oneclickdz_error(
                        403,
                        "IP_BLOCKED",
                        "Too many invalid attempts; this IP is blocked",
                        headers={"Retry-After": str(math.ceil(until - now))},
                    )
                )
            del self._blocked[ip]
        key = request.headers.get("X-Access-Token")
        if not key:
            raise _Refused(
                self._oneclickdz_error(
                    self.missing_token_status,
                    "MISSING_ACCESS_TOKEN",
                    "The X-Access-Token header is required",
                )
            )
        account = self._oneclickdz.get(key)
        if account is None:
            recent = [
                t for t in self._failures.get(ip, []) if now - t < self.ip_block_seconds
            ]
            recent.append(now)
            left = max(0, self.auth_failure_limit - len(recent))
            if left == 0:
                self._blocked[ip] = now + self.ip_block_seconds
                self._failures.pop(ip, None)
            else:
                self._failures[ip] = recent
            raise _Refused(
                self._oneclickdz_error(
                    401,
                    self.invalid_token_code,
                    "Invalid access token",
                    details={"attemptsLeft": left},
                )
            )
        if account.disabled:
            raise _Refused(
                self._oneclickdz_error(403, "API_DISABLED", "This API key is disabled")
            )
        if account.allowed_ips and ip not in account.allowed_ips:
            raise _Refused(
                self._oneclickdz_error(
                    403,
                    "IP_NOT_ALLOWED",
                    "This IP is not allowed for this API key",
                    details={"ip": ip},
                )
            )
        return account

    async def _balance(self, request: web.Request) -> web.Response:
        try:
            account = self._authenticate(request)
        except _Refused as refused:
            return refused.response
        return self._oneclickdz_ok({"balance": account.balance})

    async def _send(self, request: web.Request) -> web.Response:
        try:
            account = self._authenticate(request)
            plan, mssidn, amount, ref = self._read_send(await request.read())
        except _Refused as refused:
            return refused.response
        charged = (amount * plan.cost).quantize(_CENT, rounding=ROUND_HALF_UP)
        async with self._lock:
            if ref is not None and any(t.ref == ref for t in account.topups):
                return self._oneclickdz_error(
                    403,
                    "DUPLICATED_REF",
                    "This ref was already used",
                    details={"ref": ref},
                )
            if not account.sandbox and account.balance < charged:
                return self._oneclickdz_error(
                    403,
                    self.insufficient_balance_code,
                    "Insufficient balance",
                    details={"required": charged, "available": account.balance},
                )
            topup = Topup(
                _new_id(),
                ref if ref is not None else f"emu-{secrets.token_hex(6)}",
                plan.code,
                mssidn,
                amount,
                Decimal(0) if account.sandbox else charged,
                self._wall(),
                self.topup_statuses or ("FULFILLED",),
            )
            account.topups.append(topup)
            if not account.sandbox:
                self._post(
                    account, "FLEXY", -charged, objid=topup.id, note=f"Top-up {mssidn}"
                )
        data: dict[str, object] = {"topupId": topup.id, "topupRef": topup.ref}
        if self.send_new_balance:
            data["newBalance"] = account.balance
        return self._oneclickdz_ok(data)

    def _read_send(self, raw: bytes) -> tuple[Plan, str, Decimal, str | None]:
        try:
            doc = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise self._invalid("body", None, "body must be a JSON object")
        code = doc.get("plan_code")
        if not isinstance(code, str) or not code:
            raise self._invalid(
                "plan_code", code, "body must have required property 'plan_code'"
            )
        plan = self.plans.get(code)
        if plan is None or not plan.enabled:
            raise self._invalid("plan_code", code, "unknown or disabled plan_code")
        mssidn = doc.get("MSSIDN")
        if not isinstance(mssidn, str) or not _MSSIDN.fullmatch(mssidn):
            raise self._invalid(
                "MSSIDN", mssidn, 'body/MSSIDN must match pattern "^0[567][0-9]{8}$"'
            )
        amount = doc.get("amount")
        if amount is not None and (
            isinstance(amount, bool) or not isinstance(amount, int | Decimal)
        ):
            raise self._invalid("amount", amount, "body/amount must be number")
        if plan.amount is not None:
            if amount is not None and Decimal(amount) != plan.amount:
                raise self._invalid(
                    "amount", amount, f"amount must be {plan.amount} for this plan"
                )
            value = plan.amount
        else:
            if amount is None:
                raise self._invalid(
                    "amount", None, "amount is required for dynamic plans"
                )
            value = Decimal(amount)
            low = plan.min_amount if plan.min_amount is not None else Decimal(0)
            high = plan.max_amount
            if (
                not value.is_finite()
                or value < low
                or (high is not None and value > high)
            ):
                raise self._invalid(
                    "amount", amount, f"amount must be between {low} and {high}"
                )
        ref = doc.get("ref")
        if ref is not None and (not isinstance(ref, str) or not ref):
            raise self._invalid("ref", ref, "body/ref must be a non-empty string")
        return plan, mssidn, value, ref

    async def _check(self, request: web.Request, by: str) -> web.Response:
        try:
            account = self._authenticate(request)
        except _Refused as refused:
            return refused.response
        wanted = request.match_info[by]
        topup = next((t for t in account.topups if getattr(t, by) == wanted), None)
        if topup is None:
            return self._oneclickdz_error(404, "NOT_FOUND", "Top-up not found")
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
        return self._oneclickdz_ok(data)

    async def _check_ref(self, request: web.Request) -> web.Response:
        return await self._check(request, "ref")

    async def _check_id(self, request: web.Request) -> web.Response:
        return await self._check(request, "id")

    async def _transactions(self, request: web.Request) -> web.Response:
        try:
            account = self._authenticate(request)
            page, size, start, end = self._read_listing(request.query)
        except _Refused as refused:
            return refused.response
        items = [
            t
            for t in reversed(account.transactions)
            if start is None or end is None or start <= t.time <= end
        ]
        first = (page - 1) * size
        return self._oneclickdz_ok(
            {
                "items": [t.to_json() for t in items[first : first + size]],
                "pagination": {
                    "page": page,
                    "pageSize": size,
                    "totalPages": math.ceil(len(items) / size),
                    "totalResults": len(items),
                },
            }
        )

    def _read_listing(
        self, query: Mapping[str, str]
    ) -> tuple[int, int, dt.datetime | None, dt.datetime | None]:
        numbers = []
        for field, default, high in (("page", 1, 10**9), ("pageSize", 20, 100)):
            text = query.get(field, str(default))
            digits = text.isascii() and text.isdigit() and len(text) <= 10
            if not (digits and 1 <= int(text) <= high):
                raise self._invalid(
                    field, text, f"{field} must be an integer from 1 to {high}"
                )
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
                raise self._invalid(
                    field, given, f"{field} must be an ISO-8601 date"
                ) from None
            bounds.append(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
        start, end = bounds
        if (start is None) != (end is None):
            raise self._invalid(
                "from" if start is None else "to",
                None,
                "from and to must be given together",
            )
        return numbers[0], numbers[1], start, end

    async def _plans(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request)
        except _Refused as refused:
            return refused.response
        plans = list(self.plans.values())
        return self._oneclickdz_ok(
            {
                "dynamicPlans": [p.to_json() for p in plans if p.amount is None],
                "fixedPlans": [p.to_json() for p in plans if p.amount is not None],
            }
        )

    async def _validate(self, request: web.Request) -> web.Response:
        try:
            account = self._authenticate(request)
        except _Refused as refused:
            return refused.response
        return self._oneclickdz_ok(
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
        healthy = all(state == "up" for state in self.operators.values())
        return self._oneclickdz_ok(
            {"api": "ok" if healthy else "error", "operators": dict(self.operators)}
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(
            status=404,
            text=_dumps(
                {
                    "message": f"Route {request.method}:{request.path} not found",
                    "error": "Not Found",
                    "statusCode": 404,
                }
            ),
            content_type=_OK_JSON,
        )

    # -- Clickatell --

    def _ct_err(self, code: int, text: str) -> str:
        return f"ERR: {code:0{self.clickatell_code_digits}d}, {text}"

    def _ct_reply(self, text: str) -> web.Response:
        # Clickatell answers 200 for OK and ERR alike.
        return web.Response(text=text + self.clickatell_line_end, content_type=_TEXT)

    async def _ct_params(self, request: web.Request) -> dict[str, str]:
        params = dict(request.query)
        if request.method == "POST":
            posted = await request.post()
            params.update({k: v for k, v in posted.items() if isinstance(v, str)})
        return params

    def _ct_session(self, session_id: str) -> ClickatellAccount:
        session = self._sessions.get(session_id)
        now = self.now()
        if session is None or now >= session.expires_at:
            self._sessions.pop(session_id, None)
            raise _Refused(self._ct_reply(self._ct_err(3, "Session ID expired")))
        account = self._clickatell.get(session.user)
        if account is None:  # the account was removed by a test
            raise _Refused(self._ct_reply(self._ct_err(3, "Session ID expired")))
        # Each use extends the session by the full inactivity window.
        session.expires_at = now + self.session_seconds
        return account

    def _ct_login(
        self, request: web.Request, params: Mapping[str, str], *, session: bool = True
    ) -> ClickatellAccount:
        session_id = params.get("session_id")
        if session and session_id:
            account = self._ct_session(session_id)
        else:
            account = self._ct_credentials(params)
        if account.frozen:
            raise _Refused(self._ct_reply(self._ct_err(4, "Account frozen")))
        if account.allowed_ips and request.remote not in account.allowed_ips:
            raise _Refused(self._ct_reply(self._ct_err(7, "IP Lockdown violation")))
        return account

    def _ct_credentials(self, params: Mapping[str, str]) -> ClickatellAccount:
        bad_login = _Refused(
            self._ct_reply(
                self._ct_err(1, "Authentication failed")
                if self.clickatell_login_error == 1
                else self._ct_err(2, "Unknown username or password")
            )
        )
        account = self._clickatell.get(params.get("user", ""))
        if account is None:
            raise bad_login
        api_id = params.get("api_id", "")
        if not api_id or not hmac.compare_digest(api_id, account.api_id):
            raise _Refused(
                self._ct_reply(self._ct_err(108, "Invalid or missing API ID"))
            )
        if not hmac.compare_digest(params.get("password", ""), account.password):
            raise bad_login
        return account

    async def _ct_auth(self, request: web.Request) -> web.Response:
        params = await self._ct_params(request)
        try:
            account = self._ct_login(request, params, session=False)
        except _Refused as refused:
            return refused.response
        session_id = secrets.token_hex(16)
        self._sessions[session_id] = _Session(
            account.user, self.now() + self.session_seconds
        )
        return self._ct_reply(f"OK: {session_id}")

    async def _ct_ping(self, request: web.Request) -> web.Response:
        params = await self._ct_params(request)
        session_id = params.get("session_id")
        if not session_id:
            return self._ct_reply(self._ct_err(5, "Missing session ID"))
        try:
            self._ct_session(session_id)
        except _Refused as refused:
            return refused.response
        return self._ct_reply(
            f"OK: {session_id}" if self.clickatell_ping_echo else "OK:"
        )

    async def _ct_getbalance(self, request: web.Request) -> web.Response:
        params = await self._ct_params(request)
        try:
            account = self._ct_login(request, params)
        except _Refused as refused:
            return refused.response
        places = self.clickatell_places
        value = (
            format(account.credits, "f")
            if places is None
            else f"{account.credits:.{places}f}"
        )
        space = " " if self.clickatell_trailing_space else ""
        return self._ct_reply(f"{self.clickatell_label}: {value}{space}")

    async def _ct_sendmsg(self, request: web.Request) -> web.Response:
        params = await self._ct_params(request)
        try:
            account = self._ct_login(request, params)
        except _Refused as refused:
            return refused.response
        to = params.get("to", "").strip()
        text = params.get("text")
        if not to or text is None:
            return self._ct_reply(self._ct_err(101, "Invalid or missing parameters"))
        if not text:
            return self._ct_reply(self._ct_err(107, "Empty message"))
        parts = sms_parts(text)
        concat = params.get("concat")
        if concat is not None:
            if not (concat.isascii() and concat.isdigit()):
                return self._ct_reply(
                    self._ct_err(101, "Invalid or missing parameters")
                )
            if parts > int(concat):
                return self._ct_reply(
                    self._ct_err(113, "Maximum message parts exceeded")
                )
        charge = account.credits_per_part * parts
        recipients = [n.strip() for n in to.split(",")]
        several = len(recipients) > 1
        lines = []
        async with self._lock:
            for number in recipients:
                suffix = f" To: {number}" if several else ""
                if not _MSISDN.fullmatch(number):
                    line = self._ct_err(105, "Invalid destination address")
                elif (
                    account.max_credits_per_message is not None
                    and charge > account.max_credits_per_message
                ):
                    line = self._ct_err(302, "Max allowed credit")
                elif account.credits < charge:
                    line = self._ct_err(301, "No credit left")
                else:
                    account.credits -= charge
                    message = SentMessage(
                        secrets.token_hex(16), number, text, parts, charge
                    )
                    account.messages.append(message)
                    line = f"ID: {message.id}"
                lines.append(line + suffix)
        return self._ct_reply("\n".join(lines))


_ROUTE_NAMES: Final = frozenset(r.value for r in Route)


def _route(route: Route | str) -> Route:
    try:
        return Route(route)
    except ValueError:
        names = ", ".join(sorted(_ROUTE_NAMES))
        msg = f"unknown route {route!r}; expected one of: {names}"
        raise ValueError(msg) from None


# --- running it ---------------------------------------------------------------


def _banner(emu: Emulator) -> str:
    lines = [f"guard provider emulator listening on {emu.url}"]
    for key, oneclick in emu._oneclickdz.items():
        lines.append(
            f"  OneClickDZ  X-Access-Token: {key}  balance: {oneclick.balance} DZD"
        )
    for user, account in emu._clickatell.items():
        lines.append(
            f"  Clickatell  user: {user}  password: {account.password}  "
            f"api_id: {account.api_id}  credits: {account.credits}"
        )
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


async def serve(
    emulator: Emulator | None = None,
    *,
    until: asyncio.Event | None = None,
    out: TextIO | None = None,
) -> None:
    """
    Run *emulator* (by default one with the demo accounts) until *until* is
    set, or forever; print its URL and accounts to *out* first.

    Args:
        emulator: The emulator to run; started and closed here.
        until: Stop when this event is set; `None` runs until cancelled.
        out: Where to print the banner; `sys.stdout` by default.
    """
    emu = emulator if emulator is not None else Emulator.with_demo_accounts()
    async with emu:
        print(_banner(emu), file=out or sys.stdout, flush=True)
        await (until or asyncio.Event()).wait()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Command line: run the emulator with the demo accounts until Ctrl+C.

    Args:
        argv: Arguments without the program name; `sys.argv` by default.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m guard emulator",
        description="Serve emulated OneClickDZ and Clickatell APIs with demo accounts.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument(
        "--port", type=int, default=0, help="default: a free port (printed)"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(Emulator.with_demo_accounts(host=args.host, port=args.port)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
