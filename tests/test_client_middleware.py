from __future__ import annotations

import io
import json
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import attrs
import pytest
from multidict import CIMultiDict
from yarl import URL

from guard import AmountError, BalanceGuard, InsufficientBalance
from guard.aiohttp import (
    SpendRequest,
    SpendRule,
    clickatell_rules,
    default_rules,
    guard_client_middleware,
    oneclickdz_rules,
)
from guard.errors import ConfigurationError
from guard.testing import Fault, Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType

    from guard.pytest_plugin import GuardEmulator

FORM = "application/x-www-form-urlencoded"
GSM_161 = "x" * 161  # two GSM-7 parts
ARABIC_71 = "م" * 71  # two UCS-2 parts


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    async with BalanceGuard(retries=0) as guard:
        yield guard


def send_body(amount: object = 300) -> dict[str, object]:
    return {"plan_code": "PREPAID_DJEZZY", "MSSIDN": "0770000000", "amount": amount}


def session_for(*middlewares: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(middlewares=middlewares)


class TestOneClickDZ:
    async def test_accepted_and_settled(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A covered send goes out; the balance its reply reports is kept."""
        oneclick = guard_emulator.oneclickdz
        rules = [attrs.evolve(rule, settle="invalidate") for rule in default_rules()]
        middleware = guard_client_middleware(guard, providers=[oneclick], rules=rules)
        async with session_for(middleware) as session:
            for _ in range(2):
                async with session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=send_body(300),
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                ) as response:
                    assert 200 == response.status

        assert Decimal(9400) == guard_emulator.balance(oneclick)
        assert 1 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)
        assert Decimal(9400) == (await guard.balance(oneclick)).amount
        assert Decimal(0) == guard.held(oneclick)

    async def test_without_new_balance_invalidated(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A reply without data.newBalance settles as before: invalidated."""
        guard_emulator.emulator.send_new_balance = False
        oneclick = guard_emulator.oneclickdz
        middleware = guard_client_middleware(
            guard, providers=[oneclick], rules=oneclickdz_rules(settle="invalidate")
        )
        async with session_for(middleware) as session:
            for _ in range(2):
                async with session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=send_body(300),
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                ) as response:
                    assert 200 == response.status

        assert 2 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)

    async def test_refused_never_sent(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A send the balance cannot cover raises and never reaches the provider."""
        oneclick = guard_emulator.oneclickdz
        guard_emulator.set_balance(oneclick, 100)
        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance) as info:
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=send_body(500),
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                )

        assert (Decimal(500), Decimal(100)) == (
            info.value.required,
            info.value.available,
        )
        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    async def test_missing_amount_not_sent(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A dynamic-plan send without an amount cannot be priced: not sent."""
        oneclick = guard_emulator.oneclickdz
        body = {"plan_code": "PREPAID_DJEZZY", "MSSIDN": "0770000000"}
        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(middleware) as session:
            with pytest.raises(AmountError, match="PREPAID_DJEZZY needs an amount"):
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=body,
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                )

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    @pytest.mark.parametrize("given", [True, False])
    async def test_unknown_account_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator, given: bool
    ) -> None:
        """A send for an account not given to the middleware is refused, unsent."""
        oneclick = guard_emulator.oneclickdz
        other = guard_emulator.emulator.add_oneclickdz("other-s3cr3t", 5000)
        providers = [oneclick] if given else []
        middleware = guard_client_middleware(guard, providers=providers)
        async with session_for(middleware) as session:
            with pytest.raises(ConfigurationError, match="/v3/mobile/send") as info:
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=send_body(300),
                    headers={"X-Access-Token": other.api_key},
                )

        assert "s3cr3t" not in str(info.value)
        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    async def test_unknown_account_allowed_with_warning(
        self,
        guard: BalanceGuard,
        guard_emulator: GuardEmulator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """With unknown="allow", such a send goes out unguarded, with a warning."""
        oneclick = guard_emulator.oneclickdz
        other = guard_emulator.emulator.add_oneclickdz("other-s3cr3t", 5000)
        middleware = guard_client_middleware(
            guard, providers=[oneclick], unknown="allow"
        )
        async with session_for(middleware) as session:
            response = await session.post(
                f"{oneclick.base_url}/v3/mobile/send",
                json=send_body(300),
                headers={"X-Access-Token": other.api_key},
            )
            response.release()

        assert 200 == response.status
        assert 0 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)
        assert "sent unguarded" in caplog.text
        assert "s3cr3t" not in caplog.text

    async def test_streamed_body_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A send whose body guard cannot read is refused as streamed, unsent."""
        oneclick = guard_emulator.oneclickdz

        async def body() -> AsyncIterator[bytes]:
            yield json.dumps(send_body(300)).encode()

        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="streamed"):
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    data=body(),
                    headers={
                        "X-Access-Token": oneclick.api_key.reveal(),
                        "Content-Type": "application/json",
                    },
                )

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    @pytest.mark.parametrize("rule", oneclickdz_rules())
    async def test_streamed_body_named_by_the_rule(self, rule: SpendRule) -> None:
        """Each OneClickDZ rule says a streamed body is streamed, not "not JSON"."""
        request = SpendRequest("POST", URL("http://x/v3/mobile/send"), {}, None)

        with pytest.raises(ValueError, match="streamed") as info:
            await rule.required(request)
        assert "not JSON" not in str(info.value)

    async def test_debit_skips_the_next_fetch(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """With settle="debit" a 200 debits the cache; a failure invalidates it."""
        oneclick = guard_emulator.oneclickdz
        middleware = guard_client_middleware(
            guard, providers=[oneclick], rules=oneclickdz_rules(settle="debit")
        )
        headers = {"X-Access-Token": oneclick.api_key.reveal()}
        url = f"{oneclick.base_url}/v3/mobile/send"
        async with session_for(middleware) as session:
            for _ in range(2):
                (
                    await session.post(url, json=send_body(100), headers=headers)
                ).release()
            assert 1 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)
            assert Decimal(9800) == (await guard.balance(oneclick)).amount

            guard_emulator.fail(Route.ONECLICKDZ_SEND, Fault.oneclickdz(500, "X"))
            (await session.post(url, json=send_body(100), headers=headers)).release()
            (await session.post(url, json=send_body(100), headers=headers)).release()

        assert 2 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)


class TestClickatell:
    @pytest.mark.parametrize(
        ("text", "recipients", "credits"),
        [
            ("hello", "213550000001", 1),
            (GSM_161, "213550000001", 2),
            (GSM_161, "213550000001,213550000002", 4),
            (ARABIC_71, "213550000001", 2),
        ],
    )
    async def test_credits_per_message(
        self,
        guard: BalanceGuard,
        guard_emulator: GuardEmulator,
        text: str,
        recipients: str,
        credits: int,
    ) -> None:
        """A send needs recipients x parts credits; one credit less is refused."""
        clickatell = guard_emulator.clickatell
        middleware = guard_client_middleware(guard, providers=[clickatell])
        form = {
            "user": clickatell.user,
            "password": clickatell.password.reveal(),
            "api_id": clickatell.api_id.reveal(),
            "to": recipients,
            "text": text,
        }
        url = f"{clickatell.base_url}/http/sendmsg"
        async with session_for(middleware) as session:
            guard_emulator.set_balance(clickatell, credits - 1)
            with pytest.raises(InsufficientBalance):
                await session.post(url, data=form)
            assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)

            guard_emulator.set_balance(clickatell, credits)
            await guard.invalidate(clickatell)
            async with session.post(url, data=form) as response:
                assert (await response.text()).startswith("ID:")

        assert Decimal(0) == guard_emulator.balance(clickatell)

    async def test_get_query(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A GET sendmsg is read from its query."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, 1)
        middleware = guard_client_middleware(guard, providers=[clickatell])
        params = {
            "user": clickatell.user,
            "password": clickatell.password.reveal(),
            "api_id": clickatell.api_id.reveal(),
            "to": "213550000001",
            "text": GSM_161,
        }
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance):
                await session.get(f"{clickatell.base_url}/http/sendmsg", params=params)

        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)

    @pytest.mark.parametrize("kind", ["multipart", "bytesio", "generator"])
    async def test_unreadable_body_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator, kind: str
    ) -> None:
        """A sendmsg body the middleware cannot read is refused, never held at 0."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, 2)
        middleware = guard_client_middleware(guard, providers=[clickatell])
        fields = {
            "user": clickatell.user,
            "password": clickatell.password.reveal(),
            "api_id": clickatell.api_id.reveal(),
            "to": "213550000001,213550000002,213550000003",
            "text": "hi",
        }
        encoded = urlencode(fields).encode()

        async def chunks() -> AsyncIterator[bytes]:
            yield encoded

        data: Any = {
            "multipart": aiohttp.FormData(fields, default_to_multipart=True),
            "bytesio": io.BytesIO(encoded),
            "generator": chunks(),
        }[kind]
        headers = {} if kind == "multipart" else {"Content-Type": FORM}
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="streamed") as info:
                await session.post(
                    f"{clickatell.base_url}/http/sendmsg", data=data, headers=headers
                )

        assert clickatell.password.reveal() not in str(info.value)
        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)
        assert Decimal(2) == guard_emulator.balance(clickatell)

    async def test_credits_per_part(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """Credits per part scale the amount."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, "1.5")
        rules = default_rules(credits_per_part="0.8")
        middleware = guard_client_middleware(guard, providers=[clickatell], rules=rules)
        form = {
            "user": clickatell.user,
            "password": clickatell.password.reveal(),
            "api_id": clickatell.api_id.reveal(),
            "to": "213550000001",
            "text": GSM_161,
        }
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance) as info:
                await session.post(f"{clickatell.base_url}/http/sendmsg", data=form)

        assert Decimal("1.6") == info.value.required


class TestRules:
    async def test_no_recursion(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """The guard's balance reads do not pass through the user's session."""
        oneclick = guard_emulator.oneclickdz
        seen: list[str] = []

        async def record(
            request: ClientRequest, handler: ClientHandlerType
        ) -> ClientResponse:
            seen.append(request.url.path)
            return await handler(request)

        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(record, middleware, record) as session:
            (
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=send_body(300),
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                )
            ).release()

        assert ["/v3/mobile/send", "/v3/mobile/send"] == seen
        assert guard_emulator.count(Route.ONECLICKDZ_BALANCE) >= 1

    async def test_custom_rule(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A SpendRule of the user's own guards another endpoint."""
        oneclick = guard_emulator.oneclickdz
        guard_emulator.set_balance(oneclick, 999)

        async def plan_price(request: SpendRequest) -> Decimal:
            return {"DJEZZY_HADAYA_1000": Decimal(1000)}[request.json()["plan_code"]]

        rule = SpendRule("post", re.compile(r"/mobile/send$"), oneclick, plan_price)
        middleware = guard_client_middleware(guard, rules=[rule])
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance):
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json={"plan_code": "DJEZZY_HADAYA_1000", "MSSIDN": "0770000000"},
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                )

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    async def test_other_requests_untouched(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """Requests no rule matches pass through without a balance check."""
        oneclick = guard_emulator.oneclickdz
        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(middleware) as session:
            (await session.get(f"{oneclick.base_url}/v3/ping")).release()

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)

    def test_validation(self) -> None:
        """Bad rules and providers fail when the middleware is built."""
        with pytest.raises(ValueError, match="path"):
            SpendRule("POST", "no-slash", lambda r, p: None, lambda r: 1)
        with pytest.raises(TypeError, match="amount"):
            SpendRule("POST", "/x", lambda r, p: None, 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="providers"):
            guard_client_middleware(providers=["oneclick"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="rules"):
            guard_client_middleware(rules=[object()])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="unknown"):
            guard_client_middleware(unknown="warn")  # type: ignore[arg-type]
        assert 1 == len(clickatell_rules())

    def test_repr_hides_secrets(self) -> None:
        """A SpendRequest's repr shows no query or user info: they may be secret."""
        url = URL(
            "https://bob:pw-1@api.clickatell.com/http/sendmsg"
            "?user=u&password=hunter2&api_id=3000001&to=1&text=hi"
        )
        request = SpendRequest("GET", url, {"X-Access-Token": "tok-9"}, b"k=key-7")

        shown = repr(request) + str(request)

        for secret in ("hunter2", "3000001", "pw-1", "bob", "tok-9", "key-7"):
            assert secret not in shown
        assert "/http/sendmsg" in shown


def clickatell_fields(
    guard_emulator: GuardEmulator, to: str, text: str
) -> list[tuple[str, str]]:
    clickatell = guard_emulator.clickatell
    return [
        ("user", clickatell.user),
        ("password", clickatell.password.reveal()),
        ("api_id", clickatell.api_id.reveal()),
        ("to", to),
        ("text", text),
    ]


class TestSpellingsOfASpend:
    """
    However a spend is spelled, the middleware counts what the server reads.
    """

    @pytest.mark.parametrize(
        "content_type",
        [
            "Application/X-WWW-Form-Urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "APPLICATION/X-WWW-FORM-URLENCODED ; Charset=UTF-8",
            "application/x-www-form-urlencoded;charset=utf-8",
        ],
    )
    async def test_form_media_type_any_case(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator, content_type: str
    ) -> None:
        """A form body is counted whatever the case or parameters of its media type."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, 3)
        middleware = guard_client_middleware(guard, providers=[clickatell])
        body = urlencode(
            clickatell_fields(guard_emulator, "213550000001,213550000002", GSM_161)
        ).encode()
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance) as info:
                await session.post(
                    f"{clickatell.base_url}/http/sendmsg",
                    data=body,
                    headers={"Content-Type": content_type},
                )

        assert Decimal(4) == info.value.required
        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)
        assert Decimal(3) == guard_emulator.balance(clickatell)

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("post", "/http/sendmsg"),
            ("Post", "/http/sendmsg/"),
            ("POST", "/HTTP/SendMsg"),
            ("get", "/http/sendmsg//"),
        ],
    )
    async def test_method_and_path_spellings(
        self,
        guard: BalanceGuard,
        guard_emulator: GuardEmulator,
        method: str,
        path: str,
    ) -> None:
        """Method case, path case and trailing slashes do not skip the guard."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, 1)
        middleware = guard_client_middleware(guard, providers=[clickatell])
        fields = clickatell_fields(guard_emulator, "213550000001", GSM_161)
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance):
                await session.request(
                    method,
                    f"{clickatell.base_url}{path}",
                    **(
                        {"params": fields}
                        if method.upper() == "GET"
                        else {"data": fields}
                    ),
                )

        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)

    @pytest.mark.parametrize(
        ("query", "form", "credits"),
        [
            # Credentials in the query, the message in the form.
            ([], [("to", "213550000001"), ("text", GSM_161)], 2),
            # Parameter names in another case.
            ([], [("TO", "213550000001"), ("Text", GSM_161)], 2),
            # Duplicates: every recipient, the longest text.
            (
                [("to", "213550000001")],
                [("to", "213550000002"), ("text", "hi"), ("text", GSM_161)],
                4,
            ),
        ],
    )
    async def test_parameters_wherever_they_are(
        self,
        guard: BalanceGuard,
        guard_emulator: GuardEmulator,
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
        credits: int,
    ) -> None:
        """Query and form, any name case and duplicates are all counted."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, credits - 1)
        middleware = guard_client_middleware(guard, providers=[clickatell])
        credentials = clickatell_fields(guard_emulator, "", "")[:3]
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance) as info:
                await session.post(
                    f"{clickatell.base_url}/http/sendmsg",
                    params=credentials + query,
                    data=form,
                )

        assert Decimal(credits) == info.value.required
        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)

    async def test_two_accounts_in_one_request_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """Two different api_id values are refused, never guessed."""
        clickatell = guard_emulator.clickatell
        middleware = guard_client_middleware(guard, providers=[clickatell])
        fields = clickatell_fields(guard_emulator, "213550000001", "hi")
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="several different 'api_id'") as info:
                await session.post(
                    f"{clickatell.base_url}/http/sendmsg",
                    data=[*fields, ("api_id", "9999999")],
                )

        assert clickatell.api_id.reveal() not in str(info.value)
        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)

    async def test_multipart_bytes_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A multipart form sent as bytes is refused: the server would read it."""
        clickatell = guard_emulator.clickatell
        guard_emulator.set_balance(clickatell, 1)
        middleware = guard_client_middleware(guard, providers=[clickatell])
        boundary = "guard-boundary"
        body = (
            "".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n"
                for name, value in clickatell_fields(
                    guard_emulator, "213550000001,213550000002", "hi"
                )
            )
            + f"--{boundary}--\r\n"
        )
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="multipart"):
                await session.post(
                    f"{clickatell.base_url}/http/sendmsg",
                    data=body.encode(),
                    headers={
                        "Content-Type": f"Multipart/Form-Data; boundary={boundary}"
                    },
                )

        assert 0 == guard_emulator.count(Route.CLICKATELL_SENDMSG)
        assert Decimal(1) == guard_emulator.balance(clickatell)

    @pytest.mark.parametrize("content_type", ["text/plain", "APPLICATION/JSON"])
    async def test_oneclickdz_json_whatever_the_media_type(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator, content_type: str
    ) -> None:
        """A OneClickDZ send is read as JSON whatever its Content-Type says."""
        oneclick = guard_emulator.oneclickdz
        guard_emulator.set_balance(oneclick, 299)
        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(middleware) as session:
            with pytest.raises(InsufficientBalance):
                await session.post(
                    f"{oneclick.base_url}/V3/Mobile/Send/",
                    data=json.dumps(send_body(300)).encode(),
                    headers={
                        "x-access-token": f" {oneclick.api_key.reveal()} ",
                        "Content-Type": content_type,
                    },
                )

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    async def test_oneclickdz_duplicate_amount_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A body with two amounts is refused: parsers disagree on which wins."""
        oneclick = guard_emulator.oneclickdz
        middleware = guard_client_middleware(guard, providers=[oneclick])
        body = b'{"plan_code": "P", "MSSIDN": "0770000000", "amount": 1, "amount": 500}'
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="unique keys"):
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    data=body,
                    headers={
                        "X-Access-Token": oneclick.api_key.reveal(),
                        "Content-Type": "application/json",
                    },
                )

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    async def test_oneclickdz_two_tokens_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """Two different access tokens are refused, never guessed."""
        oneclick = guard_emulator.oneclickdz
        middleware = guard_client_middleware(guard, providers=[oneclick])
        headers = CIMultiDict(
            [("X-Access-Token", oneclick.api_key.reveal()), ("X-Access-Token", "other")]
        )
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="several X-Access-Token") as info:
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json=send_body(300),
                    headers=headers,
                )

        assert oneclick.api_key.reveal() not in str(info.value)
        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)

    async def test_oneclickdz_form_refused(
        self, guard: BalanceGuard, guard_emulator: GuardEmulator
    ) -> None:
        """A OneClickDZ send as a form (any case of media type) is refused, unsent."""
        oneclick = guard_emulator.oneclickdz
        middleware = guard_client_middleware(guard, providers=[oneclick])
        async with session_for(middleware) as session:
            with pytest.raises(ValueError, match="not JSON"):
                await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    data=urlencode(send_body(300)).encode(),
                    headers={
                        "X-Access-Token": oneclick.api_key.reveal(),
                        "Content-Type": "Application/X-WWW-Form-Urlencoded",
                    },
                )

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_SEND)
