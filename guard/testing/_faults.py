"""
`Fault`: a scripted answer that replaces an emulated route's normal one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web

from ._clickatell import err_line
from ._clickatell_platform import platform_error
from ._common import JSON_TYPE, TEXT_TYPE, dumps
from ._oneclickdz import error_body

if TYPE_CHECKING:
    from collections.abc import Mapping


def _check_status(
    instance: object, attribute: attrs.Attribute[Any], value: int
) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"status must be an int, not {type(value).__name__}"
        raise TypeError(msg)
    if not 100 <= value <= 599:
        msg = f"status must be an HTTP status (100-599), not {value}"
        raise ValueError(msg)


def _check_delay(
    instance: object, attribute: attrs.Attribute[Any], value: float
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{attribute.name} must be a number of seconds"
        raise TypeError(msg)
    if not (math.isfinite(value) and value >= 0):
        msg = f"{attribute.name} must be zero or more seconds, not {value!r}"
        raise ValueError(msg)


def _to_headers(value: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()}


@attrs.define(frozen=True)
class Fault:
    """
    One scripted answer that replaces a route's normal one.

    Queue it with `Emulator.fail`. Without *body* or *json* the answer is
    empty.

    Args:
        status: The HTTP status to answer with.
        body: The raw body (`str` is sent as UTF-8); use this for HTML,
            truncated JSON or ``null``.
        json: A value to send as JSON (`Decimal` becomes an exact number);
            `None` means no JSON.
        headers: Extra response headers, such as ``Retry-After``.
        content_type: The ``Content-Type``; by default ``application/json``
            for *json* and ``text/plain`` for *body*.
        delay: Seconds to wait before answering (real time, so client
            timeouts fire).
        drop: Close the connection instead of answering.
        passthrough: After *delay*, answer normally (a slow but correct
            provider).
    """

    status: int = attrs.field(default=500, validator=_check_status)
    body: str | bytes | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.instance_of((str, bytes))),
    )
    json: object = attrs.field(default=None, kw_only=True, hash=False)
    headers: Mapping[str, str] = attrs.field(
        factory=dict, kw_only=True, converter=_to_headers, hash=False
    )
    content_type: str | None = attrs.field(default=None, kw_only=True)
    delay: float = attrs.field(default=0.0, kw_only=True, validator=_check_delay)
    drop: bool = attrs.field(default=False, kw_only=True)
    passthrough: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.body is not None and self.json is not None:
            msg = "give a Fault a body or json, not both"
            raise ValueError(msg)
        if self.drop and self.passthrough:
            msg = "a Fault cannot both drop and pass through"
            raise ValueError(msg)
        # Fail at the test line that builds the fault, not in the server.
        dumps(self.json)

    @classmethod
    def oneclickdz(
        cls,
        status: int,
        code: str,
        message: str = "Emulated error",
        *,
        details: Mapping[str, object] | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """
        A OneClickDZ error envelope, such as
        ``Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after=5)``.

        Args:
            status: The HTTP status.
            code: The ``error.code``.
            message: The ``error.message``.
            details: The optional ``error.details``.
            retry_after: A ``Retry-After`` header: seconds, or any string
                (an HTTP-date, or nonsense to test parsing).
            delay: Seconds to wait before answering.
        """
        headers = {}
        if isinstance(retry_after, str):
            headers["Retry-After"] = retry_after
        elif retry_after is not None:
            seconds = float(retry_after)
            headers["Retry-After"] = (
                str(int(seconds)) if seconds.is_integer() else str(seconds)
            )
        return cls(
            status,
            json=error_body(code, message, details),
            headers=headers,
            delay=delay,
        )

    @classmethod
    def clickatell_err(
        cls, code: int | str, text: str, *, digits: int = 3, delay: float = 0.0
    ) -> Fault:
        """
        A Clickatell ``ERR: <code>, <text>`` line with HTTP 200, such as
        ``Fault.clickatell_err(901, "Internal error")``.

        Args:
            code: The error code; an `int` is zero-padded to *digits*, a `str`
                is sent as given.
            text: The description.
            digits: Width of an `int` code (3, or 4 as one wiki shows).
            delay: Seconds to wait before answering.
        """
        return cls(200, body=err_line(code, text, digits), delay=delay)

    @classmethod
    def clickatell_platform(
        cls, code: int, *, status: int | None = None, delay: float = 0.0
    ) -> Fault:
        """
        A Clickatell Platform error body (``errorCode``, ``error``,
        ``errorDescription``) with the One API table's status, or *status*
        (200 and 202 carry errors too), such as
        ``Fault.clickatell_platform(19)``.
        """
        reply = platform_error(code, status=status)
        assert isinstance(reply.text, str)
        return cls(reply.status, body=reply.text, content_type=JSON_TYPE, delay=delay)

    @classmethod
    def html(cls, status: int = 502, title: str = "Bad gateway") -> Fault:
        """
        An HTML error page as a proxy (Cloudflare) in front of the API sends.
        """
        page = (
            f"<!DOCTYPE html><html><head><title>{status} {title}</title></head>"
            f"<body><h1>{status} {title}</h1><p>cloudflare</p></body></html>"
        )
        return cls(status, body=page, content_type="text/html")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """
        Answer normally, but only after *delay* seconds.
        """
        return cls(delay=delay, passthrough=True)

    def response(self) -> web.Response:
        """
        Build the aiohttp response this fault answers with.
        """
        headers = dict(self.headers)
        content_type = self.content_type
        body: bytes | None = None
        if self.json is not None:
            body = dumps(self.json).encode()
            content_type = content_type or JSON_TYPE
        elif self.body is not None:
            body = self.body.encode() if isinstance(self.body, str) else self.body
            content_type = content_type or TEXT_TYPE
        if content_type is not None and "content-type" not in {
            h.lower() for h in headers
        }:
            headers["Content-Type"] = content_type
        return web.Response(status=self.status, body=body, headers=headers)
