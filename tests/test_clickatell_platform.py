"""
`guard.providers.ClickatellPlatform`: its parser (examples and hypothesis),
its balance over real loopback HTTP against the emulator, and its spend
rule in the client middleware.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guard import BalanceGuard, InsufficientBalance
from guard.aiohttp import clickatell_platform_rules, guard_client_middleware
from guard.errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError
from guard.providers import ClickatellPlatform
from guard.providers._clickatell_platform import parse_balance
from guard.testing import Emulator, Fault, Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "platform-k3y-s3cret"


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        yield emu


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestParser:
    def test_documented_body(self) -> None:
        """The documented body reads to an exact Decimal and its currency."""
        body = b'{"balance": 1267.92865, "currency": "ZAR"}'

        assert (Decimal("1267.92865"), "ZAR") == parse_balance(200, body)

    @pytest.mark.parametrize("status", [200, 201, 202])
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (
                b'{"error": "Invalid or missing Integration API Key"}',
                ProviderResponseError,
            ),
            (b'{"errorCode": 1, "error": "Invalid key"}', ProviderAuthError),
            (b'{"errorCode": "1", "error": "Invalid key"}', ProviderAuthError),
            (b'{"errorCode": 19, "error": "retry"}', BalanceUnavailable),
            (b'{"balance": 5, "currency": "ZAR", "errorCode": 2}', ProviderAuthError),
            (b'{"balance": 5, "currency": "ZAR", "error": "x"}', ProviderResponseError),
            (
                b'{"balance": 5, "currency": "ZAR", "errorCode": 999}',
                ProviderResponseError,
            ),
            (
                b'{"messages": [], "errorCode": 108, "error": "Invalid key"}',
                ProviderResponseError,
            ),
            (b'{"error": {"code": 7, "description": "IP"}}', ProviderAuthError),
            (b'{"currency": "ZAR"}', ProviderResponseError),
            (b'{"balance": "12.5", "currency": "ZAR"}', ProviderResponseError),
            (b'{"balance": null, "currency": "ZAR"}', ProviderResponseError),
            (b'{"balance": true, "currency": "ZAR"}', ProviderResponseError),
            (b'{"balance": NaN, "currency": "ZAR"}', ProviderResponseError),
            (b'{"balance": 1e400, "currency": "ZAR"}', ProviderResponseError),
            (b'{"balance": 12}', ProviderResponseError),
            (b'{"balance": 12, "currency": ""}', ProviderResponseError),
            (b"[1267.92865]", ProviderResponseError),
            (b"Credit: 12", ProviderResponseError),
            (b"", ProviderResponseError),
        ],
    )
    def test_2xx_with_an_error(
        self, status: int, body: bytes, expected: type[BalanceUnavailable]
    ) -> None:
        """A 2xx body with an error, or without a finite balance, is an error."""
        with pytest.raises(BalanceUnavailable) as ei:
            parse_balance(status, body)

        assert expected is type(ei.value)

    def test_secret_echo_masked(self) -> None:
        """A key the provider echoes never reaches the error message."""
        from guard.providers import Secret

        body = json.dumps({"errorCode": 1, "error": f"bad key {KEY}"}).encode()

        with pytest.raises(ProviderAuthError) as ei:
            parse_balance(200, body, redact=(Secret(KEY),))

        assert KEY not in str(ei.value)
        assert KEY not in repr(ei.value)

    def test_request_id(self) -> None:
        """A request id in an error body is kept, cleaned; a non-string one is not."""
        body = b'{"errorCode": 19, "error": "x", "requestId": "r-1\\n2"}'
        with pytest.raises(BalanceUnavailable) as ei:
            parse_balance(200, body)
        assert "r-1 2" == ei.value.request_id

        with pytest.raises(BalanceUnavailable) as ei:
            parse_balance(503, b'{"requestId": 5}')
        assert ei.value.request_id is None

    def test_retry_after(self) -> None:
        """A 429 carries its Retry-After to the engine."""
        with pytest.raises(BalanceUnavailable) as ei:
            parse_balance(429, b"", retry_after="3")

        assert 3.0 == ei.value.retry_after

    @given(
        st.decimals(
            min_value=Decimal("-1e12"),
            max_value=Decimal("1e12"),
            places=5,
            allow_nan=False,
            allow_infinity=False,
        ),
        st.sampled_from(["ZAR", "USD", "EUR", "NGN", "KES"]),
        st.sampled_from([200, 201, 202]),
    )
    def test_balances_round_trip(
        self, balance: Decimal, currency: str, status: int
    ) -> None:
        """Every 5-decimal balance reads back exactly, in its currency."""
        body = f'{{"balance": {balance}, "currency": "{currency}"}}'.encode()

        assert (balance, currency) == parse_balance(status, body)

    @given(st.integers(min_value=100, max_value=599), st.binary(max_size=300))
    def test_any_answer_reads_or_raises_a_guard_error(
        self, status: int, body: bytes
    ) -> None:
        """Whatever arrives, the parser returns a balance or a BalanceUnavailable."""
        try:
            amount, currency = parse_balance(status, body)
        except BalanceUnavailable:
            return
        assert 200 <= status < 300
        assert amount.is_finite()
        assert currency

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["balance", "currency", "error", "errorCode", "messages", "x"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=10,
        ),
        st.sampled_from([200, 202, 400, 401, 403, 429, 500, 503]),
    )
    def test_any_json_reads_or_raises_a_guard_error(
        self, doc: object, status: int
    ) -> None:
        """Any JSON document gives a balance only with no error member on a 2xx."""
        body = json.dumps(doc).encode()
        try:
            parse_balance(status, body)
        except BalanceUnavailable:
            return
        assert isinstance(doc, dict)
        assert 200 <= status < 300
        assert "error" not in doc or doc["error"] in (None, False, "")
        assert doc.get("errorCode") is None


class TestProvider:
    def test_key_never_shown(self) -> None:
        """The key is in no repr, and the default base URL is the Platform's."""
        provider = ClickatellPlatform(KEY)

        assert KEY not in repr(provider)
        assert "https://platform.clickatell.com" == provider.base_url
        assert "clickatell-platform" == provider.name

    @pytest.mark.parametrize(
        ("balance", "currency"),
        [
            ("1267.92865", "ZAR"),
            ("0.00001", "USD"),
            ("987654321.12345", "EUR"),
            ("0", "NGN"),
        ],
    )
    async def test_round_trip_over_http(
        self,
        emu: Emulator,
        http: aiohttp.ClientSession,
        balance: str,
        currency: str,
    ) -> None:
        """5-decimal balances in several currencies come back exactly."""
        emu.add_clickatell_platform(KEY, balance, currency=currency)
        provider = emu.clickatell_platform(KEY)

        assert Decimal(balance) == await provider.fetch_balance(http)
        assert currency == provider.currency

    async def test_currency_of_the_guard(self, emu: Emulator) -> None:
        """Balances and refusals are in the account's billing currency."""
        emu.add_clickatell_platform(KEY, "10.5", currency="USD")
        provider = emu.clickatell_platform(KEY)
        async with BalanceGuard() as guard:
            balance = await guard.balance(provider)
            with pytest.raises(InsufficientBalance) as ei:
                async with guard.reserve(provider, 11):
                    pass

        assert ("USD", Decimal("10.5")) == (balance.currency, balance.amount)
        assert "USD" == ei.value.currency

    async def test_billing_currency_is_the_currency(
        self, emu: Emulator, http: aiohttp.ClientSession
    ) -> None:
        """A configured billing currency is the provider's currency from the start."""
        emu.add_clickatell_platform(KEY, 5, currency="USD")
        provider = ClickatellPlatform(KEY, billing_currency="USD", base_url=emu.url)

        assert "USD" == provider.currency
        assert Decimal(5) == await provider.fetch_balance(http)

    async def test_billing_currency_checked(
        self, emu: Emulator, http: aiohttp.ClientSession
    ) -> None:
        """A balance in another currency than the one configured is refused."""
        emu.add_clickatell_platform(KEY, 5, currency="ZAR")
        provider = ClickatellPlatform(KEY, billing_currency="USD", base_url=emu.url)

        with pytest.raises(ProviderResponseError, match="ZAR, not USD"):
            await provider.fetch_balance(http)

    @pytest.mark.parametrize("bad", ["", " ZAR", "Z\nR"])
    def test_bad_billing_currency(self, bad: str) -> None:
        """A malformed billing currency is refused at construction."""
        with pytest.raises(ValueError, match="billing_currency"):
            ClickatellPlatform(KEY, billing_currency=bad)

    def test_billing_currency_type(self) -> None:
        """A billing currency that is not a str is a TypeError."""
        with pytest.raises(TypeError, match="billing_currency"):
            ClickatellPlatform(KEY, billing_currency=1)  # type: ignore[arg-type]

    @pytest.mark.parametrize("bare", [False, True])
    async def test_bad_key(
        self, emu: Emulator, http: aiohttp.ClientSession, bare: bool
    ) -> None:
        """A bad key is an auth error, with a body or without one."""
        emu.platform_bare_401 = bare
        provider = emu.clickatell_platform(KEY)

        with pytest.raises(ProviderAuthError) as ei:
            await provider.fetch_balance(http)

        assert 401 == ei.value.status
        assert KEY not in str(ei.value)

    @pytest.mark.parametrize(
        ("code", "status", "expected"),
        [
            (2, None, ProviderAuthError),
            (3, 200, ProviderAuthError),
            (46, 202, ProviderAuthError),
            (7, 200, ProviderAuthError),
            (18, None, BalanceUnavailable),
            (19, 200, BalanceUnavailable),
            (43, 202, BalanceUnavailable),
            (41, 200, ProviderResponseError),
        ],
    )
    async def test_account_errors_over_http(
        self,
        emu: Emulator,
        http: aiohttp.ClientSession,
        code: int,
        status: int | None,
        expected: type[BalanceUnavailable],
    ) -> None:
        """The emulator's error shapes, 2xx included, classify as the table says."""
        account = emu.add_clickatell_platform(KEY, 100)
        account.error, account.error_status = code, status

        with pytest.raises(BalanceUnavailable) as ei:
            await emu.clickatell_platform(KEY).fetch_balance(http)

        assert expected is type(ei.value)

    async def test_transient_retried(self, emu: Emulator) -> None:
        """A 'please retry' (19) in a 200 is retried within the fetch timeout."""
        emu.add_clickatell_platform(KEY, "42.00001")
        emu.fail(
            Route.CLICKATELL_PLATFORM_BALANCE,
            Fault.clickatell_platform(19, status=200),
            times=2,
        )
        async with BalanceGuard(retries=2, max_retry_after=0.01) as guard:
            balance = await guard.balance(emu.clickatell_platform(KEY))

        assert Decimal("42.00001") == balance.amount
        assert 3 == emu.count(Route.CLICKATELL_PLATFORM_BALANCE)

    async def test_raw_key_in_authorization(self, emu: Emulator) -> None:
        """The key goes in Authorization as is, and is masked in the log."""
        emu.add_clickatell_platform(KEY, 1)
        async with aiohttp.ClientSession() as http:
            await emu.clickatell_platform(KEY).fetch_balance(http)

        (record,) = emu.requests
        assert KEY not in repr(record)


def _messages(to: list[str], content: str) -> dict[str, object]:
    return {"to": to, "content": content}


class TestMessagesRule:
    async def test_guarded(self, emu: Emulator) -> None:
        """POST /messages holds recipients x parts x price; refused when short."""
        emu.add_clickatell_platform(KEY, "1.00", price_per_part="0.25")
        provider = emu.clickatell_platform(KEY)
        async with BalanceGuard() as guard:
            middleware = guard_client_middleware(
                guard,
                providers=[provider],
                rules=clickatell_platform_rules(price_per_part="0.25"),
            )
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                headers = {"Authorization": KEY}
                async with session.post(
                    f"{emu.url}/messages",
                    json=_messages(["27820000001", "27820000002"], "x" * 161),
                    headers=headers,
                ) as response:
                    assert 202 == response.status
                with pytest.raises(InsufficientBalance) as ei:
                    await session.post(
                        f"{emu.url}/messages",
                        json=_messages(["27820000001"], "x" * 161),
                        headers=headers,
                    )

        assert Decimal(0) == emu.balance(KEY)
        assert (Decimal("0.50"), Decimal(0)) == (
            ei.value.required,
            ei.value.available,
        )
        assert 1 == emu.count(Route.CLICKATELL_PLATFORM_MESSAGES)

    async def test_several_messages(self, emu: Emulator) -> None:
        """A {"messages": [...]} body is priced message by message."""
        emu.add_clickatell_platform(KEY, "0.50", price_per_part="0.25")
        provider = emu.clickatell_platform(KEY)
        async with BalanceGuard() as guard:
            middleware = guard_client_middleware(
                guard,
                providers=[provider],
                rules=clickatell_platform_rules(price_per_part="0.25"),
            )
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                with pytest.raises(InsufficientBalance) as ei:
                    await session.post(
                        f"{emu.url}/messages",
                        json={
                            "messages": [
                                _messages(["1", "2"], "hi"),
                                {"to": "3", "content": "x" * 161},
                                {"to": ["4"]},  # refused without a charge
                            ]
                        },
                        headers={"Authorization": KEY},
                    )

        assert Decimal(1) == ei.value.required

    @pytest.mark.parametrize("body", [b"not json", b'{"messages": [1]}', b"[1, 2]"])
    async def test_unreadable_not_sent(self, emu: Emulator, body: bytes) -> None:
        """A body guard cannot price is refused, never sent."""
        emu.add_clickatell_platform(KEY, 10)
        provider = emu.clickatell_platform(KEY)
        async with BalanceGuard() as guard:
            middleware = guard_client_middleware(guard, providers=[provider])
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                with pytest.raises(ValueError, match="Clickatell Platform"):
                    await session.post(
                        f"{emu.url}/messages",
                        data=body,
                        headers={
                            "Authorization": KEY,
                            "Content-Type": "application/json",
                        },
                    )

        assert 0 == emu.count(Route.CLICKATELL_PLATFORM_MESSAGES)

    async def test_two_keys_refused(self, emu: Emulator) -> None:
        """Two different Authorization headers are refused, not guessed."""
        emu.add_clickatell_platform(KEY, 10)
        provider = emu.clickatell_platform(KEY)
        async with BalanceGuard() as guard:
            middleware = guard_client_middleware(guard, providers=[provider])
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                with pytest.raises(ValueError, match="several Authorization"):
                    await session.post(
                        f"{emu.url}/messages",
                        json=_messages(["1"], "hi"),
                        headers=[("Authorization", KEY), ("Authorization", "other")],
                    )


class TestEmulator:
    def test_accounts(self) -> None:
        """Platform accounts are found by key or provider; keys are unique."""
        emu = Emulator()
        account = emu.add_clickatell_platform(KEY, 5, currency="USD")

        assert account is emu.account(KEY)
        emu.set_balance(KEY, "7.12345")
        assert Decimal("7.12345") == emu.balance(account)
        with pytest.raises(ValueError, match="exists"):
            emu.add_clickatell_platform(KEY)
        with pytest.raises(ValueError, match="empty"):
            emu.add_clickatell_platform("")
        assert KEY not in repr(account)

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            (b"nope", 400, 101),
            (b'{"to": [], "content": "x"}', 400, 41),
            (b'{"to": ["1"], "content": 5}', 400, 41),
            (b'{"to": ["1", "2"], "content": "x"}', 402, 20),
        ],
    )
    async def test_messages_refusals(
        self,
        emu: Emulator,
        http: aiohttp.ClientSession,
        body: bytes,
        status: int,
        code: int,
    ) -> None:
        """/messages refuses bad bodies and a short balance, debiting nothing."""
        emu.add_clickatell_platform(KEY, "0.30", price_per_part="0.25")
        async with http.post(
            f"{emu.url}/messages", data=body, headers={"Authorization": KEY}
        ) as response:
            doc = await response.json()

        assert (status, code) == (response.status, doc["errorCode"])
        assert Decimal("0.30") == emu.balance(KEY)
