"""
guard on an aiohttp server: route rules, the guarded call around a handler,
and the two ways an app gets them, `setup_guard` and `guard_middleware`.

`setup_guard` wraps the app's route handlers when the app starts: a request
then pays for its guarded call and nothing else. Any aiohttp middleware
costs each request of the app more than a warm guarded call does (aiohttp
then builds a middleware chain and sets the current app around every
handler), so `setup_guard` installs none. `guard_middleware` is the same
work as a middleware, for apps that compose their own list.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
from aiohttp import web
from aiohttp.abc import AbstractView

from guard._aiohttp_problems import (
    Answers,
    ProblemHandler,
    bad_amount,
    unreadable_amount,
)
from guard._guard import BalanceGuard, Settle
from guard._money import to_amount
from guard._require import get_default_guard
from guard._reservation import _Reserve
from guard.errors import (
    AmountError,
    BalanceUnavailable,
    ConfigurationError,
    InsufficientBalance,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Coroutine,
        Generator,
        Mapping,
    )

    from aiohttp.typedefs import Handler, Middleware
    from aiohttp.web_urldispatcher import AbstractRoute

    from guard._lane import Lane
    from guard.typing import AmountLike, Provider

__all__ = [
    "GUARD_KEY",
    "RequestAmount",
    "RouteRule",
    "guard_middleware",
    "guard_route",
    "setup_guard",
]

GUARD_KEY: Final = web.AppKey("guard", BalanceGuard)
"""
Where `setup_guard` keeps the app's `BalanceGuard`; the middleware looks it
up here (through sub-applications too) when it was given no *guard*.
"""

RequestAmount: TypeAlias = (
    "AmountLike | Callable[[web.Request], AmountLike | Awaitable[AmountLike]]"
)
"""
What `guard_route` takes as *amount*: an amount, or a sync or async callable
that reads it from the request (match info, query, JSON body).
"""

_Wrapper: TypeAlias = "Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]"

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
            raise unreadable_amount(exc) from None
        try:
            return to_amount(value)
        except AmountError as exc:
            raise bad_amount(str(exc)) from None


def guard_route(
    provider: Provider, amount: RequestAmount, *, settle: Settle | None = None
) -> RouteRule:
    """
    Build the rule that guards one route, for `setup_guard`'s *routes*.

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


def _checked_rules(routes: Mapping[str, RouteRule] | None) -> dict[str, RouteRule]:
    rules: dict[str, RouteRule] = dict(routes or {})
    for name, rule in rules.items():
        if not isinstance(rule, RouteRule):
            raise TypeError(
                f"routes[{name!r}] must be a RouteRule (see guard_route), "
                f"not {type(rule).__name__}"
            )
    return rules


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


# -- around one handler ------------------------------------------------------


def _answering(handler: Handler, answers: Answers) -> _Wrapper:
    """*handler*, its guard errors answered (an unguarded route)."""

    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (InsufficientBalance, BalanceUnavailable) as exc:
            return await answers.answer(request, exc)
        except AmountError as exc:
            # A handler decorated with require_balance whose amount could not
            # be read from the request: the client's fault, not a 500.
            raise bad_amount(str(exc)) from None

    return answering


def _guarded(
    handler: Handler, rule: RouteRule, answers: Answers, guard: BalanceGuard | None
) -> _Wrapper:
    """
    *handler* run as *rule*'s guarded call on *guard* (None: the default
    guard, looked up per request), its guard errors answered.
    """
    provider = rule.provider
    settle = rule.settle
    fixed = rule.amount if type(rule.amount) is Decimal else None
    # The account's lane on the guard last used: one per route.
    last: Lane | None = None

    async def guarded(request: web.Request) -> web.StreamResponse:
        nonlocal last
        active = guard or get_default_guard()
        try:
            amount = await rule.required(request) if fixed is None else fixed
            lane = last
            if lane is None or lane.guard is not active:
                lane = last = active._lane(provider)
            fetched = lane.enter(amount, settle)
            if fetched is None:
                return await _reserved(request, handler, active, rule, amount)
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
            return await answers.answer(request, exc, provider, active)
        except AmountError as exc:
            raise bad_amount(str(exc)) from None

    return guarded


async def _reserved(
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


# -- setup_guard: the handlers wrapped --------------------------------------


@attrs.frozen
class _Wrapped:
    """A route handler `setup_guard` wrapped, and the wrapper."""

    original: Handler
    wrapper: _Wrapper | type[AbstractView]


def _view(view: type[AbstractView], wrapper: _Wrapper) -> type[AbstractView]:
    """
    A class-based *view* run through *wrapper*, as a subclass of it: what
    reads the route's handler at request time (aiohttp-cors asks whether it
    is a view) still finds one.
    """

    class Wrapped(view):  # type: ignore[valid-type,misc]
        def __await__(self) -> Generator[None, None, web.StreamResponse]:
            # *wrapper* runs *view* on the request: one instance each.
            return wrapper(self.request).__await__()

    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(Wrapped, name, getattr(view, name))
    Wrapped.__wrapped__ = view
    return Wrapped


# Routes as setup_guard left them. Weak: an app's routes go with the app.
_wrapped: weakref.WeakKeyDictionary[AbstractRoute, _Wrapped] = (
    weakref.WeakKeyDictionary()
)


def _routes(
    app: web.Application,
) -> list[tuple[AbstractRoute, web.Application]]:
    """Every route of *app* and its sub-applications, with its own app."""
    found: list[tuple[AbstractRoute, web.Application]] = []
    for resource in app.router.resources():
        sub = resource.get_info().get("app")
        if isinstance(sub, web.Application):
            found += _routes(sub)
        else:
            found += [(route, app) for route in resource]
    return found


def _wrap_routes(
    app: web.Application,
    guard: BalanceGuard,
    rules: Mapping[str, RouteRule],
    answers: Answers,
) -> None:
    """
    Wrap the handler of every route of *app* and its sub-applications:
    *rules*' routes (of *app* itself) run guarded, every one answers guard
    errors.

    A route another app's setup wrapped first is wrapped again from its own
    handler: a sub-application starts after its parent, so a route's
    errors are answered by the nearest app's setup, as its middleware would.
    """
    for route, owner in _routes(app):
        original = route.handler
        before = _wrapped.get(route)
        if before is not None and before.wrapper is original:
            original = before.original
        # A route of *app*'s own, so its name is one of *app*'s names.
        name = route.name if owner is app else None
        rule = rules.get(name) if name else None
        wrapper = (
            _answering(original, answers)
            if rule is None
            else _guarded(original, rule, answers, guard)
        )
        # Name, docstring and __wrapped__ of the handler: for tools that read
        # them off the route (API docs, tracebacks, inspect.unwrap).
        functools.update_wrapper(wrapper, original, updated=())
        handler: _Wrapper | type[AbstractView] = wrapper
        if isinstance(original, type) and issubclass(original, AbstractView):
            handler = _view(original, wrapper)
        # aiohttp has no public setter for a route's handler: the attribute
        # is set directly, as other aiohttp integrations do.
        route._handler = handler
        _wrapped[route] = _Wrapped(original, handler)


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
    Give *app* a guard, guard its *routes*, and answer guard errors.

    When the app starts, the guard is stored under `GUARD_KEY` and the
    handler of every route of the app and of its sub-applications is
    wrapped: *routes*' handlers run as guarded calls, and every handler's
    `InsufficientBalance` becomes ``402``, `BalanceUnavailable` ``503`` and
    `AmountError` ``400``. The guard is closed when the app cleans up
    (``app.cleanup_ctx``). No middleware is installed: other middlewares
    see the answers as the handler's. Call it before the app starts; routes
    added once it has started (in an ``on_startup`` handler) are not
    wrapped: use `guard_middleware` for those.

    Args:
        app: The application.
        guard: The guard, which the app then owns and closes; or a callable
            returning one, called at startup (in the app's loop); None: a
            `BalanceGuard` with default options.
        routes: Rules by route name (``add_post(..., name="topup")``): the
            amount is checked and held before the handler runs and settled
            after it. A handler that ends with a status below 400 counts as
            a success for ``settle="debit"``. Names are routes of *app*, not
            of its sub-applications; one that names no route raises
            `ConfigurationError` at startup.
        problem: Turns a guard error into a response of your own (another
            status, another body shape); return None to keep the default.
        retry_after: Seconds advertised in ``Retry-After`` when the provider
            gave no hint.
        expose_available: Tell clients the available amount in a ``402``
            (off by default: it is your account's balance; see
            `problem_response`).

    An amount that cannot be read from the request (its function raised
    `ValueError`, `LookupError`, `TypeError`, `ArithmeticError` or
    `RecursionError`), or is not a non-negative finite number, is answered
    ``400``, for route rules and for a handler decorated with
    `guard.require_balance` (which raises `guard.AmountError`) alike.
    """
    if guard is not None and not (isinstance(guard, BalanceGuard) or callable(guard)):
        raise TypeError(
            "guard must be a BalanceGuard, a callable returning one, or None, "
            f"not {type(guard).__name__}"
        )
    rules = _checked_rules(routes)
    answers = Answers(problem, retry_after, expose_available)

    async def guard_context(app: web.Application) -> AsyncIterator[None]:
        _check_route_names(app, rules)
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
            _wrap_routes(app, made, rules, answers)
            yield

    app.cleanup_ctx.append(guard_context)


# -- guard_middleware ---------------------------------------------------------


class _Seen:
    """
    What the middleware learnt of one route on its first request: the app
    whose middleware run it was learnt for, the handler it was passed, and
    that handler wrapped.
    """

    __slots__ = ("app", "handler", "wrapper")

    def __init__(
        self, app: weakref.ref[web.Application], handler: Handler, wrapper: _Wrapper
    ) -> None:
        self.app = app
        self.handler = handler
        self.wrapper = wrapper


def guard_middleware(
    *,
    guard: BalanceGuard | None = None,
    routes: Mapping[str, RouteRule] | None = None,
    problem: ProblemHandler | None = None,
    retry_after: float = 5.0,
    expose_available: bool = False,
) -> Middleware:
    """
    Build a middleware that guards routes and answers guard errors.

    It does what `setup_guard` does, as a middleware, for an app that builds
    its own middleware list (where it goes in that list decides what the
    other middlewares see) or adds routes once it has started; `setup_guard`
    costs a request less.

    Args:
        guard: The guard to use. Default: the app's (``app[GUARD_KEY]``, see
            `setup_guard`), else `guard.get_default_guard()`. The app's is
            looked up on each route's first request, the default one on
            every request.
        routes: As for `setup_guard`. Names are routes of the application
            whose middleware this is; one that names no route raises
            `ConfigurationError` on the first request.
        problem: As for `setup_guard`.
        retry_after: As for `setup_guard`.
        expose_available: As for `setup_guard`.

    Returns:
        A new-style aiohttp middleware.
    """
    rules = _checked_rules(routes)
    if guard is not None and not isinstance(guard, BalanceGuard):
        raise TypeError(f"guard must be a BalanceGuard, not {type(guard).__name__}")
    answers = Answers(problem, retry_after, expose_available)
    checked: weakref.WeakSet[web.Application] = weakref.WeakSet()
    # What each route needs, learnt on its first request. One dict lookup per
    # request; an entry per route, so bounded by the app.
    seen: dict[AbstractRoute, _Seen] = {}

    def learn(request: web.Request, handler: Handler) -> _Wrapper:
        # A name is looked up in the app this middleware runs for: a route of
        # a sub-application with the same name is another route.
        match_info = request.match_info
        app = match_info.current_app
        if rules and app not in checked:
            _check_route_names(app, rules)
            checked.add(app)
        route = match_info.route
        resource = route.resource
        name = resource.name if resource is not None else None
        rule = None
        if name and app.router.named_resources().get(name) is resource:
            rule = rules.get(name)
        wrapper = (
            _answering(handler, answers)
            if rule is None
            else _guarded(
                handler, rule, answers, guard or request.config_dict.get(GUARD_KEY)
            )
        )
        if resource is not None:  # not a 404/405 route, made per request
            seen[route] = _Seen(weakref.ref(app), handler, wrapper)
        return wrapper

    # Kept in this one place: aiohttp 4 drops the decorator.
    @web.middleware
    async def guard_balance(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        match_info = request.match_info
        entry = seen.get(match_info.route)
        if (
            entry is None
            or entry.handler is not handler
            or entry.app() is not match_info.current_app
        ):
            return await learn(request, handler)(request)
        return await entry.wrapper(request)

    return guard_balance
