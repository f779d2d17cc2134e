"""
The emulated OneClickDZ's records: accounts, its catalogue (plans, internet
products, gift cards), top-ups and the ledger.
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - attrs resolves the annotations
from decimal import Decimal
from typing import Final, Literal, TypeAlias

import attrs

from ._common import iso

KeyType: TypeAlias = Literal["PRODUCTION", "SANDBOX"]


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
            "time": iso(self.time),
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
    # Priced below face value, as the provider's own examples are.
    Plan(
        "FLEXY_DJEZZY",
        "Djezzy flexy",
        "djezzy",
        cost=Decimal("0.9925"),
        min_amount=Decimal(40),
        max_amount=Decimal(3000),
    ),
    Plan(
        "FLEXY_MOBILIS",
        "Mobilis flexy",
        "mobilis",
        cost=Decimal("0.96"),
        min_amount=Decimal(100),
        max_amount=Decimal(2000),
    ),
    Plan(
        "PIXX_500",
        "Mobilis Pixx 500",
        "mobilis",
        cost=Decimal("0.97"),
        amount=Decimal(500),
    ),
    Plan(
        "YOOZ_1000",
        "Ooredoo Yooz 1000",
        "ooredoo",
        cost=Decimal("0.98"),
        amount=Decimal(1000),
    ),
    Plan(
        "SAMA_333",
        "Djezzy Sama 333",
        "djezzy",
        cost=Decimal("0.9925"),
        amount=Decimal(333),
    ),
)
"""
The plans an `Emulator` offers by default: ``PREPAID_DJEZZY``,
``PREPAID_MOBILIS`` and ``PREPAID_OOREDOO`` (50 to 5000 DZD) and the fixed
``DJEZZY_HADAYA_1000``, charged at face value; the dynamic ``FLEXY_DJEZZY``
(cost 0.9925, 40 to 3000 DZD) and ``FLEXY_MOBILIS`` (0.96, 100 to 2000) and
the fixed ``PIXX_500`` (0.97), ``YOOZ_1000`` (0.98) and ``SAMA_333``
(0.9925), charged below it.
"""


@attrs.define(frozen=True)
class InternetProduct:
    """
    A OneClickDZ internet card: *value* is its denomination, *cost* what
    the account is charged for it, in DZD.
    """

    type: Literal["ADSL", "4G"]
    value: Decimal
    cost: Decimal
    available: bool = True

    def to_json(self) -> dict[str, object]:
        """
        The API's JSON shape of this product.
        """
        return {"value": self.value, "cost": self.cost, "available": self.available}


DEFAULT_INTERNET_PRODUCTS: Final = (
    InternetProduct("ADSL", Decimal(500), Decimal(490)),
    InternetProduct("ADSL", Decimal(1000), Decimal("979.50")),
    InternetProduct("ADSL", Decimal(2000), Decimal(1955)),
    InternetProduct("4G", Decimal(500), Decimal("487.25")),
    InternetProduct("4G", Decimal(1500), Decimal(1461)),
    InternetProduct("4G", Decimal(3000), Decimal(2925), available=False),
)
"""
The internet cards an `Emulator` sells by default (``4G`` 3000 is out of
stock).
"""


@attrs.define(frozen=True)
class GiftCardType:
    """
    One denomination of a gift card: its *price* per card in DZD, and how
    many are in stock.
    """

    id: str
    name: str
    price: Decimal
    quantity: int = 1000

    def to_json(self) -> dict[str, object]:
        """
        The API's JSON shape of this type.
        """
        return {
            "id": self.id,
            "name": self.name,
            "price": self.price,
            "quantity": self.quantity,
        }


@attrs.define(frozen=True)
class GiftCard:
    """
    A gift-card product and its denominations.
    """

    product_id: str
    title: str
    types: tuple[GiftCardType, ...]


DEFAULT_GIFT_CARDS: Final = (
    GiftCard(
        "pubg-mobile",
        "PUBG Mobile UC",
        (
            GiftCardType("uc-60", "60 UC", Decimal("185.40")),
            GiftCardType("uc-325", "325 UC", Decimal("912.75")),
        ),
    ),
    GiftCard(
        "google-play",
        "Google Play",
        (
            GiftCardType("gp-5", "5 USD", Decimal("1250.00")),
            GiftCardType("gp-10", "10 USD", Decimal("2490.99"), quantity=3),
        ),
    ),
)
"""
The gift cards an `Emulator` sells by default.
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
            "created_at": iso(self.created_at),
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
