from __future__ import annotations

import datetime as dt
from decimal import Decimal

import attrs

__all__ = ["Balance", "Reported", "new_balance"]


@attrs.define(frozen=True)
class Balance:
    """
    A provider balance as guard last learned it.

    Attributes:
        provider: The provider's name, such as ``"oneclickdz"``.
        amount: The balance, exact.
        currency: ``"DZD"`` for OneClickDZ, ``"credits"`` for Clickatell.
        fetched_at: When the provider reported it (UTC).
        sandbox: True when it was read with a sandbox key (a OneClickDZ
            SANDBOX key, whose sends never move money), as the provider's
            ``key_type`` said.

    .. versionchanged:: 0.2 *sandbox*.
    """

    provider: str
    amount: Decimal = attrs.field(validator=attrs.validators.instance_of(Decimal))
    currency: str
    fetched_at: dt.datetime
    sandbox: bool = attrs.field(default=False, kw_only=True)

    @property
    def age(self) -> float:
        """
        Seconds since the provider reported this balance.
        """
        return (dt.datetime.now(dt.UTC) - self.fetched_at).total_seconds()


_SLOTS = tuple(
    Balance.__dict__[name].__set__
    for name in ("provider", "amount", "currency", "fetched_at", "sandbox")
)


def new_balance(
    provider: str,
    amount: Decimal,
    currency: str,
    fetched_at: dt.datetime,
    sandbox: bool,
) -> Balance:
    """
    A `Balance` of checked values, made on the guarded call's path: set
    through its slots, at a third of the cost of its ``__init__``.
    """
    balance: Balance = object.__new__(Balance)
    set_provider, set_amount, set_currency, set_fetched_at, set_sandbox = _SLOTS
    set_provider(balance, provider)
    set_amount(balance, amount)
    set_currency(balance, currency)
    set_fetched_at(balance, fetched_at)
    set_sandbox(balance, sandbox)
    return balance


class Reported(Decimal):
    """
    A balance as a provider's ``fetch_balance`` may return it: a `Decimal`
    that also carries when the provider says it read it, for the balance
    history (OneClickDZ ``meta.timestamp``).
    """

    __slots__ = ("reported_at",)

    reported_at: dt.datetime

    def __new__(cls, value: Decimal, reported_at: dt.datetime) -> Reported:
        self = super().__new__(cls, value)
        self.reported_at = reported_at
        return self
