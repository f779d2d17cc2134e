"""
The emulated routes' names: what `Emulator.fail` and `Emulator.count` take,
and the aiohttp resource names of ``emu.app``.
"""

from __future__ import annotations

import enum
from typing import Final


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
    ONECLICKDZ_INTERNET_PRODUCTS = "oneclickdz.internet_products"
    """``GET /v3/internet/products?type=``"""
    ONECLICKDZ_INTERNET_SEND = "oneclickdz.internet_send"
    """``POST /v3/internet/send`` (spends)"""
    ONECLICKDZ_GIFT_CARD_PRODUCT = "oneclickdz.gift_card_product"
    """``GET /v3/gift-cards/checkProduct/{productId}``"""
    ONECLICKDZ_GIFT_CARD_ORDER = "oneclickdz.gift_card_order"
    """``POST /v3/gift-cards/placeOrder`` (spends)"""
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
    CLICKATELL_PLATFORM_BALANCE = "clickatell_platform.balance"
    """``GET /public-client/balance``"""
    CLICKATELL_PLATFORM_MESSAGES = "clickatell_platform.messages"
    """``POST /messages`` (spends)"""


ROUTE_NAMES: Final = frozenset(r.value for r in Route)


def to_route(route: Route | str) -> Route:
    try:
        return Route(route)
    except ValueError:
        names = ", ".join(sorted(ROUTE_NAMES))
        msg = f"unknown route {route!r}; expected one of: {names}"
        raise ValueError(msg) from None
