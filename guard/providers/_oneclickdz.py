"""
OneClickDZ (Flexy API v3): its paths and header, how its balance answers
read, the `OneClickDZ` provider, and the client-middleware rule for its
spend endpoint.

Wire details and sources: ``shared/providers.md``, section 1.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import re
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs

from guard._balance import Reported
from guard._money import MONEY, bounded_balance
from guard.errors import (
    AmountError,
    BalanceUnavailable,
    ConfigurationError,
    ProviderAuthError,
    ProviderResponseError,
)

from ._http import (
    Secret,
    account_digest,
    check_credential,
    check_timeout,
    checked_balance,
    clean_text,
    normalise_base_url,
    parse_retry_after,
    request,
    to_secret,
    under_base,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import aiohttp

    from guard._aiohttp_client import SpendRequest, SpendRule
    from guard._guard import BalanceGuard, Settle
    from guard.typing import Provider

__all__ = [
    "AUTH_CODES",
    "BALANCE_PATH",
    "DEFAULT_BASE_URL",
    "GIFT_CARD_TTL",
    "GIFT_ORDER_PATH",
    "GIFT_PRODUCT_PATH",
    "INTERNET_PRODUCTS_PATH",
    "INTERNET_SEND_PATH",
    "INTERNET_TTL",
    "IP_BLOCK_SECONDS",
    "NAME",
    "OTHER_CODES",
    "OneClickDZ",
    "PLANS_PATH",
    "PLANS_TTL",
    "SEND_PATH",
    "TOKEN_HEADER",
    "TRANSIENT_CODES",
    "VALIDATE_PATH",
    "load_gift_card",
    "load_internet_products",
    "load_plans",
    "oneclickdz_rules",
    "parse_balance",
    "parse_envelope",
    "reported_balance",
]

NAME: Final = "oneclickdz"
"""
The provider name, in cache keys, events and errors.
"""

DEFAULT_BASE_URL: Final = "https://api.oneclickdz.com"
BALANCE_PATH: Final = "/v3/account/balance"
SEND_PATH: Final = "/v3/mobile/send"
PLANS_PATH: Final = "/v3/mobile/plans"
INTERNET_SEND_PATH: Final = "/v3/internet/send"
INTERNET_PRODUCTS_PATH: Final = "/v3/internet/products"
GIFT_ORDER_PATH: Final = "/v3/gift-cards/placeOrder"
GIFT_PRODUCT_PATH: Final = "/v3/gift-cards/checkProduct"
VALIDATE_PATH: Final = "/v3/validate"
TOKEN_HEADER: Final = "X-Access-Token"  # noqa: S105 - a header name
"""
The header that carries the key (the docs stress: not ``Authorization``).
"""

AUTH_CODES: Final = frozenset(
    {
        "MISSING_ACCESS_TOKEN",
        "INVALID_ACCESS_TOKEN",
        "ERR_AUTH",
        "IP_BLOCKED",
        "IP_NOT_ALLOWED",
        "API_DISABLED",
    }
)
"""
Error codes that mean the key (or the caller's IP) is refused.
"""

TRANSIENT_CODES: Final = frozenset(
    {
        "RATE_LIMIT_EXCEEDED",
        "INTERNAL_SERVER_ERROR",
        "INTERNAL_ERROR",
        "SERVICE_UNAVAILABLE",
        # 503 when the API cannot reach its auth service: says nothing about
        # the key, so it must not stop guard from trying again.
        "AUTH_UNAVAILABLE",
    }
)
"""
Error codes worth retrying.
"""

OTHER_CODES: Final = frozenset(
    {
        "NO_BALANCE",
        "INSUFFICIENT_BALANCE",
        "DUPLICATED_REF",
        "ERR_VALIDATION",
        "NOT_FOUND",
    }
)
"""
Documented error codes that are neither auth nor transient. 403 carries some
of them too, so their code, not the status, decides: a low balance or a
reused ref must not start an auth cooldown.
"""

IP_BLOCK_SECONDS: Final = 900.0
"""
How long OneClickDZ blocks an IP after too many bad keys (documented: 15 min).
"""

_STATUS_TRANSIENT = frozenset({408, 425, 429})
_REQUEST_ID_LIMIT = 100
_STATUS_AUTH = frozenset({401, 403})


# --- Parsing ------------------------------------------------------------------

_NOT_JSON = object()


def _reject_constant(name: str) -> NoReturn:
    # JSON has no NaN/Infinity; Python's decoder accepts them unless told off.
    msg = f"non-standard JSON constant {name}"
    raise ValueError(msg)


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    # RecursionError: deeply nested arrays still fit in the body cap.
    except (ValueError, RecursionError):
        return _NOT_JSON


def _error_of(doc: object) -> tuple[str | None, str | None]:
    """
    Return the ``(code, message)`` of an error envelope, or of a bare router
    or proxy body; ``(None, None)`` when there is neither.
    """
    if not isinstance(doc, dict):
        return None, None
    error = doc.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) else None,
        )
    # Router misses answer {"message", "error": "Not Found", "statusCode"}.
    message = doc.get("message", error)
    return None, message if isinstance(message, str) else None


def _balance_of(data: object, meta: object, status: int, rid: str | None) -> Decimal:
    provider = NAME
    if not isinstance(data, dict) or "balance" not in data:
        raise ProviderResponseError(
            "success envelope without data.balance",
            provider=provider,
            status=status,
            request_id=rid,
        )
    balance = data["balance"]
    # bool is an int subclass, and "123" is not a JSON number.
    if isinstance(balance, bool) or not isinstance(balance, int | Decimal):
        raise ProviderResponseError(
            f"data.balance is a JSON {_json_type(balance)}, not a number",
            provider=provider,
            status=status,
            request_id=rid,
        )
    amount = checked_balance(Decimal(balance), provider, status)
    reported_at = _timestamp(meta)
    return amount if reported_at is None else Reported(amount, reported_at)


def _timestamp(meta: object) -> dt.datetime | None:
    # ``meta.timestamp`` is optional, and only recorded: never fail on it.
    stamp = meta.get("timestamp") if isinstance(meta, dict) else None
    if not isinstance(stamp, str):
        return None
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _request_id(doc: object, redact: Iterable[Secret]) -> str | None:
    # Top level, as the error envelope documents it.
    value = doc.get("requestId") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        return None
    return clean_text(value, redact)[:_REQUEST_ID_LIMIT] or None


def parse_envelope(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[Secret] = (),
    now: dt.datetime | None = None,
) -> tuple[Any, str | None, object]:
    """
    Read any OneClickDZ answer: the ``data`` of a success envelope (an
    object, or a list as one guide shows for products), the ``requestId``
    and the ``meta``, or the error it carries.

    The error code decides first (403 means many things on this API); bodies
    without one (router misses, proxy HTML pages) are classified by status.

    Raises:
        ProviderAuthError: The key or the caller's IP was refused.
        ProviderResponseError: An error code that is neither auth nor
            transient, or an unreadable answer.
        BalanceUnavailable: A transient failure (429, 5xx...).
    """
    provider = NAME
    doc = _load_json(body)
    code, message = _error_of(doc)
    wait = parse_retry_after(retry_after, now=now)
    text = clean_text(message or "", redact) or None
    rid = _request_id(doc, redact)

    if code in AUTH_CODES:
        if code == "IP_BLOCKED" and wait is None:
            wait = IP_BLOCK_SECONDS
        raise ProviderAuthError(
            f"{text or 'key refused'} (HTTP {status})",
            provider=provider,
            code=code,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    if code in TRANSIENT_CODES:
        raise BalanceUnavailable(
            f"{code}: {text or 'try again later'} (HTTP {status})",
            provider=provider,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    if code in OTHER_CODES:
        raise ProviderResponseError(
            f"{code}: {text or 'unexpected answer'} (HTTP {status})",
            provider=provider,
            code=code,
            status=status,
            request_id=rid,
        )
    if status == 200 and code is None:
        if doc is _NOT_JSON:
            raise ProviderResponseError(
                "body is not valid JSON", provider=provider, status=status
            )
        if not isinstance(doc, dict) or doc.get("success") is not True:
            raise ProviderResponseError(
                "not a success envelope",
                provider=provider,
                status=status,
                request_id=rid,
            )
        data = doc.get("data")
        if not isinstance(data, dict | list):
            raise ProviderResponseError(
                "success envelope without data",
                provider=provider,
                status=status,
                request_id=rid,
            )
        return data, rid, doc.get("meta")

    if code is not None:
        # SECURITY: an unknown code is provider text too; it may echo a key.
        code = clean_text(code, redact)
    detail = f"{code}: " if code else ""
    reason = f"{detail}{text or 'unexpected answer'} (HTTP {status})"
    if status >= 500 or status in _STATUS_TRANSIENT:
        raise BalanceUnavailable(
            reason, provider=provider, status=status, retry_after=wait, request_id=rid
        )
    if status in _STATUS_AUTH:
        raise ProviderAuthError(
            reason,
            provider=provider,
            code=code,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    raise ProviderResponseError(
        reason, provider=provider, code=code, status=status, request_id=rid
    )


def parse_balance(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[Secret] = (),
    now: dt.datetime | None = None,
) -> Decimal:
    """
    Read the answer to OneClickDZ ``GET /v3/account/balance``.

    Args:
        status: The HTTP status.
        body: The body, possibly cut short by the caller's size cap.
        retry_after: The ``Retry-After`` header, if any.
        redact: Secrets to mask should the provider echo them.
        now: The current time, for an HTTP-date ``Retry-After``.

    Returns:
        The exact balance in DZD.

    Raises:
        ProviderAuthError: The key or the caller's IP was refused.
        ProviderResponseError: An answer that holds no readable balance.
        BalanceUnavailable: A transient failure (429, 5xx...).
    """
    data, rid, meta = parse_envelope(
        status, body, retry_after=retry_after, redact=redact, now=now
    )
    return _balance_of(data, meta, status, rid)


# --- The provider -------------------------------------------------------------


@attrs.define(frozen=True)
class OneClickDZ:
    """
    A OneClickDZ (Flexy API v3) account, billed in Algerian dinars.

    Args:
        api_key: The ``X-Access-Token`` key (sandbox or production), a str
            or a `Secret`; kept as a `Secret` (``api_key.reveal()`` gives it
            back), never shown in a repr or message.
        base_url: Where the API lives; point it at the emulator in tests.
        timeout: Seconds one balance request may take in total.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: *api_key* is empty or malformed, *base_url* is not an
            http(s) URL, or *timeout* is not positive.
    """

    api_key: Secret = attrs.field(
        repr=False, converter=to_secret, validator=check_credential
    )
    base_url: str = attrs.field(
        default=DEFAULT_BASE_URL,
        kw_only=True,
        converter=normalise_base_url,
    )
    timeout: float = attrs.field(default=10.0, kw_only=True, validator=check_timeout)

    @property
    def name(self) -> str:
        """
        ``"oneclickdz"``.
        """
        return NAME

    @property
    def currency(self) -> str:
        """
        ``"DZD"``.
        """
        return "DZD"

    @property
    def account_id(self) -> str:
        """
        24 hex characters identifying the key at *base_url*; not reversible.
        """
        return account_digest(NAME, self.base_url, self.api_key)

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        """
        Ask ``GET /v3/account/balance`` for the balance, once.

        Args:
            session: The session to send the request with.

        Returns:
            The balance in DZD, exactly as the provider wrote it.

        Raises:
            guard.ProviderAuthError: The key or the caller's IP was refused.
            guard.ProviderResponseError: The answer holds no readable balance.
            guard.BalanceUnavailable: Network trouble, timeout, 429 or 5xx.
        """
        redact = (self.api_key,)
        status, body, retry_after = await request(
            NAME,
            session,
            "GET",
            f"{self.base_url}{BALANCE_PATH}",
            limit=self.timeout,
            redact=redact,
            headers={TOKEN_HEADER: self.api_key, "Accept": "application/json"},
        )
        return parse_balance(status, body, retry_after=retry_after, redact=redact)

    async def key_type(self, session: aiohttp.ClientSession) -> str:
        """
        Ask ``GET /v3/validate`` whether the key is a ``"SANDBOX"`` key (its
        sends never move money) or a ``"PRODUCTION"`` one.

        Raises:
            guard.ProviderAuthError: The key or the caller's IP was refused.
            guard.ProviderResponseError: The answer does not say.
            guard.BalanceUnavailable: Network trouble, timeout, 429 or 5xx.

        .. versionadded:: 0.2
        """
        data = await _get(self, session, VALIDATE_PATH)
        key = data.get("apiKey") if isinstance(data, dict) else None
        kind = key.get("type") if isinstance(key, dict) else None
        if kind not in ("SANDBOX", "PRODUCTION"):
            raise ProviderResponseError(
                "data.apiKey.type is not SANDBOX or PRODUCTION",
                provider=NAME,
                status=200,
            )
        return str(kind)


# --- Catalogues -----------------------------------------------------------------

PLANS_TTL: Final = 6 * 3600.0
"""
Seconds guard keeps the mobile plans ("stable and rarely change").
"""

INTERNET_TTL: Final = 300.0
"""
Seconds guard keeps an internet product list (the docs: 5 to 10 minutes).
"""

GIFT_CARD_TTL: Final = 30.0
"""
Seconds guard keeps a gift card's prices ("personalized to your account").
"""

_CENT = Decimal("0.01")
# MONEY traps rounding (a bug must not admit a call); rounding a price up to
# the cent is meant, and errs on the held side.
_TO_CENT = MONEY.copy()
_TO_CENT.traps[decimal.Inexact] = False
_TO_CENT.traps[decimal.Rounded] = False
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]{1,128}", re.ASCII)


@attrs.frozen
class _Plan:
    code: str
    cost: Decimal
    enabled: bool
    amount: Decimal | None  # fixed plans
    low: Decimal | None  # dynamic plans
    high: Decimal | None


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    number = Decimal(value)
    return number if number.is_finite() and number >= 0 else None


def _price(value: Decimal) -> Decimal:
    # The provider debits to the cent; never hold less than it could.
    return value.quantize(_CENT, rounding=ROUND_CEILING, context=_TO_CENT)


async def _get(provider: OneClickDZ, session: aiohttp.ClientSession, path: str) -> Any:
    redact = (provider.api_key,)
    status, body, retry_after = await request(
        NAME,
        session,
        "GET",
        f"{provider.base_url}{path}",
        limit=provider.timeout,
        redact=redact,
        headers={TOKEN_HEADER: provider.api_key, "Accept": "application/json"},
    )
    data, _, _ = parse_envelope(status, body, retry_after=retry_after, redact=redact)
    return data


def _bad_catalogue(what: str) -> ProviderResponseError:
    return ProviderResponseError(f"unreadable {what}", provider=NAME, status=200)


async def load_plans(
    provider: OneClickDZ, session: aiohttp.ClientSession
) -> dict[str, _Plan]:
    """
    Read ``GET /v3/mobile/plans``: the plans by code.
    """
    data = await _get(provider, session, PLANS_PATH)
    if not isinstance(data, dict):
        raise _bad_catalogue("mobile plans")
    plans: dict[str, _Plan] = {}
    for group, fixed in (("fixedPlans", True), ("dynamicPlans", False)):
        items = data.get(group, [])
        if not isinstance(items, list):
            raise _bad_catalogue("mobile plans")
        for item in items:
            code = item.get("code") if isinstance(item, dict) else None
            cost = _number(item.get("cost")) if isinstance(item, dict) else None
            if not isinstance(code, str) or cost is None:
                raise _bad_catalogue("mobile plans")
            assert isinstance(item, dict)
            amount = _number(item.get("amount"))
            if fixed and amount is None:
                raise _bad_catalogue(f"mobile plan {code!r}")
            plans[code] = _Plan(
                code,
                cost,
                item.get("isEnabled", True) is not False,
                amount if fixed else None,
                None if fixed else _number(item.get("min_amount")),
                None if fixed else _number(item.get("max_amount")),
            )
    return plans


async def load_internet_products(
    provider: OneClickDZ, session: aiohttp.ClientSession, kind: str
) -> dict[Decimal, tuple[Decimal, bool]]:
    """
    Read ``GET /v3/internet/products?type=``: ``value -> (cost, available)``.
    """
    data = await _get(provider, session, f"{INTERNET_PRODUCTS_PATH}?type={kind}")
    # The EN docs nest the list under "products"; the AR guide sends it bare.
    items = data.get("products") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise _bad_catalogue(f"{kind} products")
    products: dict[Decimal, tuple[Decimal, bool]] = {}
    for item in items:
        value = _number(item.get("value")) if isinstance(item, dict) else None
        cost = _number(item.get("cost")) if isinstance(item, dict) else None
        if value is None or cost is None:
            raise _bad_catalogue(f"{kind} products")
        assert isinstance(item, dict)
        products[value] = (cost, item.get("available", True) is not False)
    return products


async def load_gift_card(
    provider: OneClickDZ, session: aiohttp.ClientSession, product_id: str
) -> dict[str, tuple[Decimal, int | None]] | None:
    """
    Read ``GET /v3/gift-cards/checkProduct/{productId}``: ``type id ->
    (price, quantity in stock)``; None for an unknown product.
    """
    try:
        data = await _get(provider, session, f"{GIFT_PRODUCT_PATH}/{product_id}")
    except ProviderResponseError as exc:
        if exc.code == "NOT_FOUND" or exc.status == 404:
            return None
        raise
    types = data.get("types") if isinstance(data, dict) else None
    if not isinstance(types, list):
        raise _bad_catalogue("gift card")
    prices: dict[str, tuple[Decimal, int | None]] = {}
    for item in types:
        type_id = item.get("id") if isinstance(item, dict) else None
        price = _number(item.get("price")) if isinstance(item, dict) else None
        if not isinstance(type_id, str | int) or price is None:
            raise _bad_catalogue("gift card")
        assert isinstance(item, dict)
        stock = item.get("quantity")
        prices[str(type_id)] = (
            price,
            stock if isinstance(stock, int) and not isinstance(stock, bool) else None,
        )
    return prices


# --- The client-middleware rules ------------------------------------------------


def _account(request: SpendRequest, providers: Sequence[Provider]) -> Provider | None:
    tokens = {str(t).strip() for t in request.headers.getall(TOKEN_HEADER, ())}
    if len(tokens) > 1:
        # SECURITY: which one the API reads is not ours to guess.
        msg = f"OneClickDZ send with several {TOKEN_HEADER} headers: refused"
        raise ValueError(msg)
    # The server trims the header value (HTTP optional whitespace); so do we.
    token = tokens.pop() if tokens else None
    for provider in providers:
        if (
            isinstance(provider, OneClickDZ)
            and under_base(request.url, provider.base_url)
            and provider.api_key.matches(token)
        ):
            return provider
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        # Parsers disagree on which duplicate wins; guard won't guess.
        msg = "duplicate keys"
        raise ValueError(msg)
    return doc


def _body(request: SpendRequest, what: str) -> dict[str, Any]:
    if request.body is None:
        raise ValueError(
            f"OneClickDZ {what}: the body is streamed, so guard cannot read "
            "what it spends; send it with json="
        )
    try:
        # The API reads JSON whatever the Content-Type says; so does guard.
        doc = json.loads(
            request.body, parse_float=Decimal, object_pairs_hook=_unique_keys
        )
    except (ValueError, RecursionError):
        raise ValueError(
            f"OneClickDZ {what}: the body is not JSON with unique keys, so "
            "guard cannot read what it spends"
        ) from None
    if not isinstance(doc, dict):
        raise ValueError(f"OneClickDZ {what}: the body is not a JSON object")
    return doc


def _context(request: SpendRequest) -> tuple[OneClickDZ, BalanceGuard]:
    provider, guard = request.provider, request.guard
    if not isinstance(provider, OneClickDZ) or guard is None:
        raise ConfigurationError(
            "OneClickDZ priced rules need the account and guard the client "
            "middleware gives them"
        )
    return provider, guard


def _refuse(message: str) -> NoReturn:
    raise AmountError(f"{message}; refused, not sent")


async def _mobile_price(request: SpendRequest) -> Decimal:
    doc = _body(request, "mobile send")
    code = doc.get("plan_code")
    if not isinstance(code, str) or not code:
        _refuse("OneClickDZ mobile send without a plan_code")
    given = doc.get("amount")
    if given is not None and _number(given) is None:
        _refuse(f"OneClickDZ mobile send: amount must be a number, not {given!r}")
    provider, guard = _context(request)
    plans = await guard.catalogue(
        provider, "mobile plans", functools.partial(load_plans, provider), ttl=PLANS_TTL
    )
    plan = plans.get(code)
    if plan is None or not plan.enabled:
        state = "unknown" if plan is None else "disabled"
        _refuse(f"OneClickDZ mobile send: {state} plan_code {clean_text(code)!r}")
    amount = _number(given) if given is not None else None
    if plan.amount is not None:
        if amount is not None and amount != plan.amount:
            _refuse(
                f"OneClickDZ mobile send: plan {plan.code} tops up {plan.amount} "
                f"DZD, not {amount}"
            )
        face = plan.amount
    else:
        if amount is None:
            _refuse(f"OneClickDZ mobile send: dynamic plan {plan.code} needs an amount")
        if (plan.low is not None and amount < plan.low) or (
            plan.high is not None and amount > plan.high
        ):
            _refuse(
                f"OneClickDZ mobile send: {amount} DZD is outside plan "
                f"{plan.code}'s {plan.low} to {plan.high} DZD"
            )
        face = amount
    return _price(MONEY.multiply(face, plan.cost))


async def _internet_price(request: SpendRequest) -> Decimal:
    doc = _body(request, "internet send")
    kind = doc.get("type")
    if kind not in ("ADSL", "4G"):
        _refuse(f"OneClickDZ internet send: type must be ADSL or 4G, not {kind!r}")
    value = _number(doc.get("value"))
    if value is None:
        _refuse("OneClickDZ internet send without a numeric value")
    provider, guard = _context(request)
    products = await guard.catalogue(
        provider,
        f"{kind} products",
        functools.partial(load_internet_products, provider, kind=kind),
        ttl=INTERNET_TTL,
    )
    product = products.get(value)
    if product is None:
        _refuse(f"OneClickDZ internet send: no {kind} card of value {value}")
    cost, available = product
    if not available:
        _refuse(f"OneClickDZ internet send: the {kind} {value} card is out of stock")
    return _price(cost)


async def _gift_card_price(request: SpendRequest) -> Decimal:
    doc = _body(request, "gift-card order")
    product_id, type_id = doc.get("productId"), doc.get("typeId")
    quantity = doc.get("quantity", 1)
    if (
        not isinstance(product_id, str)
        # SECURITY: it goes in a URL path; no traversal, no other route.
        or not _PATH_SEGMENT.fullmatch(product_id)
        or product_id in (".", "..")
    ):
        _refuse(f"OneClickDZ gift-card order: invalid productId {product_id!r}")
    if not isinstance(type_id, str | int) or isinstance(type_id, bool):
        _refuse(f"OneClickDZ gift-card order: invalid typeId {type_id!r}")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        _refuse(
            f"OneClickDZ gift-card order: quantity must be 1 or more, not {quantity!r}"
        )
    provider, guard = _context(request)
    prices = await guard.catalogue(
        provider,
        f"gift card {product_id}",
        functools.partial(load_gift_card, provider, product_id=product_id),
        ttl=GIFT_CARD_TTL,
    )
    if prices is None:
        _refuse(f"OneClickDZ gift-card order: unknown productId {product_id!r}")
    found = prices.get(str(type_id))
    if found is None:
        _refuse(
            f"OneClickDZ gift-card order: unknown typeId {type_id!r} for "
            f"product {product_id!r}"
        )
    price, stock = found
    if stock is not None and quantity > stock:
        _refuse(f"OneClickDZ gift-card order: {quantity} cards asked, {stock} in stock")
    return _price(MONEY.multiply(price, Decimal(quantity)))


async def reported_balance(response: aiohttp.ClientResponse) -> Decimal | None:
    """
    The ``data.newBalance`` of a successful send's reply, if it has one.
    """
    try:
        doc = json.loads(await response.read(), parse_float=Decimal)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or doc.get("success") is not True:
        return None
    value = _number(data.get("newBalance"))
    return None if value is None else bounded_balance(value)


def oneclickdz_rules(*, settle: Settle | None = None) -> tuple[SpendRule, ...]:
    """
    The rules for OneClickDZ's spend endpoints, on the `OneClickDZ` whose
    *base_url* and ``X-Access-Token`` the request uses, each priced as the
    provider debits it, from its own catalogue (kept by the guard):

    - ``POST /v3/mobile/send``: the plan's ``amount`` (fixed plans) or the
      request's (dynamic plans, within the plan's ``min_amount`` and
      ``max_amount``) times its ``cost``, from ``/v3/mobile/plans`` (kept
      6 hours);
    - ``POST /v3/internet/send``: the ``cost`` of the requested ``value``
      from ``/v3/internet/products?type=`` (kept 5 minutes);
    - ``POST /v3/gift-cards/placeOrder``: ``price x quantity`` from
      ``/v3/gift-cards/checkProduct/{productId}`` (kept 30 seconds).

    An unknown or disabled plan, product or card type, or an amount out of
    the plan's range, is refused before sending with `guard.AmountError`
    naming it. A catalogue that cannot be read follows the guard's
    *on_unavailable*. When the reply carries ``data.newBalance``, that is
    the balance the guard keeps.
    """
    # Imported here: the middleware module imports this one for its defaults.
    from guard._aiohttp_client import SpendRule

    return tuple(
        SpendRule(
            "POST", path, _account, price, settle=settle, reported=reported_balance
        )
        for path, price in (
            (SEND_PATH, _mobile_price),
            (INTERNET_SEND_PATH, _internet_price),
            (GIFT_ORDER_PATH, _gift_card_price),
        )
    )
