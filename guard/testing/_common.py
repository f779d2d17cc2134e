"""
What every part of the emulator shares: exact JSON, the APIs' timestamps and
ids, checked amounts, the emulator clock, and how a route refuses.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final, TypeAlias

import attrs

if TYPE_CHECKING:
    from aiohttp import web

AmountInput: TypeAlias = int | str | Decimal | float

JSON_TYPE: Final = "application/json"
TEXT_TYPE: Final = "text/plain"


def to_decimal(value: object, name: str) -> Decimal:
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


class RawJSON(str):
    """
    JSON text `dumps` writes as it is: a part serialized once and reused.
    """

    __slots__ = ()


def dumps(value: object) -> str:
    """
    Serialize *value* to JSON, writing `Decimal` as an exact JSON number.
    """
    if isinstance(value, RawJSON):
        return str(value)
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
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"JSON object keys must be str, not {type(key).__name__}"
                raise TypeError(msg)
            items.append(f"{json.dumps(key)}:{dumps(item)}")
        return "{" + ",".join(items) + "}"
    msg = f"{type(value).__name__} is not JSON serializable"
    raise TypeError(msg)


def iso(when: dt.datetime) -> str:
    # The API's own form: milliseconds and a Z.
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_id() -> str:
    # Shaped like the API's MongoDB ObjectIds.
    return secrets.token_hex(12)


def request_id() -> str:
    return f"req_{secrets.token_hex(8)}"


@attrs.define(eq=False)
class Clock:
    """
    The emulator clock: monotonic *source* seconds plus what tests advanced.
    """

    source: Callable[[], float]
    offset: float = 0.0

    def now(self) -> float:
        return self.source() + self.offset

    def wall(self) -> dt.datetime:
        # Timestamps the APIs write move with `advance` too.
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.offset)


class Refused(Exception):
    """
    Carries the answer a route refuses with.
    """

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response
