"""
guard for aiohttp: server middleware, route rules, and client middleware.

Server side::

    from guard.aiohttp import guard_route, setup_guard

    app = web.Application()
    app.router.add_post("/topup/{phone}", topup, name="topup")
    setup_guard(
        app,
        routes={"topup": guard_route(oneclick, amount=topup_amount)},
    )

`InsufficientBalance` raised while handling a request becomes ``402`` and
`BalanceUnavailable` ``503`` with ``Retry-After``, both as RFC 9457
``application/problem+json``. Client side, see `guard_client_middleware`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Final, TypeAlias

import attrs
from aiohttp import web

from guard._aiohttp_client import (
    ReportedBalance,
    SpendRequest,
    SpendRule,
    clickatell_platform_rules,
    clickatell_rules,
    default_rules,
    guard_client_middleware,
    oneclickdz_rules,
)
from guard._dashboard import DashboardAuth, dashboard
from guard._guard import BalanceGuard, Settle
from guard._logs import fields
from guard._money import to_amount
from guard._require import get_default_guard
from guard._reservation import _Reserve
from guard.errors import (
    AmountError,
    BalanceUnavailable,
    ConfigurationError,
    GuardError,
    InsufficientBalance,
    ProviderAuthError,
)

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware
    from aiohttp.web_urldispatcher import AbstractRoute

    from guard._lane import Lane
    from guard.typing import AmountLike, Provider

__all__ = [
    "BALANCE_UNAVAILABLE_TYPE",
    "GUARD_KEY",
    "INSUFFICIENT_BALANCE_TYPE",
    "PROBLEM_CONTENT_TYPE",
    "DashboardAuth",
    "ProblemHandler",
    "ReportedBalance",
    "RequestAmount",
    "RouteRule",
    "SpendRequest",
    "SpendRule",
    "clickatell_platform_rules",
    "clickatell_rules",
    "dashboard",
    "default_rules",
    "guard_client_middleware",
    "guard_middleware",
    "guard_route",
    "oneclickdz_rules",
    "problem_response",
    "setup_guard",
]

log = logging.getLogger("guard")

GUARD_KEY: Final = web.AppKey("guard", BalanceGuard)
"""
Where `setup_guard` keeps the app's `BalanceGuard`; the middleware looks it
up here (through sub-applications too) when it was given no *guard*.
"""

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

INSUFFICIENT_BALANCE_TYPE: Final = "urn:guard:problem:insufficient-balance"
"""
The RFC 9457 ``type`` of a ``402`` answer.
"""

BALANCE_UNAVAILABLE_TYPE: Final = "urn:guard:problem:balance-unavailable"
"""
The RFC 9457 ``type`` of a ``503`` answer.
"""

RequestAmount: TypeAlias = (
    "AmountLike | Callable[[web.Request], AmountLike | Awaitable[AmountLike]]"
)
"""
What `guard_route` takes as *amount*: an amount, or a sync or async callable
that reads it from the request (match info, query, JSON body).
"""

ProblemHandler: TypeAlias = Callable[
    [web.Request, GuardError],
    "Awaitable[web.StreamResponse | None] | web.StreamResponse | None",
]
"""
A callable that turns a guard error into a response of your own; returning
None keeps the default one (see `problem_response`).
"""


class _Seen:
    """
    What one route needs, learnt on its first request: the app whose
    middleware run it was learnt for, its rule, the app's guard (None: the
    default one), and the lane of the rule's account on the guard last used.
    """

    __slots__ = ("app", "guard", "lane", "rule")

    def __init__(
        self,
        app: weakref.ref[web.Application],
        rule: RouteRule | None,
        guard: BalanceGuard | None,
    ) -> None:
        self.app = app
        self.rule = rule
        self.guard = guard
        self.lane: Lane | None = None


_DETAIL_UNAVAILABLE = (
    "The provider balance could not be checked right now; try again later."
)


# What an amount function usually returns, which is never awaitable.
_READY: Final = frozenset({int, Decimal, str, float})


def _static_amount(value: RequestAmount) -> RequestAmount:
    return value if callable(value) else to_amount(value)


@attrs.define(frozen=True)
class RouteRule:
    """
    Guard one named route: what to check before its handler runs.

    Build it with `guard_route`.

    Attributes:
        provider: The account the route spends.
        amount: A fixed `Decimal`, or a callable reading it from the request.
        settle: ``"invalidate"`` or ``"debit"``; None: the guard's default.
    """

    provider: Provider
    amount: RequestAmount = attrs.field(converter=_static_amount)
    settle: Settle | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.in_((None, "refresh", "invalidate", "debit")),
    )

    async def required(self, request: web.Request) -> Decimal:
        """
        Return the amount *request* needs.

        Raises:
            aiohttp.web.HTTPBadRequest: The amount cannot be read from the
                request (the amount function raised `ValueError`, such as a
                body that is not JSON, `LookupError`, `TypeError`,
                `ArithmeticError`, such as ``decimal.InvalidOperation``, or
                `RecursionError`, for a body nested too deep), or is not a
                non-negative finite number: the client sent a bad one.
        """
        amount = self.amount
        if isinstance(amount, Decimal):
            return amount
        try:
            value = amount(request) if callable(amount) else amount
            # isawaitable() asks abstract classes: slow for the usual answer.
            if type(value) not in _READY and inspect.isawaitable(value):
                value = await value
        except (
            LookupError,
            TypeError,
            ValueError,
            ArithmeticError,
            RecursionError,
        ) as exc:
            raise _unreadable_amount(exc) from None
        try:
            return to_amount(value)
        except AmountError as exc:
            raise _bad_amount(str(exc)) from None


def guard_route(
    provider: Provider, amount: RequestAmount, *, settle: Settle | None = None
) -> RouteRule:
    """
    Build the rule that guards one route, for `guard_middleware`'s *routes*.

    Args:
        provider: The account the route spends.
        amount: An amount, or a sync or async callable taking the
            `aiohttp.web.Request` and returning one. It may read
            ``request.match_info``, ``request.query`` or ``await
            request.json()``: aiohttp keeps the body, so the handler can read
            it again.
        settle: ``"invalidate"`` or ``"debit"``; default: the guard's.

    Raises:
        TypeError, ValueError: A fixed *amount* that is not a non-negative
            finite number.
    """
    return RouteRule(provider, amount, settle=settle)


def _bad_amount(reason: str) -> web.HTTPBadRequest:
    body = {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": f"invalid amount: {reason}",
    }
    return web.HTTPBadRequest(text=json.dumps(body), content_type=PROBLEM_CONTENT_TYPE)


def _unreadable_amount(exc: BaseException) -> web.HTTPBadRequest:
    # The exception's text may echo the client's input: its type will do.
    return _bad_amount(f"it cannot be read from the request ({type(exc).__name__})")


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


def guard_middleware(
    *,
    guard: BalanceGuard | None = None,
    routes: Mapping[str, RouteRule] | None = None,
    problem: ProblemHandler | None = None,
    retry_after: float = 5.0,
    expose_available: bool = False,
) -> Middleware:
    """
    Build the middleware that guards routes and answers guard errors.

    Args:
        guard: The guard to use. Default: the app's (``app[GUARD_KEY]``, see
            `setup_guard`), else `guard.get_default_guard()`. The app's is
            looked up on each route's first request, the default one on
            every request.
        routes: Rules by route name (``add_post(..., name="topup")``): the
            amount is checked and held before the handler runs and settled
            after it. A handler that ends with a status below 400 counts as a
            success for ``settle="debit"``. Names are routes of the
            application whose middleware this is, not of its
            sub-applications; one that names no route raises
            `ConfigurationError` at startup (`setup_guard`) or on the first
            request.
        problem: Turns a guard error into a response of your own (another
            status, another body shape); return None to keep the default.
        retry_after: Seconds advertised in ``Retry-After`` when the provider
            gave no hint.
        expose_available: Tell clients the available amount in a ``402``
            (off by default: it is your account's balance; see
            `problem_response`).

    Returns:
        A new-style aiohttp middleware.

    An amount that cannot be read from the request (its function raised
    `ValueError`, `LookupError`, `TypeError`, `ArithmeticError` or
    `RecursionError`), or is not a non-negative finite number, is answered
    ``400``, for route rules and for a handler decorated with
    `guard.require_balance` (which raises `guard.AmountError`) alike.
    """
    rules: dict[str, RouteRule] = dict(routes or {})
    for name, rule in rules.items():
        if not isinstance(rule, RouteRule):
            raise TypeError(
                f"routes[{name!r}] must be a RouteRule (see guard_route), "
                f"not {type(rule).__name__}"
            )
    if guard is not None and not isinstance(guard, BalanceGuard):
        raise TypeError(f"guard must be a BalanceGuard, not {type(guard).__name__}")
    # Checked at run time too: callers may not be type-checked.
    number: object = retry_after
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or not (math.isfinite(number) and number >= 0)
    ):
        raise ValueError(f"retry_after must be seconds >= 0, got {retry_after!r}")

    async def answer(
        request: web.Request, exc: GuardError, rule: RouteRule | None
    ) -> web.StreamResponse:
        if isinstance(exc, BalanceUnavailable):
            # SECURITY: str(exc) never holds a credential; the client gets a
            # generic detail all the same.
            level = (
                logging.ERROR if isinstance(exc, ProviderAuthError) else logging.WARNING
            )
            # A handler's own guarded call: its account is not known here.
            account = "" if rule is None else account_of(request, rule)
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
        if problem is not None:
            custom = problem(request, exc)
            if inspect.isawaitable(custom):
                custom = await custom
            if custom is not None:
                return custom
        return problem_response(
            exc, retry_after=retry_after, expose_available=expose_available
        )

    def account_of(request: web.Request, rule: RouteRule) -> str:
        active = guard or request.config_dict.get(GUARD_KEY) or get_default_guard()
        return active._track(rule.provider).digest

    async def reserved(
        request: web.Request,
        handler: Handler,
        active: BalanceGuard,
        rule: RouteRule,
        amount: Decimal,
    ) -> web.StreamResponse:
        # Off the lane: what ``async with active.reserve(...)`` does, without
        # its two coroutines (the rule's amount and mode are checked).
        settle = rule.settle
        block = _Reserve(active, rule.provider, amount, settle)
        reservation = block._enter_now() or await block._enter()
        ok = False
        try:
            response = await handler(request)
            ok = response.status < 400
        except web.HTTPException as exc:
            ok = exc.status < 400  # a redirect raised as an exception: a success
            raise
        finally:
            if not active._settle_now(reservation, ok, settle):
                await active._settle(reservation, ok=ok, settle=settle)
        return response

    checked: weakref.WeakSet[web.Application] = weakref.WeakSet()
    # What each route needs, learnt on its first request. One dict lookup per
    # request; an entry per route, so bounded by the app.
    seen: dict[AbstractRoute, _Seen] = {}

    def learn(request: web.Request) -> _Seen:
        # A name is looked up in the app this middleware runs for: a route of
        # a sub-application with the same name is another route.
        match_info = request.match_info
        app = match_info.current_app
        if app not in checked:
            _check_route_names(app, rules)
            checked.add(app)
        route = match_info.route
        resource = route.resource
        name = resource.name if resource is not None else None
        rule = rules.get(name) if name else None
        if (
            rule is not None
            and app.router.named_resources().get(name or "") is not resource
        ):
            rule = None
        found = None
        if rule is not None:
            found = guard or request.config_dict.get(GUARD_KEY)
        entry = _Seen(weakref.ref(app), rule, found)
        if resource is not None:  # not a 404/405 route, made per request
            seen[route] = entry
        return entry

    # Kept in this one place: aiohttp 4 drops the decorator.
    @web.middleware
    async def guard_balance(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        rule: RouteRule | None = None
        try:
            if not rules:
                return await handler(request)
            match_info = request.match_info
            entry = seen.get(match_info.route)
            if entry is None or entry.app() is not match_info.current_app:
                entry = learn(request)
            rule = entry.rule
            if rule is None:
                return await handler(request)
            # The guarded call, inlined: each coroutine a request passes
            # through costs it a frame.
            active = entry.guard or get_default_guard()
            amount = rule.amount
            if type(amount) is not Decimal:  # fixed amounts were read at build time
                amount = await rule.required(request)
            lane = entry.lane
            if lane is None or lane.guard is not active:
                lane = entry.lane = active._lane(rule.provider)
            settle = rule.settle
            fetched = lane.enter(amount, settle)
            if fetched is None:
                return await reserved(request, handler, active, rule, amount)
            # On the lane (``guard/_lane.py``): held, nothing awaited.
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                # A redirect raised as an exception: a success.
                if not lane.exit(amount, fetched, exc.status < 400, settle):
                    await lane.forget_copy()
                raise
            except BaseException:
                if not lane.exit(amount, fetched, False, settle):
                    await lane.forget_copy()
                raise
            if not lane.exit(amount, fetched, response.status < 400, settle):
                await lane.forget_copy()
            return response
        except (InsufficientBalance, BalanceUnavailable) as exc:
            return await answer(request, exc, rule)
        except AmountError as exc:
            # A handler decorated with require_balance whose amount could not
            # be read from the request: the client's fault, not a 500.
            raise _bad_amount(str(exc)) from None

    return guard_balance


def _check_route_names(app: web.Application, routes: Mapping[str, object]) -> None:
    """
    Check that every route name of *routes* names a route of *app*.

    Raises:
        ConfigurationError: One does not (a typo, or a route of another
            application).
    """
    named = app.router.named_resources()
    missing = sorted(name for name in routes if name not in named)
    if missing:
        raise ConfigurationError(
            f"guard routes name no route of this application: {missing}; "
            f"its named routes are {sorted(named)}"
        )


def setup_guard(
    app: web.Application,
    guard: BalanceGuard | Callable[[], BalanceGuard] | None = None,
    *,
    routes: Mapping[str, RouteRule] | None = None,
    problem: ProblemHandler | None = None,
    retry_after: float = 5.0,
    expose_available: bool = False,
) -> None:
    """
    Give *app* a guard and the guard middleware.

    The guard is stored under `GUARD_KEY` when the app starts and closed
    when it cleans up (``app.cleanup_ctx``); the middleware is appended to
    ``app.middlewares``. Call it before the app starts.

    Args:
        app: The application.
        guard: The guard, which the app then owns and closes; or a callable
            returning one, called at startup (in the app's loop); None: a
            `BalanceGuard` with default options.
        routes: As for `guard_middleware`.
        problem: As for `guard_middleware`.
        retry_after: As for `guard_middleware`.
        expose_available: As for `guard_middleware`.
    """
    if guard is not None and not (isinstance(guard, BalanceGuard) or callable(guard)):
        raise TypeError(
            "guard must be a BalanceGuard, a callable returning one, or None, "
            f"not {type(guard).__name__}"
        )
    middleware = guard_middleware(
        routes=routes,
        problem=problem,
        retry_after=retry_after,
        expose_available=expose_available,
    )

    async def guard_context(app: web.Application) -> AsyncIterator[None]:
        _check_route_names(app, routes or {})
        if isinstance(guard, BalanceGuard):
            made = guard
        elif guard is None:
            made = BalanceGuard()
        else:
            made = guard()
            if not isinstance(made, BalanceGuard):
                raise TypeError(
                    f"the guard factory returned {type(made).__name__}, "
                    "not a BalanceGuard"
                )
        app[GUARD_KEY] = made
        async with made:
            yield

    app.cleanup_ctx.append(guard_context)
    app.middlewares.append(middleware)
