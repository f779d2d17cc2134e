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
    "refused",
    "unavailable",
    "failed_open",
    "auth_cooldown",
]


@attrs.define(frozen=True)
class GuardEvent:
    """
    Something a `BalanceGuard` decided or learned, passed to its hooks.

    Attributes:
        kind: ``"fetched"`` (a balance came from the provider),
            ``"refused"`` (`InsufficientBalance` raised), ``"unavailable"``
            (the balance could not be learned), ``"failed_open"`` (same, but
            the call went ahead under ``on_unavailable="open"``),
            ``"auth_cooldown"`` (credentials refused; the account is not
            asked again until the cooldown ends).
        provider: The provider's name.
        account_id: The provider's non-secret account identity.
        amount: The balance for ``"fetched"``, the required amount otherwise.
        available: What was available, for ``"refused"``.
        error: The error behind ``"unavailable"``, ``"failed_open"`` and
            ``"auth_cooldown"``.
    """

    kind: EventKind
    provider: str
    account_id: str
    amount: Decimal | None = None
    available: Decimal | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)
