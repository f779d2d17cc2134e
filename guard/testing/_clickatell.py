"""
The emulated Clickatell legacy HTTP API: accounts, sessions, messages that
debit credits, and its routes.
"""

from __future__ import annotations

import hmac
import re
import secrets
from decimal import Decimal
from typing import TYPE_CHECKING

import attrs
from aiohttp import web

from guard._sms import sms_parts

from ._common import TEXT_TYPE, AmountInput, Clock, Refused, to_decimal
from ._routes import Route

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterable, Mapping

    from ._core import Emulator

_MSISDN = re.compile(r"\+?[1-9][0-9]{6,14}", re.ASCII)


def err_line(code: int | str, text: str, digits: int = 3) -> str:
    """
    The API's ``ERR: <code>, <text>`` line; every Clickatell error, scripted
    or not, is built here. An `int` code is zero-padded to *digits*.
    """
    rendered = code if isinstance(code, str) else f"{code:0{digits}d}"
    return f"ERR: {rendered}, {text}"


@attrs.define(frozen=True)
class SentMessage:
    """
    An SMS the emulated Clickatell account accepted (and paid for).
    """

    id: str
    to: str
    text: str
    parts: int
    charge: Decimal


@attrs.define(eq=False)
class ClickatellAccount:
    """
    An emulated Clickatell legacy account; change the fields freely.

    Attributes:
        user: The user name.
        password: The password.
        api_id: The HTTP API id.
        credits: The balance in credits.
        frozen: Answer ``ERR: 004, Account frozen``.
        credits_per_part: What one SMS part costs.
        max_credits_per_message: Refuse dearer messages with ``ERR: 302``.
        allowed_ips: When not empty, other client addresses get
            ``ERR: 007, IP Lockdown violation``.
        messages: Accepted messages, oldest first.
    """

    user: str
    password: str = attrs.field(repr=False)
    api_id: str = attrs.field(repr=False)
    credits: Decimal
    frozen: bool = False
    credits_per_part: Decimal = Decimal(1)
    max_credits_per_message: Decimal | None = None
    allowed_ips: tuple[str, ...] = ()
    messages: list[SentMessage] = attrs.field(factory=list, repr=False)


@attrs.define(eq=False)
class _Session:
    user: str
    expires_at: float


class ClickatellServer:
    """
    The Clickatell half of an `Emulator`: its accounts, sessions and route
    handlers. Options are read from *emu* on every request, so tests may
    change them at any time.
    """

    def __init__(self, emu: Emulator, clock: Clock, lock: asyncio.Lock) -> None:
        self._emu = emu
        self._clock = clock
        # Every debit happens under the emulator's lock, so the balances stay
        # exact however callers race.
        self._lock = lock
        self.accounts: dict[str, ClickatellAccount] = {}
        self._sessions: dict[str, _Session] = {}

    def add_routes(self, app: web.Application) -> None:
        for command, handler, route in (
            ("auth", self._auth, Route.CLICKATELL_AUTH),
            ("ping", self._ping, Route.CLICKATELL_PING),
            ("getbalance", self._getbalance, Route.CLICKATELL_GETBALANCE),
            ("sendmsg", self._sendmsg, Route.CLICKATELL_SENDMSG),
        ):
            resource = app.router.add_resource(f"/http/{command}", name=route)
            resource.add_route("GET", handler)
            resource.add_route("POST", handler)

    def add(
        self,
        user: str,
        password: str,
        api_id: str,
        credits: AmountInput,
        *,
        frozen: bool,
        credits_per_part: AmountInput,
        max_credits_per_message: AmountInput | None,
        allowed_ips: Iterable[str],
    ) -> ClickatellAccount:
        for name, value in (("user", user), ("password", password), ("api_id", api_id)):
            if not value:
                msg = f"{name} must not be empty"
                raise ValueError(msg)
        if user in self.accounts:
            msg = f"a Clickatell account for user {user!r} exists"
            raise ValueError(msg)
        account = ClickatellAccount(
            user,
            password,
            api_id,
            to_decimal(credits, "credits"),
            frozen=frozen,
            credits_per_part=to_decimal(credits_per_part, "credits_per_part"),
            max_credits_per_message=(
                None
                if max_credits_per_message is None
                else to_decimal(max_credits_per_message, "max_credits_per_message")
            ),
            allowed_ips=tuple(allowed_ips),
        )
        self.accounts[user] = account
        return account

    # -- replies --

    def _reply(self, text: str) -> web.Response:
        # Clickatell answers 200 for OK and ERR alike.
        return web.Response(
            text=text + self._emu.clickatell_line_end, content_type=TEXT_TYPE
        )

    def _err(self, code: int, text: str) -> str:
        return err_line(code, text, self._emu.clickatell_code_digits)

    def _refused(self, code: int, text: str) -> Refused:
        return Refused(self._reply(self._err(code, text)))

    async def _params(self, request: web.Request) -> dict[str, str]:
        params = dict(request.query)
        if request.method == "POST":
            posted = await request.post()
            params.update({k: v for k, v in posted.items() if isinstance(v, str)})
        return params

    def _session(self, session_id: str) -> ClickatellAccount:
        session = self._sessions.get(session_id)
        now = self._clock.now()
        if session is None or now >= session.expires_at:
            self._sessions.pop(session_id, None)
            raise self._refused(3, "Session ID expired")
        account = self.accounts.get(session.user)
        if account is None:  # the account was removed by a test
            raise self._refused(3, "Session ID expired")
        # Each use extends the session by the full inactivity window.
        session.expires_at = now + self._emu.session_seconds
        return account

    def _login(
        self, request: web.Request, params: Mapping[str, str], *, session: bool = True
    ) -> ClickatellAccount:
        session_id = params.get("session_id")
        if session and session_id:
            account = self._session(session_id)
        else:
            account = self._credentials(params)
        if account.frozen:
            raise self._refused(4, "Account frozen")
        if account.allowed_ips and request.remote not in account.allowed_ips:
            raise self._refused(7, "IP Lockdown violation")
        return account

    def _credentials(self, params: Mapping[str, str]) -> ClickatellAccount:
        bad_login = (
            self._refused(1, "Authentication failed")
            if self._emu.clickatell_login_error == 1
            else self._refused(2, "Unknown username or password")
        )
        account = self.accounts.get(params.get("user", ""))
        if account is None:
            raise bad_login
        api_id = params.get("api_id", "")
        if not api_id or not hmac.compare_digest(api_id, account.api_id):
            raise self._refused(108, "Invalid or missing API ID")
        if not hmac.compare_digest(params.get("password", ""), account.password):
            raise bad_login
        return account

    # -- routes (a `Refused` raised here is answered by the emulator core) --

    async def _auth(self, request: web.Request) -> web.Response:
        account = self._login(request, await self._params(request), session=False)
        session_id = secrets.token_hex(16)
        self._sessions[session_id] = _Session(
            account.user, self._clock.now() + self._emu.session_seconds
        )
        return self._reply(f"OK: {session_id}")

    async def _ping(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        session_id = params.get("session_id")
        if not session_id:
            raise self._refused(5, "Missing session ID")
        self._session(session_id)
        return self._reply(
            f"OK: {session_id}" if self._emu.clickatell_ping_echo else "OK:"
        )

    async def _getbalance(self, request: web.Request) -> web.Response:
        account = self._login(request, await self._params(request))
        places = self._emu.clickatell_places
        value = (
            format(account.credits, "f")
            if places is None
            else f"{account.credits:.{places}f}"
        )
        space = " " if self._emu.clickatell_trailing_space else ""
        return self._reply(f"{self._emu.clickatell_label}: {value}{space}")

    async def _sendmsg(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        account = self._login(request, params)
        to = params.get("to", "").strip()
        text = params.get("text")
        if not to or text is None:
            raise self._refused(101, "Invalid or missing parameters")
        if not text:
            raise self._refused(107, "Empty message")
        parts = sms_parts(text)
        concat = params.get("concat")
        if concat is not None:
            if not (concat.isascii() and concat.isdigit()):
                raise self._refused(101, "Invalid or missing parameters")
            if parts > int(concat):
                raise self._refused(113, "Maximum message parts exceeded")
        charge = account.credits_per_part * parts
        recipients = [n.strip() for n in to.split(",")]
        several = len(recipients) > 1
        lines = []
        async with self._lock:
            for number in recipients:
                suffix = f" To: {number}" if several else ""
                if not _MSISDN.fullmatch(number):
                    line = self._err(105, "Invalid destination address")
                elif (
                    account.max_credits_per_message is not None
                    and charge > account.max_credits_per_message
                ):
                    line = self._err(302, "Max allowed credit")
                elif account.credits < charge:
                    line = self._err(301, "No credit left")
                else:
                    account.credits -= charge
                    message = SentMessage(
                        secrets.token_hex(16), number, text, parts, charge
                    )
                    account.messages.append(message)
                    line = f"ID: {message.id}"
                lines.append(line + suffix)
        return self._reply("\n".join(lines))
