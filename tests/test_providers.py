from __future__ import annotations

import socket
from decimal import Decimal
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from guard.errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError
from guard.providers import Clickatell, OneClickDZ
from guard.testing import Emulator, Fault, Route
from guard.typing import Provider

if TYPE_CHECKING:
    pass

KEY = "sk_test_0123456789abcdef"
USER = "acme"
PASSWORD = "hunter2-secret"
API_ID = "3512345"


@pytest.fixture(name="oneclick")
def _oneclick(emu: Emulator) -> OneClickDZ:
    emu.add_oneclickdz(KEY, "1326.13")
    return emu.oneclickdz(KEY)


@pytest.fixture(name="clickatell")
def _clickatell(emu: Emulator) -> Clickatell:
    emu.add_clickatell(USER, PASSWORD, API_ID, "123.00")
    return emu.clickatell(USER, PASSWORD, API_ID)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class TestOneClickDZConstruction:
    def test_protocol(self) -> None:
        """OneClickDZ satisfies the Provider protocol."""
        provider = OneClickDZ(KEY)

        assert isinstance(provider, Provider)
        assert ("oneclickdz", "DZD") == (provider.name, provider.currency)
        assert "https://api.oneclickdz.com" == provider.base_url
        assert 10.0 == provider.timeout

    def test_repr_hides_key(self) -> None:
        """The key appears in neither repr nor str."""
        provider = OneClickDZ(KEY, base_url="https://example.test/")

        assert KEY not in repr(provider)
        assert KEY not in str(provider)
        assert "OneClickDZ(base_url='https://example.test', timeout=10.0)" == repr(
            provider
        )

    def test_account_id(self) -> None:
        """account_id is stable, 24 hex characters, and reveals no key."""
        a = OneClickDZ(KEY)
        b = OneClickDZ(KEY, base_url="https://api.oneclickdz.com/", timeout=1)

        assert a.account_id == b.account_id
        assert 24 == len(a.account_id)
        int(a.account_id, 16)
        assert KEY not in a.account_id
        assert a.account_id != OneClickDZ(KEY + "x").account_id
        assert a.account_id != OneClickDZ(KEY, base_url="http://x.test").account_id

    @pytest.mark.parametrize(
        "spelling",
        [
            "HTTP://HOST",
            "http://host:80",
            "http://host/",
            "http://Host:80//",
            "hTTp://HOST/",
        ],
    )
    def test_one_account_whatever_the_spelling(self, spelling: str) -> None:
        """Case, a default port and trailing slashes do not make a new account."""
        provider = OneClickDZ(KEY, base_url=spelling)

        assert "http://host" == provider.base_url
        assert OneClickDZ(KEY, base_url="http://host").account_id == (
            provider.account_id
        )

    @pytest.mark.parametrize(
        ("spelling", "expected"),
        [
            ("https://API.Example:443/", "https://api.example"),
            ("https://api.example:8443", "https://api.example:8443"),
            ("http://api.example:443", "http://api.example:443"),
            ("https://Bücher.Example/v3/", "https://xn--bcher-kva.example/v3"),
            ("http://[::1]:80/", "http://[::1]"),
            ("http://host/Base/Path/", "http://host/Base/Path"),
        ],
    )
    def test_normalised_base_url(self, spelling: str, expected: str) -> None:
        """base_url is kept in one spelling: that is the one requests use."""
        assert expected == OneClickDZ(KEY, base_url=spelling).base_url
        assert (
            expected == Clickatell(USER, PASSWORD, API_ID, base_url=spelling).base_url
        )

    def test_other_accounts_stay_apart(self) -> None:
        """Another port, scheme or path is another account."""
        ids = {
            OneClickDZ(KEY, base_url=url).account_id
            for url in (
                "http://host",
                "https://host",
                "http://host:8080",
                "http://host/other",
            )
        }

        assert 4 == len(ids)

    def test_frozen(self) -> None:
        """Providers are immutable values."""
        provider = OneClickDZ(KEY)

        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            provider.api_key = "other"  # type: ignore[misc]
        assert OneClickDZ(KEY) == provider

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"api_key": ""}, ValueError, "api_key must not be empty"),
            ({"api_key": 123}, TypeError, "api_key must be a str"),
            ({"api_key": f" {KEY}"}, ValueError, "api_key must not start or end"),
            ({"api_key": f"{KEY}\r\nX: y"}, ValueError, "api_key must not contain"),
            ({"api_key": KEY, "base_url": "ftp://x.test"}, ValueError, "base_url"),
            (
                {"api_key": KEY, "base_url": "api.oneclickdz.com"},
                ValueError,
                "base_url",
            ),
            ({"api_key": KEY, "base_url": "http://[bad"}, ValueError, "base_url"),
            ({"api_key": KEY, "base_url": b"http://x"}, TypeError, "base_url"),
            (
                {"api_key": KEY, "base_url": "https://u:p@x.test"},
                ValueError,
                "credentials",
            ),
            ({"api_key": KEY, "base_url": "https://x.test/?a=1"}, ValueError, "query"),
            ({"api_key": KEY, "timeout": 0}, ValueError, "timeout"),
            ({"api_key": KEY, "timeout": float("nan")}, ValueError, "timeout"),
            ({"api_key": KEY, "timeout": "5"}, TypeError, "timeout"),
            ({"api_key": KEY, "timeout": True}, TypeError, "timeout"),
        ],
    )
    def test_bad_input(
        self, kwargs: dict[str, Any], error: type[Exception], match: str
    ) -> None:
        """Bad arguments fail fast, naming the parameter, never echoing the key."""
        with pytest.raises(error, match=match) as ei:
            OneClickDZ(**kwargs)

        assert KEY not in str(ei.value)


class TestOneClickDZFetch:
    @pytest.mark.parametrize(
        "amount",
        [
            Decimal("1326.13"),
            Decimal(123),
            Decimal(0),
            Decimal("0.01"),
            Decimal("123456789012345.67"),
            Decimal(10) ** 20,
        ],
    )
    async def test_balance(
        self, emu: Emulator, session: aiohttp.ClientSession, amount: Decimal
    ) -> None:
        """The balance comes back as the exact Decimal the API wrote."""
        emu.add_oneclickdz(KEY, amount)

        balance = await emu.oneclickdz(KEY).fetch_balance(session)

        assert amount == balance
        assert amount.as_tuple() == balance.as_tuple()

    async def test_request(
        self, emu: Emulator, session: aiohttp.ClientSession, oneclick: OneClickDZ
    ) -> None:
        """One GET with the key in X-Access-Token, never in the URL."""
        sent: list[Any] = []

        async def on_start(_: object, __: object, params: Any) -> None:
            sent.append(params)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        async with aiohttp.ClientSession(trace_configs=[trace]) as traced:
            assert Decimal("1326.13") == await oneclick.fetch_balance(traced)

        assert 1 == len(sent)
        assert "GET" == sent[0].method
        assert f"{emu.url}/v3/account/balance" == str(sent[0].url)
        assert KEY == sent[0].headers["X-Access-Token"]
        (record,) = emu.requests
        assert Route.ONECLICKDZ_BALANCE == record.route
        assert {} == record.query
        assert "[secure]" == record.headers["X-Access-Token"]
        assert KEY not in repr(emu.requests)

    async def test_invalid_key(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """An unknown key is a ProviderAuthError that never shows the key."""
        with pytest.raises(ProviderAuthError) as ei:
            await emu.oneclickdz(KEY).fetch_balance(session)

        assert ("INVALID_ACCESS_TOKEN", 401) == (ei.value.code, ei.value.status)
        assert KEY not in str(ei.value)
        assert KEY not in repr(ei.value)

    async def test_err_auth(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """The ERR_AUTH alias is an auth error too."""
        emu.invalid_token_code = "ERR_AUTH"

        with pytest.raises(ProviderAuthError) as ei:
            await emu.oneclickdz(KEY).fetch_balance(session)

        assert "ERR_AUTH" == ei.value.code

    async def test_ip_blocked(
        self, emu: Emulator, session: aiohttp.ClientSession, oneclick: OneClickDZ
    ) -> None:
        """After 5 bad keys even a good key meets IP_BLOCKED with a cooldown."""
        for _ in range(5):
            with pytest.raises(ProviderAuthError):
                await emu.oneclickdz("wrong-key").fetch_balance(session)

        with pytest.raises(ProviderAuthError) as ei:
            await oneclick.fetch_balance(session)

        assert ("IP_BLOCKED", 403, 900.0) == (
            ei.value.code,
            ei.value.status,
            ei.value.retry_after,
        )

    async def test_ip_blocked_without_header(
        self, emu: Emulator, session: aiohttp.ClientSession, oneclick: OneClickDZ
    ) -> None:
        """IP_BLOCKED without Retry-After assumes the documented 15 minutes."""
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(403, "IP_BLOCKED"))

        with pytest.raises(ProviderAuthError) as ei:
            await oneclick.fetch_balance(session)

        assert 900.0 == ei.value.retry_after

    async def test_ip_not_allowed(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A key whitelisted for other IPs is refused."""
        emu.add_oneclickdz(KEY, 5, allowed_ips=["10.0.0.1"])

        with pytest.raises(ProviderAuthError) as ei:
            await emu.oneclickdz(KEY).fetch_balance(session)

        assert ("IP_NOT_ALLOWED", 403) == (ei.value.code, ei.value.status)

    async def test_api_disabled(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A disabled key is refused."""
        emu.add_oneclickdz(KEY, 5, disabled=True)

        with pytest.raises(ProviderAuthError) as ei:
            await emu.oneclickdz(KEY).fetch_balance(session)

        assert ("API_DISABLED", 403) == (ei.value.code, ei.value.status)

    @pytest.mark.parametrize("status", [400, 401])
    async def test_missing_token(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        oneclick: OneClickDZ,
        status: int,
    ) -> None:
        """MISSING_ACCESS_TOKEN is an auth error at either documented status."""
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(status, "MISSING_ACCESS_TOKEN", "token required"),
        )

        with pytest.raises(ProviderAuthError) as ei:
            await oneclick.fetch_balance(session)

        assert ("MISSING_ACCESS_TOKEN", status) == (ei.value.code, ei.value.status)

    @pytest.mark.parametrize(
        ("fault", "retry_after"),
        [
            (Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after=5), 5.0),
            (Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after=86400), 86400.0),
            (Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after="soon"), None),
            (
                Fault.oneclickdz(
                    429,
                    "RATE_LIMIT_EXCEEDED",
                    retry_after="Wed, 21 Oct 2015 07:28:00 GMT",
                ),
                0.0,
            ),
            (Fault(429, body="Too Many Requests"), None),
            (Fault.oneclickdz(500, "INTERNAL_SERVER_ERROR"), None),
            (Fault.oneclickdz(500, "INTERNAL_ERROR"), None),
            (Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"), None),
            (Fault.oneclickdz(503, "AUTH_UNAVAILABLE", retry_after=5), 5.0),
            (Fault.html(502), None),
            (Fault.html(503, "Service unavailable"), None),
            (Fault(504), None),
            (Fault(408), None),
        ],
    )
    async def test_transient(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        oneclick: OneClickDZ,
        fault: Fault,
        retry_after: float | None,
    ) -> None:
        """429, 5xx, 408 and AUTH_UNAVAILABLE are plain BalanceUnavailable."""
        emu.fail(Route.ONECLICKDZ_BALANCE, fault)

        with pytest.raises(BalanceUnavailable) as ei:
            await oneclick.fetch_balance(session)

        assert BalanceUnavailable is type(ei.value)
        assert (fault.status, retry_after) == (ei.value.status, ei.value.retry_after)

    @pytest.mark.parametrize(
        "fault",
        [
            Fault(401, json={"message": "Unauthorized"}),
            Fault.html(403, "Forbidden"),
        ],
    )
    async def test_auth_by_status(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        oneclick: OneClickDZ,
        fault: Fault,
    ) -> None:
        """401/403 without a known code are auth errors."""
        emu.fail(Route.ONECLICKDZ_BALANCE, fault)

        with pytest.raises(ProviderAuthError) as ei:
            await oneclick.fetch_balance(session)

        assert (None, fault.status) == (ei.value.code, ei.value.status)

    @pytest.mark.parametrize(
        "fault",
        [
            Fault(
                404,
                json={
                    "message": "Route GET:/v3/account/balance not found",
                    "error": "Not Found",
                    "statusCode": 404,
                },
            ),
            Fault.oneclickdz(404, "NOT_FOUND"),
            Fault.oneclickdz(400, "ERR_VALIDATION"),
            Fault(
                200,
                body='{"success":true,"data":{"balance":13',
                content_type="application/json",
            ),
            Fault(200, json={"success": False, "error": {"message": "no"}}),
            Fault(200, body="null", content_type="application/json"),
            Fault(200, body='{"success":true,"data":{"balance":NaN}}'),
            Fault(200, body='{"success":true,"data":{"balance":Infinity}}'),
            Fault(200, json=[{"balance": 5}]),
            Fault(200, json={"success": True, "data": {"balance": "1326.13"}}),
            Fault(200, json={"success": True, "data": {"balance": True}}),
            Fault(200, json={"success": True, "data": {"balance": None}}),
            Fault(200, json={"success": True, "data": {}}),
            Fault.html(200, "OK"),
            Fault(200, body=b'{"success":true,"data":{"balance":1}}' + b" " * 70000),
            Fault(302, headers={"Location": "/v3/ping"}),
        ],
    )
    async def test_unreadable(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        oneclick: OneClickDZ,
        fault: Fault,
    ) -> None:
        """Other 4xx, redirects and 200s without a finite numeric balance."""
        emu.fail(Route.ONECLICKDZ_BALANCE, fault)

        with pytest.raises(ProviderResponseError) as ei:
            await oneclick.fetch_balance(session)

        assert fault.status == ei.value.status
        assert 0 == emu.count(Route.ONECLICKDZ_PING)

    async def test_raise_for_status_session(
        self, emu: Emulator, oneclick: OneClickDZ
    ) -> None:
        """A session that raises for status does not hide the error code."""
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(403, "API_DISABLED"))

        async with aiohttp.ClientSession(raise_for_status=True) as session:
            with pytest.raises(ProviderAuthError) as ei:
                await oneclick.fetch_balance(session)

        assert "API_DISABLED" == ei.value.code

    async def test_timeout(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """An answer slower than the timeout is BalanceUnavailable."""
        emu.add_oneclickdz(KEY, 5)
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.slow(2))

        with pytest.raises(BalanceUnavailable, match=r"no answer within 0\.05 s") as ei:
            await emu.oneclickdz(KEY, timeout=0.05).fetch_balance(session)

        assert BalanceUnavailable is type(ei.value)
        assert ei.value.status is None

    async def test_dropped(
        self, emu: Emulator, session: aiohttp.ClientSession, oneclick: OneClickDZ
    ) -> None:
        """A connection closed without an answer is BalanceUnavailable."""
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault(drop=True), times=2)

        with pytest.raises(BalanceUnavailable, match="request failed") as ei:
            await oneclick.fetch_balance(session)

        assert BalanceUnavailable is type(ei.value)
        assert isinstance(ei.value.__cause__, aiohttp.ClientError)

    async def test_refused(self, session: aiohttp.ClientSession) -> None:
        """An unreachable host is BalanceUnavailable."""
        provider = OneClickDZ(KEY, base_url=closed_port_url())

        with pytest.raises(BalanceUnavailable) as ei:
            await provider.fetch_balance(session)

        assert BalanceUnavailable is type(ei.value)
        assert KEY not in str(ei.value)

    async def test_sandbox(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """A sandbox key reads its configured balance."""
        emu.add_oneclickdz(KEY, 777, key_type="SANDBOX")

        assert Decimal(777) == await emu.oneclickdz(KEY).fetch_balance(session)


class TestClickatellConstruction:
    def test_protocol(self) -> None:
        """Clickatell satisfies the Provider protocol."""
        provider = Clickatell(USER, PASSWORD, API_ID)

        assert isinstance(provider, Provider)
        assert ("clickatell", "credits") == (provider.name, provider.currency)
        assert "https://api.clickatell.com" == provider.base_url

    def test_repr_hides_secrets(self) -> None:
        """Password and api_id appear in neither repr nor str."""
        provider = Clickatell(USER, PASSWORD, API_ID)

        for text in (repr(provider), str(provider)):
            assert PASSWORD not in text
            assert API_ID not in text
        assert USER in repr(provider)

    def test_account_id(self) -> None:
        """account_id follows user and api_id, not the password."""
        a = Clickatell(USER, PASSWORD, API_ID)

        assert a.account_id == Clickatell(USER, "new-password", API_ID).account_id
        assert a.account_id != Clickatell(USER, PASSWORD, "3512346").account_id
        assert a.account_id != Clickatell("other", PASSWORD, API_ID).account_id
        assert a.account_id != OneClickDZ(API_ID).account_id
        assert 24 == len(a.account_id)
        assert API_ID not in a.account_id

    @pytest.mark.parametrize(
        ("args", "kwargs", "error", "match"),
        [
            (("", PASSWORD, API_ID), {}, ValueError, "user"),
            ((USER, "", API_ID), {}, ValueError, "password must not be empty"),
            ((USER, PASSWORD, ""), {}, ValueError, "api_id must not be empty"),
            ((USER, PASSWORD, 3512345), {}, TypeError, "api_id must be a str"),
            ((USER, f"{PASSWORD}\n", API_ID), {}, ValueError, "password"),
            (
                (USER, PASSWORD, API_ID),
                {"base_url": "mailto:x@y"},
                ValueError,
                "base_url",
            ),
            ((USER, PASSWORD, API_ID), {"timeout": -1}, ValueError, "timeout"),
        ],
    )
    def test_bad_input(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: type[Exception],
        match: str,
    ) -> None:
        """Bad arguments fail fast, naming the parameter, never echoing secrets."""
        with pytest.raises(error, match=match) as ei:
            Clickatell(*args, **kwargs)

        assert PASSWORD not in str(ei.value)
        assert str(API_ID) not in str(ei.value)


class TestClickatellFetch:
    @pytest.mark.parametrize(
        ("options", "credits", "expected"),
        [
            ({}, "123.00", Decimal("123.00")),
            ({"clickatell_label": "Credits"}, "123.00", Decimal("123.00")),
            ({"clickatell_places": 1}, "12.5", Decimal("12.5")),
            ({"clickatell_places": 2}, "0", Decimal("0.00")),
            ({"clickatell_trailing_space": True}, "7.25", Decimal("7.25")),
            ({"clickatell_line_end": "\r\n"}, "100", Decimal(100)),
            (
                {
                    "clickatell_line_end": "\n",
                    "clickatell_trailing_space": True,
                    "clickatell_label": "Credits",
                },
                "5",
                Decimal(5),
            ),
            ({}, "99999999999999.999", Decimal("99999999999999.999")),
        ],
    )
    async def test_balance(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        clickatell: Clickatell,
        options: dict[str, Any],
        credits: str,
        expected: Decimal,
    ) -> None:
        """Every balance rendering is read as the exact Decimal."""
        for name, value in options.items():
            setattr(emu, name, value)
        emu.set_balance(USER, credits)

        balance = await clickatell.fetch_balance(session)

        assert expected == balance
        assert expected.as_tuple() == balance.as_tuple()

    async def test_form_body_only(self, emu: Emulator, clickatell: Clickatell) -> None:
        """Credentials travel in a POST form body, never in the URL."""
        sent: list[Any] = []

        async def on_start(_: object, __: object, params: Any) -> None:
            sent.append(params)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            await clickatell.fetch_balance(session)

        assert 1 == len(sent)
        assert "POST" == sent[0].method
        assert f"{emu.url}/http/getbalance" == str(sent[0].url)
        (record,) = emu.requests
        assert {} == record.query
        assert {
            "user": USER,
            "password": "[secure]",
            "api_id": "[secure]",
        } == record.form
        assert PASSWORD not in repr(record)
        assert API_ID not in repr(record)

    @pytest.mark.parametrize(
        ("password", "api_id", "setup", "code"),
        [
            ("wrong", API_ID, {}, "001"),
            ("wrong", API_ID, {"clickatell_login_error": 2}, "002"),
            (PASSWORD, "9999999", {}, "108"),
            ("wrong", API_ID, {"clickatell_code_digits": 4}, "001"),
        ],
    )
    async def test_bad_credentials(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        clickatell: Clickatell,
        password: str,
        api_id: str,
        setup: dict[str, Any],
        code: str,
    ) -> None:
        """Refused credentials are auth errors with a 3-digit code."""
        for name, value in setup.items():
            setattr(emu, name, value)

        with pytest.raises(ProviderAuthError) as ei:
            await emu.clickatell(USER, password, api_id).fetch_balance(session)

        assert (code, 200) == (ei.value.code, ei.value.status)
        assert password not in str(ei.value)
        assert api_id not in str(ei.value)

    async def test_unknown_user(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """An unknown user is refused like a wrong password."""
        with pytest.raises(ProviderAuthError) as ei:
            await emu.clickatell(USER, PASSWORD, API_ID).fetch_balance(session)

        assert "001" == ei.value.code

    async def test_frozen(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """A frozen account is an auth error."""
        emu.add_clickatell(USER, PASSWORD, API_ID, 5, frozen=True)

        with pytest.raises(ProviderAuthError) as ei:
            await emu.clickatell(USER, PASSWORD, API_ID).fetch_balance(session)

        assert "004" == ei.value.code

    async def test_ip_lockdown(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """An IP lockdown violation is an auth error."""
        emu.add_clickatell(USER, PASSWORD, API_ID, 5, allowed_ips=["10.1.1.1"])

        with pytest.raises(ProviderAuthError) as ei:
            await emu.clickatell(USER, PASSWORD, API_ID).fetch_balance(session)

        assert "007" == ei.value.code

    async def test_internal_error(
        self, emu: Emulator, session: aiohttp.ClientSession, clickatell: Clickatell
    ) -> None:
        """ERR 901 is transient."""
        emu.fail(
            Route.CLICKATELL_GETBALANCE, Fault.clickatell_err(901, "Internal error")
        )

        with pytest.raises(BalanceUnavailable) as ei:
            await clickatell.fetch_balance(session)

        assert BalanceUnavailable is type(ei.value)

    @pytest.mark.parametrize(
        ("fault", "code"),
        [
            (
                Fault.clickatell_err(101, "Invalid or missing parameters", digits=4),
                "101",
            ),
            (Fault(200, body="Balance: 12"), None),
            (Fault(200, body=""), None),
            (Fault(200, body="Credit: twelve"), None),
        ],
    )
    async def test_unreadable(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        clickatell: Clickatell,
        fault: Fault,
        code: str | None,
    ) -> None:
        """Other ERR codes and unparseable bodies are ProviderResponseError."""
        emu.fail(Route.CLICKATELL_GETBALANCE, fault)

        with pytest.raises(ProviderResponseError) as ei:
            await clickatell.fetch_balance(session)

        assert code == ei.value.code

    @pytest.mark.parametrize(
        ("fault", "retry_after"),
        [
            (Fault.html(503, "Service unavailable"), None),
            (Fault(429, headers={"Retry-After": "30"}), 30.0),
            (Fault(401, body="ERR: 001, Authentication failed"), None),
            (Fault(500, body="Credit: 5"), None),
        ],
    )
    async def test_non_200(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        clickatell: Clickatell,
        fault: Fault,
        retry_after: float | None,
    ) -> None:
        """Any status but 200 is BalanceUnavailable, whatever the body."""
        emu.fail(Route.CLICKATELL_GETBALANCE, fault)

        with pytest.raises(BalanceUnavailable) as ei:
            await clickatell.fetch_balance(session)

        assert BalanceUnavailable is type(ei.value)
        assert (fault.status, retry_after) == (ei.value.status, ei.value.retry_after)

    async def test_dropped(
        self, emu: Emulator, session: aiohttp.ClientSession, clickatell: Clickatell
    ) -> None:
        """A POST whose connection drops is BalanceUnavailable."""
        emu.fail(Route.CLICKATELL_GETBALANCE, Fault(drop=True))

        with pytest.raises(BalanceUnavailable):
            await clickatell.fetch_balance(session)

        assert 1 == emu.count(Route.CLICKATELL_GETBALANCE)

    async def test_refused(self, session: aiohttp.ClientSession) -> None:
        """An unreachable host is BalanceUnavailable and shows no secret."""
        provider = Clickatell(USER, PASSWORD, API_ID, base_url=closed_port_url())

        with pytest.raises(BalanceUnavailable) as ei:
            await provider.fetch_balance(session)

        assert PASSWORD not in str(ei.value)
        assert API_ID not in str(ei.value)


class TestSecretsInErrors:
    async def test_echoed_secret_is_masked(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A server echoing the key in its message never leaks it."""

        async def echo(request: web.Request) -> web.Response:
            key = request.headers["X-Access-Token"]
            return web.json_response(
                {
                    "success": False,
                    "error": {"code": "INVALID_ACCESS_TOKEN", "message": f"bad {key}"},
                },
                status=401,
            )

        app = web.Application()
        app.router.add_get("/v3/account/balance", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            provider = OneClickDZ(KEY, base_url=f"http://127.0.0.1:{port}")
            with pytest.raises(ProviderAuthError) as ei:
                await provider.fetch_balance(session)
        finally:
            await runner.cleanup()

        assert "bad [secure]" in str(ei.value)
        assert KEY not in repr(SimpleNamespace(e=ei.value, r=ei.value.reason))
