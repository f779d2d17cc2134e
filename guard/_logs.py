"""
The structured part of guard's log records.

Every record guard logs carries ``extra`` fields, so that a JSON or
structlog formatter gets data rather than prose: ``guard_event`` (what
happened), ``provider`` and ``account`` (the non-secret account digest, ""
when the record is not about one account), and whatever else the event has,
amounts as decimal strings. guard configures no logging: handlers, levels
and formats are the application's.
"""

from __future__ import annotations

import logging
from decimal import Decimal

__all__ = ["digest", "fields", "log"]

log = logging.getLogger("guard")
"""The one logger guard writes to."""


def fields(
    event: str, *, provider: str, account: str, **values: object
) -> dict[str, object]:
    """
    The ``extra=`` of one record: *event* as ``guard_event``, *provider*,
    *account*, and *values* (a Decimal as its decimal string, None left
    out).
    """
    extra: dict[str, object] = {
        "guard_event": event,
        "provider": provider,
        "account": account,
    }
    for key, value in values.items():
        if value is not None:
            extra[key] = str(value) if isinstance(value, Decimal) else value
    return extra


def digest(key: str) -> str:
    """The account digest: the last part of a store key."""
    return key.rpartition(":")[2]
