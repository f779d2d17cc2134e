"""
The operator's dashboard: a mountable aiohttp sub-application showing each
account's balance, holds, age, alert level and a 7-day chart, refreshed in
place, plus the same data as JSON. Never open: every request needs the
configured auth.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import inspect
import json
from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from aiohttp import web

from guard._logs import fields, log
from guard.errors import ConfigurationError, GuardError
from guard.history._chart import svg_chart
from guard.providers import Secret

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from guard._accounts import AccountState
    from guard._guard import BalanceGuard
    from guard.history import BaseHistory
    from guard.typing import Provider

__all__ = ["DashboardAuth", "dashboard"]


DashboardAuth: TypeAlias = "str | Secret | Callable[[web.Request], Awaitable[bool]]"
"""
What `dashboard` takes as *auth*: a bearer token, or an async check of the
request that returns whether to let it in.
"""

CHART_DAYS: Final = 7

_SCRIPT: Final = """
(function () {
  var box = document.getElementById("accounts");
  var every = Number(box.dataset.refresh) * 1000;
  function tick() {
    fetch("fragment", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        box.innerHTML = html;
        document.getElementById("state").textContent = "live";
      })
      .catch(function () {
        document.getElementById("state").textContent = "not updating";
      })
      .finally(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
""".strip()

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111}
h1{font-size:1.3em}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right;
vertical-align:middle}
th:first-child,td:first-child{text-align:left}
.chart{width:360px;height:auto}.chart .line{stroke:#1f5fbf;stroke-width:2}
.chart .axis{stroke:#777}.chart text{font-size:11px;fill:#333}
.level-warning{background:#fff3c4}.level-critical{background:#ffd3d3}
#state{color:#666;font-size:.9em}
""".strip()


def _csp_hash(text: str) -> str:
    return (
        "'sha256-"
        + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        + "'"
    )


# SECURITY: only this page's own script and style may run.
_CSP: Final = (
    "default-src 'none'; "
    f"script-src {_csp_hash(_SCRIPT)}; "
    f"style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def dashboard(
    guard: BalanceGuard,
    *,
    auth: DashboardAuth,
    monitor: object | None = None,
    history: BaseHistory | None = None,
    refresh: float = 5.0,
    title: str = "guard",
    fetch: bool = True,
) -> web.Application:
    """
    Build the operator's dashboard of *guard*'s accounts, to mount in your
    application::

        app.add_subapp("/guard/", dashboard(g, auth=os.environ["GUARD_TOKEN"]))

    It serves ``/`` (the page, refreshed in place every *refresh* seconds)
    and ``/status`` (the same data as JSON). Every request must pass *auth*
    or is answered ``401``: with a token, send it as
    ``Authorization: Bearer <token>`` (or as the password of HTTP Basic
    auth, which browsers prompt for); with a check, it decides. No provider
    credential is ever shown: accounts appear by their digest.

    Args:
        guard: The guard whose accounts to show (`BalanceGuard.accounts`).
        auth: A bearer token (16 characters or more), or an async callable
            taking the request and returning whether to let it in.
        monitor: Gives each account's alert level, through
            ``monitor.level(provider_name, account_digest)``.
        history: Draws each account's balance over the last 7 days.
        refresh: Seconds between two refreshes of the page.
        title: The page's title.
        fetch: Read each account's balance through the guard at each
            refresh: the cached one, or a fetch when a settled call
            invalidated it (one per account at a time, as for calls).
            False shows only the last balance guard saw.

    Raises:
        ConfigurationError: *auth* is missing, a short token, or not async.
    """
    check = _auth_check(auth)
    every: object = refresh
    if isinstance(every, bool) or not (isinstance(every, int | float) and every > 0):
        raise ConfigurationError(f"refresh must be seconds above 0, got {refresh!r}")
    view = _View(guard, monitor, history, refresh, title, fetch=fetch)

    @web.middleware
    async def authenticate(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not await check(request):
            return web.json_response(
                {"title": "authentication required", "status": 401},
                status=401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="guard", Basic realm="guard"',
                    "Cache-Control": "no-store",
                },
            )
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app = web.Application(middlewares=[authenticate])
    app.router.add_get("/", view.page, name="page")
    app.router.add_get("/fragment", view.fragment, name="fragment")
    app.router.add_get("/status", view.status, name="status")
    return app


def _auth_check(auth: object) -> Callable[[web.Request], Awaitable[bool]]:
    if isinstance(auth, str | Secret):
        token = auth if isinstance(auth, Secret) else Secret(auth)
        if len(token.reveal()) < 16:
            raise ConfigurationError(
                "the dashboard token must have 16 characters or more"
            )

        async def bearer(request: web.Request) -> bool:
            return token.matches(_presented(request))

        return bearer
    if callable(auth) and (
        inspect.iscoroutinefunction(auth)
        or inspect.iscoroutinefunction(getattr(auth, "__call__", None))  # noqa: B004
    ):
        user_check: Callable[[web.Request], Awaitable[object]] = auth

        async def checked(request: web.Request) -> bool:
            return (await user_check(request)) is True

        return checked
    # SECURITY: no default; a dashboard shows money.
    raise ConfigurationError(
        "dashboard auth must be a bearer token or an async check of the request"
    )


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


class _View:
    def __init__(
        self,
        guard: BalanceGuard,
        monitor: object | None,
        history: BaseHistory | None,
        refresh: float,
        title: str,
        *,
        fetch: bool,
    ) -> None:
        self.fetch = fetch
        self.guard = guard
        self.monitor = monitor
        self.history = history
        self.refresh = refresh
        self.title = title

    async def _level(self, state: AccountState) -> str | None:
        level_of = getattr(self.monitor, "level", None)
        if level_of is None:
            return None
        try:
            level: Any = level_of(state.provider, state.account)
            if inspect.isawaitable(level):
                level = await level
        except Exception:
            log.exception(
                "dashboard: the monitor's level() failed",
                extra=fields(
                    "dashboard_level_failed",
                    provider=state.provider,
                    account=state.account,
                ),
            )
            return "unknown"
        if level is None:
            return None
        return str(getattr(level, "name", level)).lower()

    async def _refresh(self) -> None:
        async def read(provider: Provider) -> None:
            # Shown as the last balance seen (and its age) if this fails.
            with contextlib.suppress(GuardError):
                await self.guard.balance(provider)

        await asyncio.gather(*(read(t.provider) for t in self.guard._accounts))

    async def _rows(self) -> list[dict[str, Any]]:
        if self.fetch:
            await self._refresh()
        rows = []
        for state in sorted(
            self.guard.accounts(), key=lambda s: (s.provider, s.account)
        ):
            balance = state.balance
            available = state.available
            rows.append(
                {
                    "provider": state.provider,
                    "account": state.account,
                    "currency": state.currency,
                    "balance": None if balance is None else format(balance.amount, "f"),
                    "held": format(state.held, "f"),
                    "available": None if available is None else format(available, "f"),
                    "fetched_at": None
                    if balance is None
                    else balance.fetched_at.isoformat(),
                    "age": None if balance is None else round(balance.age, 1),
                    "level": await self._level(state),
                    "spent": format(state.spent, "f"),
                    "calls": dict(state.calls),
                    "sandbox": state.sandbox,
                }
            )
        return rows

    async def status(self, request: web.Request) -> web.Response:
        doc = {
            "generated_at": dt.datetime.now(dt.UTC).isoformat(),
            "accounts": await self._rows(),
        }
        return web.Response(text=json.dumps(doc), content_type="application/json")

    async def _chart(self, row: dict[str, Any]) -> str:
        if self.history is None:
            return '<span class="muted">no history</span>'
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=CHART_DAYS)
        readings = await self.history.readings(
            provider=row["provider"], account=row["account"], since=since
        )
        return svg_chart(
            [(r.at, r.amount) for r in readings],
            label=f"{row['provider']} balance, last {CHART_DAYS} days",
            width=360,
            height=110,
        )

    async def _fragment(self) -> str:
        rows = await self._rows()
        if not rows:
            return (
                "<p>No account seen yet: guard learns an account at its first call.</p>"
            )
        head = (
            "<tr><th>Provider</th><th>Account</th><th>Balance</th><th>Held</th>"
            "<th>Available</th><th>Age</th><th>Alert</th>"
            f"<th>Last {CHART_DAYS} days</th></tr>"
        )
        body = []
        for row in rows:
            level = row["level"]
            css = f' class="level-{escape(level)}"' if level else ""
            cells = [
                # A sandbox key's balance is no money: say so.
                escape(row["provider"]) + (" (SANDBOX)" if row["sandbox"] else ""),
                f"<code>{escape(row['account'])}</code>",
                _money(row["balance"], row["currency"]),
                _money(row["held"], row["currency"]),
                _money(row["available"], row["currency"]),
                "" if row["age"] is None else f"{row['age']:.0f} s",
                escape(level or ""),
                await self._chart(row),
            ]
            body.append(
                f'<tr{css} data-account="{escape(row["account"])}">'
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        return (
            f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
            f'<p class="updated">Updated {stamp} UTC</p>'
        )

    async def fragment(self, request: web.Request) -> web.Response:
        return web.Response(text=await self._fragment(), content_type="text/html")

    async def page(self, request: web.Request) -> web.Response:
        title = escape(self.title)
        html = (
            "<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            # Without script, the page reloads itself instead.
            f'<noscript><meta http-equiv="refresh" content="{self.refresh:g}">'
            "</noscript>"
            f"<style>{_STYLE}</style></head><body>"
            f'<h1>{title}: balances <span id="state">loaded</span></h1>'
            f'<div id="accounts" data-refresh="{self.refresh:g}">'
            f"{await self._fragment()}</div>"
            f"<script>{_SCRIPT}</script></body></html>\n"
        )
        return web.Response(text=html, content_type="text/html")


def _money(value: str | None, currency: str) -> str:
    if value is None:
        return "unknown"
    return f"{Decimal(value):,.2f} {escape(currency)}"
