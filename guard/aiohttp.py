"""
guard for aiohttp: guarded routes, answers to guard errors, and the client
middleware.

Server side::

    from guard.aiohttp import guard_route, setup_guard

    app = web.Application()
    app.router.add_post("/topup/{phone}", topup, name="topup")
    setup_guard(
        app,
        routes={"topup": guard_route(oneclick, amount=topup_amount)},
    )

`setup_guard` wraps the app's route handlers when it starts (no middleware,
see `guard_middleware` for one): `InsufficientBalance` raised while handling
a request becomes ``402`` and `BalanceUnavailable` ``503`` with
``Retry-After``, both as RFC 9457 ``application/problem+json``. Client side,
see `guard_client_middleware`.
"""

from __future__ import annotations

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
from guard._aiohttp_problems import (
    BALANCE_UNAVAILABLE_TYPE,
    INSUFFICIENT_BALANCE_TYPE,
    PROBLEM_CONTENT_TYPE,
    ProblemHandler,
    problem_response,
)
from guard._aiohttp_server import (
    GUARD_KEY,
    RequestAmount,
    RouteRule,
    guard_middleware,
    guard_route,
    setup_guard,
)
from guard._dashboard import DashboardAuth, dashboard

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
