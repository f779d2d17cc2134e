"""
The emulator core: serving and stopping, the per-route fault queue, and the
request log (masked in `._log`). The providers' routes live in
`._oneclickdz` and `._clickatell`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
from aiohttp import web
from yarl import URL

from guard.providers import Clickatell, ClickatellPlatform, OneClickDZ

from ._clickatell import ClickatellAccount, ClickatellServer
from ._clickatell_platform import PlatformAccount, PlatformServer
from ._common import AmountInput, Clock, Refused, to_decimal
from ._log import RequestRecord, read_record
from ._oneclickdz import OneClickDZServer
from ._oneclickdz_records import (
    DEFAULT_GIFT_CARDS,
    DEFAULT_INTERNET_PRODUCTS,
    DEFAULT_PLANS,
    GiftCard,
    InternetProduct,
    KeyType,
    OneClickDZAccount,
    Plan,
)
from ._routes import ROUTE_NAMES, Route, to_route

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from types import TracebackType
    from typing import Self

    from ._faults import Fault

DEMO_ONECLICKDZ_KEY: Final = "demo-oneclickdz-key"
DEMO_CLICKATELL_USER: Final = "demo"
DEMO_CLICKATELL_PASSWORD: Final = "demo-password"  # noqa: S105 - a demo account
DEMO_CLICKATELL_API_ID: Final = "3000001"
DEMO_CLICKATELL_PLATFORM_KEY: Final = "demo-clickatell-platform-key"

EMULATOR_KEY: Final = web.AppKey["Emulator"]("guard.emulator")
"""
Where ``emu.app`` keeps its `Emulator`.
"""

Account: TypeAlias = OneClickDZAccount | ClickatellAccount | PlatformAccount


@attrs.define(eq=False)
class _Queued:
    fault: Fault
    remaining: int | None


class Emulator:
    """
    An aiohttp server speaking OneClickDZ and Clickatell legacy HTTP, with
    balances that spend routes really debit.

    Use it as an async context manager, or `start` and `close` it::

        async with Emulator() as emu:
            emu.add_clickatell("user", "secret", "3000001", credits=10)
            balance = await emu.clickatell("user", "secret", "3000001").fetch_balance(s)

    Every option is also a public attribute that tests may change at any time.

    Args:
        host: Where to listen; loopback by default.
        port: The port; 0 picks a free one (see `url`).
        latency: Seconds every answer waits (real time).
        clock: Monotonic seconds for IP blocks and sessions; `advance` moves
            it forward. Defaults to `time.monotonic`.
        plans: The OneClickDZ mobile plan catalogue.
        internet_products: The OneClickDZ internet cards on sale.
        gift_cards: The OneClickDZ gift cards on sale.
        missing_token_status: Status of ``MISSING_ACCESS_TOKEN``: 401 per the
            error-handling page, 400 per the validate-token page.
        invalid_token_code: ``"INVALID_ACCESS_TOKEN"`` or its alias
            ``"ERR_AUTH"``.
        insufficient_balance_code: ``"INSUFFICIENT_BALANCE"`` or
            ``"NO_BALANCE"``.
        auth_failure_limit: Bad keys from one address before ``IP_BLOCKED``.
        ip_block_seconds: How long an address stays blocked.
        topup_statuses: The statuses a new top-up walks through, one per
            check; for example ``("PENDING", "HANDLING", "REFUNDED")``.
        send_new_balance: Whether a send answers ``data.newBalance``.
        operators: What ``/v3/ping`` reports per operator.
        clickatell_label: ``"Credit"`` (Clickatell's overview, every client)
            or ``"Credits"`` (the archived docs).
        clickatell_places: Decimal places of the balance; `None` writes it as
            stored.
        clickatell_trailing_space: Append a space after the balance.
        clickatell_line_end: ``""``, ``"\\n"`` or ``"\\r\\n"`` after replies.
        clickatell_code_digits: Width of ``ERR`` codes: 3 (``001``) or 4.
        clickatell_login_error: 1 (``Authentication failed``) or 2
            (``Unknown username or password``) for bad credentials.
        clickatell_ping_echo: Whether ``ping`` answers ``OK: <session_id>``
            rather than ``OK:``.
        session_seconds: Inactivity expiry of Clickatell sessions.
        platform_bare_401: Answer a bad Clickatell Platform key with a 401
            without a body, rather than with the code-1 error body.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        clock: Callable[[], float] | None = None,
        plans: Iterable[Plan] = DEFAULT_PLANS,
        internet_products: Iterable[InternetProduct] = DEFAULT_INTERNET_PRODUCTS,
        gift_cards: Iterable[GiftCard] = DEFAULT_GIFT_CARDS,
        missing_token_status: int = 401,
        invalid_token_code: str = "INVALID_ACCESS_TOKEN",  # noqa: S107 - an error code
        insufficient_balance_code: str = "INSUFFICIENT_BALANCE",
        auth_failure_limit: int = 5,
        ip_block_seconds: float = 900.0,
        topup_statuses: Sequence[str] = ("FULFILLED",),
        send_new_balance: bool = True,
        operators: Mapping[str, str] | None = None,
        clickatell_label: str = "Credit",
        clickatell_places: int | None = None,
        clickatell_trailing_space: bool = False,
        clickatell_line_end: str = "",
        clickatell_code_digits: int = 3,
        clickatell_login_error: int = 1,
        clickatell_ping_echo: bool = False,
        session_seconds: float = 900.0,
        platform_bare_401: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.plans = {plan.code: plan for plan in plans}
        self.internet_products = tuple(internet_products)
        self.gift_cards = tuple(gift_cards)
        self.platform_bare_401 = platform_bare_401
        self.missing_token_status = missing_token_status
        self.invalid_token_code = invalid_token_code
        self.insufficient_balance_code = insufficient_balance_code
        self.auth_failure_limit = auth_failure_limit
        self.ip_block_seconds = ip_block_seconds
        self.topup_statuses = tuple(topup_statuses)
        self.send_new_balance = send_new_balance
        self.operators = dict(
            operators
            if operators is not None
            else {
                "mobilis": "up",
                "ooredoo": "up",
                "djezzy": "up",
                "mobilisFixedPlans": "up",
            }
        )
        self.clickatell_label = clickatell_label
        self.clickatell_places = clickatell_places
        self.clickatell_trailing_space = clickatell_trailing_space
        self.clickatell_line_end = clickatell_line_end
        self.clickatell_code_digits = clickatell_code_digits
        self.clickatell_login_error = clickatell_login_error
        self.clickatell_ping_echo = clickatell_ping_echo
        self.session_seconds = session_seconds

        self._clock = Clock(clock or time.monotonic)
        self._closing = asyncio.Event()
        # One lock for both providers' debits and credits.
        lock = asyncio.Lock()
        self._oneclickdz = OneClickDZServer(self, self._clock, lock)
        self._clickatell = ClickatellServer(self, self._clock, lock)
        self._platform = PlatformServer(self, lock)
        self._faults: dict[Route, deque[_Queued]] = {}
        self._requests: list[RequestRecord] = []
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.app = self._build_app()

    @classmethod
    def with_demo_accounts(
        cls, *, host: str = "127.0.0.1", port: int = 0, **options: Any
    ) -> Emulator:
        """
        Create an emulator holding the documented demo accounts.

        - OneClickDZ key ``"demo-oneclickdz-key"`` with 10000 DZD.
        - Clickatell user ``"demo"``, password ``"demo-password"``, api_id
          ``"3000001"`` with 100 credits.
        - Clickatell Platform key ``"demo-clickatell-platform-key"`` with
          250 ZAR.

        Args:
            host: Where to listen.
            port: The port; 0 picks a free one.
            options: Any other `Emulator` option.
        """
        emu = cls(host=host, port=port, **options)
        emu.add_oneclickdz(DEMO_ONECLICKDZ_KEY, 10000, username="demo")
        emu.add_clickatell(
            DEMO_CLICKATELL_USER,
            DEMO_CLICKATELL_PASSWORD,
            DEMO_CLICKATELL_API_ID,
            100,
        )
        emu.add_clickatell_platform(DEMO_CLICKATELL_PLATFORM_KEY, 250)
        return emu

    # -- lifecycle --

    async def start(self) -> None:
        """
        Start serving on *host* and *port*.

        Raises:
            RuntimeError: It was already started.
            OSError: The address cannot be bound.
        """
        if self._runner is not None or self._closing.is_set():
            msg = "an Emulator can be started only once"
            raise RuntimeError(msg)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            # A client that gives up cancels its handler, like a real server.
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self._url = str(URL.build(scheme="http", host=self.host, port=port))

    async def close(self) -> None:
        """
        Stop serving; delayed faults end at once. Safe to call twice.
        """
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """
        The base URL, such as ``"http://127.0.0.1:41234"``.

        Raises:
            RuntimeError: The emulator is not started.
        """
        if self._url is None:
            msg = "the Emulator is not started: use `async with Emulator()`"
            raise RuntimeError(msg)
        return self._url

    # -- clock --

    def now(self) -> float:
        """
        The emulator clock: the *clock* plus everything `advance` added.
        """
        return self._clock.now()

    def advance(self, seconds: float) -> None:
        """
        Move the emulator clock forward, to expire IP blocks and sessions.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            msg = f"seconds must be zero or more, not {seconds!r}"
            raise ValueError(msg)
        self._clock.offset += seconds

    # -- accounts --

    def add_oneclickdz(
        self,
        api_key: str,
        balance: AmountInput = 0,
        *,
        key_type: KeyType = "PRODUCTION",
        disabled: bool = False,
        allowed_ips: Iterable[str] = (),
        username: str = "emulated-user",
    ) -> OneClickDZAccount:
        """
        Add a OneClickDZ API key holding *balance* DZD.

        A non-zero starting balance shows in the ledger as a ``DEPOSIT``.

        Raises:
            ValueError: The key exists, or an argument is invalid.
        """
        return self._oneclickdz.add(
            api_key,
            balance,
            key_type=key_type,
            disabled=disabled,
            allowed_ips=allowed_ips,
            username=username,
        )

    def add_clickatell(
        self,
        user: str,
        password: str,
        api_id: str,
        credits: AmountInput = 0,
        *,
        frozen: bool = False,
        credits_per_part: AmountInput = Decimal(1),
        max_credits_per_message: AmountInput | None = None,
        allowed_ips: Iterable[str] = (),
    ) -> ClickatellAccount:
        """
        Add a Clickatell legacy account holding *credits*.

        Raises:
            ValueError: The user exists, or an argument is invalid.
        """
        return self._clickatell.add(
            user,
            password,
            api_id,
            credits,
            frozen=frozen,
            credits_per_part=credits_per_part,
            max_credits_per_message=max_credits_per_message,
            allowed_ips=allowed_ips,
        )

    def add_clickatell_platform(
        self,
        api_key: str,
        balance: AmountInput = 0,
        *,
        currency: str = "ZAR",
        price_per_part: AmountInput = Decimal("0.25"),
    ) -> PlatformAccount:
        """
        Add a Clickatell Platform API key holding *balance* in *currency*;
        each SMS part it sends costs *price_per_part*.

        Raises:
            ValueError: The key exists, or an argument is invalid.
        """
        return self._platform.add(
            api_key, balance, currency=currency, price_per_part=price_per_part
        )

    def clickatell_platform(
        self, api_key: str, *, base_url: str | None = None, timeout: float = 10.0
    ) -> ClickatellPlatform:
        """
        A `guard.providers.ClickatellPlatform` pointed at this emulator.
        """
        return ClickatellPlatform(
            api_key, base_url=base_url or self.url, timeout=timeout
        )

    def account(self, account_or_key: object) -> Account:
        """
        Find an account by record, OneClickDZ key, Clickatell user, or a
        `guard.providers` provider object.

        Raises:
            KeyError: No such account.
        """
        if isinstance(
            account_or_key, OneClickDZAccount | ClickatellAccount | PlatformAccount
        ):
            return account_or_key
        found: Account | None
        if isinstance(account_or_key, ClickatellPlatform):
            found = self._platform.accounts.get(account_or_key.api_key.reveal())
        elif isinstance(account_or_key, OneClickDZ):
            found = self._oneclickdz.accounts.get(account_or_key.api_key.reveal())
        elif isinstance(account_or_key, Clickatell):
            found = self._clickatell.accounts.get(account_or_key.user)
        elif isinstance(account_or_key, str):
            found = (
                self._oneclickdz.accounts.get(account_or_key)
                or self._clickatell.accounts.get(account_or_key)
                or self._platform.accounts.get(account_or_key)
            )
        else:
            found = None
        if found is None:
            # SECURITY: the lookup value may be a key; don't echo it.
            msg = "no such emulated account"
            raise KeyError(msg)
        return found

    def balance(self, account_or_key: object) -> Decimal:
        """
        The balance of an account: DZD for OneClickDZ, credits for Clickatell.
        """
        account = self.account(account_or_key)
        if isinstance(account, OneClickDZAccount | PlatformAccount):
            return account.balance
        return account.credits

    def set_balance(self, account_or_key: object, amount: AmountInput) -> None:
        """
        Set the balance of an account; OneClickDZ logs the change in its
        ledger as a ``DEPOSIT`` or ``WITHDRAW``.
        """
        account = self.account(account_or_key)
        value = to_decimal(amount, "amount")
        if isinstance(account, OneClickDZAccount):
            self._oneclickdz.adjust(account, value - account.balance)
        elif isinstance(account, PlatformAccount):
            account.balance = value
        else:
            account.credits = value

    def oneclickdz(
        self, api_key: str, *, base_url: str | None = None, timeout: float = 10.0
    ) -> OneClickDZ:
        """
        A `guard.providers.OneClickDZ` pointed at this emulator.
        """
        return OneClickDZ(api_key, base_url=base_url or self.url, timeout=timeout)

    def clickatell(
        self,
        user: str,
        password: str,
        api_id: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> Clickatell:
        """
        A `guard.providers.Clickatell` pointed at this emulator.
        """
        return Clickatell(
            user, password, api_id, base_url=base_url or self.url, timeout=timeout
        )

    def unblock(self) -> None:
        """
        Forget every OneClickDZ IP block and counted bad key.
        """
        self._oneclickdz.unblock()

    # -- faults and the log --

    def fail(self, route: Route | str, fault: Fault, *, times: int | None = 1) -> None:
        """
        Answer the next *times* requests to *route* with *fault*.

        Faults queue up per route in the order given.

        Args:
            route: A `Route` or its name, such as ``"oneclickdz.balance"``.
            fault: The answer.
            times: How many requests it answers; `None` for all of them until
                `clear_faults`.

        Raises:
            ValueError: Unknown route or bad *times*.
        """
        name = to_route(route)
        if times is not None and (isinstance(times, bool) or times < 1):
            msg = f"times must be 1 or more, or None, not {times!r}"
            raise ValueError(msg)
        self._faults.setdefault(name, deque()).append(_Queued(fault, times))

    def clear_faults(self, route: Route | str | None = None) -> None:
        """
        Drop queued faults, for one route or all.
        """
        if route is None:
            self._faults.clear()
        else:
            self._faults.pop(to_route(route), None)

    def _next_fault(self, route: Route | None) -> Fault | None:
        queue = self._faults.get(route) if route is not None else None
        if not queue:
            return None
        head = queue[0]
        if head.remaining is not None:
            head.remaining -= 1
            if head.remaining == 0:
                queue.popleft()
        return head.fault

    @property
    def requests(self) -> list[RequestRecord]:
        """
        A copy of the request log, oldest first.
        """
        return list(self._requests)

    def count(self, route: Route | str | None = None) -> int:
        """
        How many requests reached *route* (all routes when `None`), faults
        included.
        """
        if route is None:
            return len(self._requests)
        name = to_route(route)
        return sum(1 for r in self._requests if r.route == name)

    def reset_log(self) -> None:
        """
        Empty the request log.
        """
        self._requests.clear()

    # -- the application --

    def _build_app(self) -> web.Application:
        @web.middleware
        async def emulate(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            return await self._dispatch(request, handler)

        app = web.Application(middlewares=[emulate])
        app[EMULATOR_KEY] = self
        app.on_shutdown.append(self._on_shutdown)
        self._oneclickdz.add_routes(app)
        self._clickatell.add_routes(app)
        self._platform.add_routes(app)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            # Closing the emulator cuts every pause short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    async def _dispatch(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        name = resource.name if resource is not None else None
        route = Route(name) if name in ROUTE_NAMES else None
        fault = self._next_fault(route)
        record = await self._record(request, route, fault)
        status: int | None = None
        try:
            if fault is not None and not fault.passthrough:
                await self._pause(fault.delay)
                if fault.drop:
                    if request.transport is not None:
                        request.transport.abort()
                    raise web.HTTPServiceUnavailable
                response: web.StreamResponse = fault.response()
            else:
                await self._pause(self.latency + (fault.delay if fault else 0))
                try:
                    response = await handler(request)
                except Refused as refused:
                    response = refused.response
            status = response.status
            return response
        except web.HTTPException as exc:
            status = None if fault is not None and fault.drop else exc.status
            raise
        finally:
            self._finish(record, status)

    async def _record(
        self, request: web.Request, route: Route | None, fault: Fault | None
    ) -> RequestRecord:
        self._seq += 1
        record = await read_record(
            request, seq=self._seq, route=route, fault=fault, at=self.now()
        )
        self._requests.append(record)
        return record

    def _finish(self, record: RequestRecord, status: int | None) -> None:
        # Records are frozen; swap in the answered copy if still logged.
        for i in range(len(self._requests) - 1, -1, -1):
            if self._requests[i] is record:
                self._requests[i] = attrs.evolve(record, status=status)
                return
