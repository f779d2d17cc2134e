"""
The answers an aiohttp app gives for guard errors: RFC 9457 problem
details, and the settings `guard.aiohttp.setup_guard` and
`guard.aiohttp.guard_middleware` answer with.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from aiohttp import web

from guard._logs import fields
from guard._require import get_default_guard
from guard.errors import (
    BalanceUnavailable,
    GuardError,
    InsufficientBalance,
    ProviderAuthError,
)

if TYPE_CHECKING:
    from guard._guard import BalanceGuard
    from guard.typing import Provider

__all__ = [
    "BALANCE_UNAVAILABLE_TYPE",
    "INSUFFICIENT_BALANCE_TYPE",
    "PROBLEM_CONTENT_TYPE",
    "Answers",
    "ProblemHandler",
    "bad_amount",
    "problem_response",
    "unreadable_amount",
]

log = logging.getLogger("guard")

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

INSUFFICIENT_BALANCE_TYPE: Final = "urn:guard:problem:insufficient-balance"
"""
The RFC 9457 ``type`` of a ``402`` answer.
"""

BALANCE_UNAVAILABLE_TYPE: Final = "urn:guard:problem:balance-unavailable"
"""
The RFC 9457 ``type`` of a ``503`` answer.
"""

ProblemHandler: TypeAlias = Callable[
    [web.Request, GuardError],
    "Awaitable[web.StreamResponse | None] | web.StreamResponse | None",
]
"""
A callable that turns a guard error into a response of your own; returning
None keeps the default one (see `problem_response`).
"""

_DETAIL_UNAVAILABLE = (
    "The provider balance could not be checked right now; try again later."
)


def bad_amount(reason: str) -> web.HTTPBadRequest:
    """The ``400`` for an amount the client sent wrong."""
    body = {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": f"invalid amount: {reason}",
    }
    return web.HTTPBadRequest(text=json.dumps(body), content_type=PROBLEM_CONTENT_TYPE)


def unreadable_amount(exc: BaseException) -> web.HTTPBadRequest:
    """The ``400`` for an amount that could not be read from the request."""
    # The exception's text may echo the client's input: its type will do.
    return bad_amount(f"it cannot be read from the request ({type(exc).__name__})")


def _retry_after(exc: BalanceUnavailable, default: float) -> str:
    seconds = exc.retry_after
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        seconds = default
    return str(max(0, math.ceil(seconds)))


def problem_response(
    exc: GuardError,
    *,
    status: int | None = None,
    retry_after: float = 5.0,
    expose_available: bool = False,
) -> web.Response:
    """
    Build the default RFC 9457 answer for *exc*.

    `InsufficientBalance` answers ``402`` with ``provider``, ``required``
    and ``currency`` (amounts as decimal strings, never floats), and
    ``available`` only with *expose_available*: the available amount is
    the merchant's own balance, which any client of a public route could
    otherwise read. `BalanceUnavailable` answers ``503`` with ``provider`` and a
    ``Retry-After`` header: the provider's hint if it gave one, else
    *retry_after*. The detail never says why the balance was unavailable:
    the reason is for your logs, not for your clients (it may name refused
    credentials).

    Args:
        exc: The error to answer for.
        status: Another status to answer with.
        retry_after: Seconds to advertise when the provider gave no hint.
        expose_available: Tell the client the available amount too.
    """
    headers: dict[str, str] = {}
    body: dict[str, object]
    if isinstance(exc, InsufficientBalance):
        status = 402 if status is None else status
        body = {
            "type": INSUFFICIENT_BALANCE_TYPE,
            "title": "Insufficient balance",
            "status": status,
            "detail": str(exc)
            if expose_available
            else (
                f"{exc.provider}: insufficient balance: {exc.required} "
                f"{exc.currency} required"
            ),
            "provider": exc.provider,
            "required": str(exc.required),
            "currency": exc.currency,
        }
        if expose_available:
            body["available"] = str(exc.available)
    elif isinstance(exc, BalanceUnavailable):
        status = 503 if status is None else status
        headers["Retry-After"] = _retry_after(exc, retry_after)
        body = {
            "type": BALANCE_UNAVAILABLE_TYPE,
            "title": "Balance unavailable",
            "status": status,
            "detail": _DETAIL_UNAVAILABLE,
            "provider": exc.provider,
        }
    else:
        status = 500 if status is None else status
        body = {"type": "about:blank", "title": "Internal Server Error"}
        body["status"] = status
    # Built from bytes: the media type goes out as is, with no charset
    # parameter (RFC 9457 JSON is UTF-8).
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        headers=headers,
        content_type=PROBLEM_CONTENT_TYPE,
    )


class Answers:
    """
    How one app answers guard errors: its *problem* handler, the
    ``Retry-After`` it advertises by default, whether a ``402`` tells the
    available amount.
    """

    __slots__ = ("expose_available", "problem", "retry_after")

    def __init__(
        self,
        problem: ProblemHandler | None,
        retry_after: float,
        expose_available: bool,
    ) -> None:
        if problem is not None and not callable(problem):
            raise TypeError(f"problem must be a callable, not {type(problem).__name__}")
        # Checked at run time too: callers may not be type-checked.
        number: object = retry_after
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not (math.isfinite(number) and number >= 0)
        ):
            raise ValueError(f"retry_after must be seconds >= 0, got {retry_after!r}")
        self.problem = problem
        self.retry_after = retry_after
        self.expose_available = expose_available

    async def answer(
        self,
        request: web.Request,
        exc: InsufficientBalance | BalanceUnavailable,
        provider: Provider | None = None,
        guard: BalanceGuard | None = None,
    ) -> web.StreamResponse:
        """
        Answer *request* for *exc*, raised by the guarded call on
        *provider*'s account through *guard* (None: a handler's own call,
        whose account is not known here).
        """
        if isinstance(exc, BalanceUnavailable):
            # SECURITY: str(exc) never holds a credential; the client gets a
            # generic detail all the same.
            level = (
                logging.ERROR if isinstance(exc, ProviderAuthError) else logging.WARNING
            )
            account = ""
            if provider is not None:
                active = guard or get_default_guard()
                account = active._track(provider).digest
            log.log(
                level,
                "%s %s: %s",
                request.method,
                request.path,
                exc,
                extra=fields(
                    "request_unavailable",
                    provider=exc.provider,
                    account=account,
                    method=request.method,
                    path=request.path,
                    reason=exc.reason,
                    status=exc.status,
                ),
            )
        problem = self.problem
        if problem is not None:
            custom = problem(request, exc)
            if inspect.isawaitable(custom):
                custom = await custom
            if custom is not None:
                return custom
        return problem_response(
            exc, retry_after=self.retry_after, expose_available=self.expose_available
        )
