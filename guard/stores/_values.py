"""
The values a `guard.typing.Store` takes and returns.
"""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - attrs resolves the annotations
from decimal import Decimal  # noqa: TC003
from typing import Literal, TypeAlias

import attrs

__all__ = ["Account", "Entry", "Hold", "Outcome", "Short", "Ticket"]

Outcome: TypeAlias = Literal["debit", "spent", "forget"]
"""
How `guard.typing.Store.release` settles the balance as it drops a hold:

- ``"debit"``: the call succeeded; take its amount off the balance it was
  checked against if that is still the cached one, else forget the balance
  (one fetched while the call ran may or may not include the spend).
- ``"spent"``: take the amount off whatever balance is cached, and mark it
  inexact (``exact=False``); keep it (it errs low).
- ``"forget"``: forget the balance; the next check fetches it.
"""


@attrs.frozen
class Account:
    """
    One provider account, as a store keeps it.

    Attributes:
        key: Unique per account and guard namespace, and never a secret:
            ``"<namespace>:<provider>:<hash of the account identity>"``.
            Stores name their keys after it.
        provider: The provider's name, for messages.
        currency: The unit of its balance.
    """

    key: str
    provider: str
    currency: str


@attrs.frozen
class Entry:
    """
    A cached balance.

    Attributes:
        amount: The balance, less what calls that settled while it was
            fetched may have spent (then *exact* is false).
        fetch_id: Tells one fetch's entry from the next, across processes.
        fetched_at: When the provider reported it (UTC).
        monotonic: The same instant on this process's ``time.monotonic()``
            clock, for ages.
        exact: False when *amount* was lowered for calls that settled while
            it was fetched: it may count their spending twice, so a call it
            refuses deserves one more look.
    """

    amount: Decimal
    fetch_id: str
    fetched_at: dt.datetime
    monotonic: float
    exact: bool = True


@attrs.frozen
class Hold:
    """
    An amount a store set aside for one running call.

    Attributes:
        account: Whose balance it is held on.
        amount: What is held.
        entry: The balance it was checked against; None when the store
            lost it between the hold and the reply.
        token: Identifies the hold in a shared store; empty in a local one.
    """

    account: Account
    amount: Decimal
    entry: Entry | None
    token: str = ""


@attrs.frozen
class Short:
    """
    A cached balance that does not cover the amount asked for.

    Attributes:
        entry: The balance.
        available: It, less what running calls hold.
    """

    entry: Entry
    available: Decimal


@attrs.frozen
class Ticket:
    """
    Leave to fetch an account's balance, from `Store.begin_fetch`.

    Attributes:
        token: Identifies the fetch (a shared store's lock token).
        generation: What the store needs to tell, in `Store.put`, whether
            the balance was invalidated or spent from since; opaque to
            the engine.
    """

    token: str
    generation: str
