from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = ["EventKind", "GuardEvent"]

log = logging.getLogger("guard")

EventKind: TypeAlias = Literal[
    "fetched",
    "settled",
    "refused",
    "unavailable",
    "failed_open",
    "auth_cooldown",
    "degraded",
]


@attrs.define(frozen=True)
class GuardEvent:
    """
    Something a `BalanceGuard` decided or learned, passed to its hooks.

    Attributes:
        kind: ``"fetched"`` (a balance came from the provider),
            ``"settled"`` (a guarded call ended: *ok* says whether it
            spent), ``"refused"`` (`InsufficientBalance` raised), ``"unavailable"``
            (the balance could not be learned), ``"failed_open"`` (same, but
            the call went ahead under ``on_unavailable="open"``),
            ``"auth_cooldown"`` (credentials refused; the account is not
            asked again until the cooldown ends), ``"degraded"`` (the shared
            store is unreachable: this process checks and holds on its own;
            once per outage).
        provider: The provider's name.
        account_id: The provider's non-secret account identity.
        account: The non-secret account digest (as in cache keys).
        currency: The unit of the amounts.
        amount: The balance for ``"fetched"``, the call's amount otherwise.
        available: What was available, for ``"refused"``.
        ok: For ``"settled"``: whether the call succeeded (its amount counts
            as spent).
        error: The error behind ``"unavailable"``, ``"failed_open"``,
            ``"auth_cooldown"`` and ``"degraded"``.
    """

    kind: EventKind
    provider: str
    account_id: str
    account: str = ""
    currency: str = ""
    amount: Decimal | None = None
    available: Decimal | None = None
    ok: bool | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)
