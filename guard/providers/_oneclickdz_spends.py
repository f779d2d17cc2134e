"""
What OneClickDZ spends cost: its catalogue (plans, internet products, gift
cards), read through the guard and kept, and the client-middleware rules
that price and guard its spend endpoints.

Wire details and sources: ``shared/providers.md``, sections 1.2 and 6.2.
"""

from __future__ import annotations

import decimal
import functools
import json
import re
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs

from guard._money import MONEY, bounded_balance
from guard.errors import (
    AmountError,
    ConfigurationError,
    ProviderResponseError,
)

from ._http import clean_text
from ._matching import AccountIndex, IndexedMatcher
from ._oneclickdz import (
    GIFT_ORDER_PATH,
    GIFT_PRODUCT_PATH,
    INTERNET_PRODUCTS_PATH,
    INTERNET_SEND_PATH,
    NAME,
    PLANS_PATH,
    SEND_PATH,
    TOKEN_HEADER,
    OneClickDZ,
    get_json,
)

if TYPE_CHECKING:
    import aiohttp

    from guard._aiohttp_client import SpendRequest, SpendRule
    from guard._guard import BalanceGuard, Settle

__all__ = [
    "GIFT_CARD_TTL",
    "INTERNET_TTL",
    "PLANS_TTL",
    "load_gift_card",
    "load_internet_products",
    "load_plans",
    "oneclickdz_rules",
    "reported_balance",
]

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


def _bad_catalogue(what: str) -> ProviderResponseError:
    return ProviderResponseError(f"unreadable {what}", provider=NAME, status=200)


async def load_plans(
    provider: OneClickDZ, session: aiohttp.ClientSession
) -> dict[str, _Plan]:
    """
    Read ``GET /v3/mobile/plans``: the plans by code.
    """
    data = await get_json(provider, session, PLANS_PATH)
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
    data = await get_json(provider, session, f"{INTERNET_PRODUCTS_PATH}?type={kind}")
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
        data = await get_json(provider, session, f"{GIFT_PRODUCT_PATH}/{product_id}")
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


def _find(
    accounts: AccountIndex[OneClickDZ], request: SpendRequest
) -> OneClickDZ | None:
    tokens = {str(t).strip() for t in request.headers.getall(TOKEN_HEADER, ())}
    if len(tokens) > 1:
        # SECURITY: which one the API reads is not ours to guess.
        msg = f"OneClickDZ send with several {TOKEN_HEADER} headers: refused"
        raise ValueError(msg)
    # The server trims the header value (HTTP optional whitespace); so do we.
    return accounts.find(request.url, tokens.pop()) if tokens else None


_account = IndexedMatcher(OneClickDZ, lambda p: (p.api_key,), _find)


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
