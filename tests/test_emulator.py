from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from guard import testing
from guard.errors import BalanceUnavailable
from guard.providers import Clickatell, OneClickDZ
from guard.testing import (
    DEMO_CLICKATELL_API_ID,
    DEMO_CLICKATELL_PASSWORD,
    DEMO_CLICKATELL_USER,
    DEMO_ONECLICKDZ_KEY,
    EMULATOR_KEY,
    ClickatellAccount,
    Emulator,
    Fault,
    OneClickDZAccount,
    Plan,
    Route,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp.pytest_plugin import AiohttpServer

KEY = "sk_emulator_key_0001"
USER = "acme"
PASSWORD = "hunter2-secret"
API_ID = "3512345"
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(name="account")
def _account(emu: Emulator) -> OneClickDZAccount:
    return emu.add_oneclickdz(KEY, 1000)


@pytest.fixture(name="ct_account")
def _ct_account(emu: Emulator) -> ClickatellAccount:
    return emu.add_clickatell(USER, PASSWORD, API_ID, 10)


@pytest.fixture(name="api")
def _api(emu: Emulator, session: aiohttp.ClientSession) -> Callable[..., Any]:
    async def api(
        method: str,
        path: str,
        *,
        key: str | None = KEY,
        body: object = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        headers = {"X-Access-Token": key} if key is not None else {}
        async with session.request(
            method,
            emu.url + path,
            headers=headers,
            params=params,
            json=body,
        ) as response:
            text = await response.text()
            return (
                response.status,
                json.loads(text, parse_float=Decimal),
                response.headers,
            )

    return api


@pytest.fixture(name="ct")
def _ct(emu: Emulator, session: aiohttp.ClientSession) -> Callable[..., Any]:
    async def ct(
        command: str, *, get: bool = False, creds: bool = True, **fields: str
    ) -> str:
        data = {"user": USER, "password": PASSWORD, "api_id": API_ID} if creds else {}
        data.update(fields)
        url = f"{emu.url}/http/{command}"
        request = session.get(url, params=data) if get else session.post(url, data=data)
        async with request as response:
            assert 200 == response.status
            return await response.text()

    return ct


def send_body(amount: object = 100, **extra: object) -> dict[str, object]:
    return {
        "plan_code": "PREPAID_DJEZZY",
        "MSSIDN": "0778037340",
        "amount": amount,
        **extra,
    }


class TestLifecycle:
    async def test_url(self, emu: Emulator) -> None:
        """The emulator listens on loopback at a free port."""
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", emu.url)
        assert emu is emu.app[EMULATOR_KEY]

    async def test_not_started(self) -> None:
        """url needs a started emulator."""
        with pytest.raises(RuntimeError, match="not started"):
            _ = Emulator().url

    async def test_start_once(self) -> None:
        """An emulator starts only once and closes idempotently."""
        emu = Emulator()
        await emu.start()
        with pytest.raises(RuntimeError, match="only once"):
            await emu.start()
        await emu.close()
        await emu.close()
        with pytest.raises(RuntimeError, match="only once"):
            await emu.start()

    async def test_port_in_use(self) -> None:
        """A busy port raises OSError and leaves nothing running."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            emu = Emulator(port=sock.getsockname()[1])
            with pytest.raises(OSError, match="address already in use"):
                await emu.start()

    async def test_aiohttp_server(self, aiohttp_server: AiohttpServer) -> None:
        """emu.app can be served by pytest-aiohttp too."""
        emu = Emulator()
        emu.add_oneclickdz(KEY, "42.5")
        server = await aiohttp_server(emu.app)
        provider = emu.oneclickdz(KEY, base_url=str(server.make_url("")))

        async with aiohttp.ClientSession() as session:
            assert Decimal("42.5") == await provider.fetch_balance(session)

    async def test_close_cuts_delays(self, session: aiohttp.ClientSession) -> None:
        """Closing the emulator ends a pending delayed fault at once."""
        emu = Emulator()
        await emu.start()
        emu.add_oneclickdz(KEY, 5)
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault(delay=30))
        task = asyncio.create_task(emu.oneclickdz(KEY).fetch_balance(session))
        while not emu.count():
            await asyncio.sleep(0.005)
        started = time.monotonic()

        await emu.close()

        with pytest.raises(BalanceUnavailable):
            await task
        assert time.monotonic() - started < 5

    async def test_demo_accounts(self, session: aiohttp.ClientSession) -> None:
        """The demo emulator holds the documented accounts."""
        async with Emulator.with_demo_accounts(latency=0) as emu:
            oneclick = emu.oneclickdz(DEMO_ONECLICKDZ_KEY)
            clickatell = emu.clickatell(
                DEMO_CLICKATELL_USER, DEMO_CLICKATELL_PASSWORD, DEMO_CLICKATELL_API_ID
            )

            assert Decimal(10000) == await oneclick.fetch_balance(session)
            assert Decimal(100) == await clickatell.fetch_balance(session)

    def test_exports(self) -> None:
        """guard.testing exports a sorted __all__ of the emulator's names."""
        assert sorted(testing.__all__) == testing.__all__
        assert testing.Emulator is Emulator
        assert all(hasattr(testing, name) for name in testing.__all__)


class TestAccounts:
    def test_amounts(self) -> None:
        """Amounts accept int, str, Decimal and float through str()."""
        emu = Emulator()

        assert Decimal(5) == emu.add_oneclickdz("a", 5).balance
        assert Decimal("1326.13") == emu.add_oneclickdz("b", "1326.13").balance
        assert Decimal("0.1") == emu.add_oneclickdz("c", 0.1).balance
        assert (
            Decimal("2.50")
            == emu.add_clickatell("u", "p", "1", Decimal("2.50")).credits
        )

    @pytest.mark.parametrize(
        ("amount", "error"),
        [
            ("abc", ValueError),
            ("NaN", ValueError),
            (float("inf"), ValueError),
            (True, TypeError),
            (None, TypeError),
        ],
    )
    def test_bad_amounts(self, amount: object, error: type[Exception]) -> None:
        """Amounts that are not finite numbers are refused."""
        with pytest.raises(error, match="balance"):
            Emulator().add_oneclickdz("k", amount)  # type: ignore[arg-type]

    def test_bad_accounts(self) -> None:
        """Duplicates, empty credentials and unknown key types are refused."""
        emu = Emulator()
        emu.add_oneclickdz(KEY)
        emu.add_clickatell(USER, PASSWORD, API_ID)

        with pytest.raises(ValueError, match="exists"):
            emu.add_oneclickdz(KEY)
        with pytest.raises(ValueError, match="exists"):
            emu.add_clickatell(USER, "x", "y")
        with pytest.raises(ValueError, match="api_key"):
            emu.add_oneclickdz("")
        with pytest.raises(ValueError, match="password"):
            emu.add_clickatell("other", "", "1")
        with pytest.raises(ValueError, match="key_type"):
            emu.add_oneclickdz("other", key_type="TEST")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="balance"):
            emu.add_oneclickdz("other", "lots")
        with pytest.raises(KeyError):
            emu.account("other")

    def test_lookup(self) -> None:
        """Accounts are found by record, key, user or provider object."""
        emu = Emulator()
        oneclick = emu.add_oneclickdz(KEY, 7)
        clickatell = emu.add_clickatell(USER, PASSWORD, API_ID, 3)

        assert oneclick is emu.account(KEY)
        assert oneclick is emu.account(oneclick)
        assert oneclick is emu.account(OneClickDZ(KEY))
        assert clickatell is emu.account(USER)
        assert clickatell is emu.account(Clickatell(USER, "x", "1"))
        assert Decimal(7) == emu.balance(OneClickDZ(KEY))
        assert Decimal(3) == emu.balance(clickatell)

    @pytest.mark.parametrize("missing", ["nope", 42, OneClickDZ("nope")])
    def test_lookup_missing(self, missing: object) -> None:
        """An unknown account is a KeyError that does not echo the key."""
        with pytest.raises(KeyError) as ei:
            Emulator().account(missing)

        assert "nope" not in str(ei.value)

    def test_set_balance(self) -> None:
        """set_balance moves the balance and logs the change in the ledger."""
        emu = Emulator()
        account = emu.add_oneclickdz(KEY, 100)
        emu.add_clickatell(USER, PASSWORD, API_ID, 1)

        emu.set_balance(KEY, "250.50")
        emu.set_balance(account, 200)
        emu.set_balance(account, 200)
        emu.set_balance(USER, "9.5")

        assert Decimal(200) == emu.balance(KEY)
        assert Decimal("9.5") == emu.balance(USER)
        assert [
            ("DEPOSIT", "CREDIT", Decimal(100)),
            ("DEPOSIT", "CREDIT", Decimal("150.50")),
            ("WITHDRAW", "DEBIT", Decimal("50.50")),
        ] == [(t.type, t.operation, t.amount) for t in account.transactions]

    def test_reprs_hide_secrets(self) -> None:
        """Account reprs hide keys and passwords."""
        emu = Emulator()
        text = repr(emu.add_oneclickdz(KEY)) + repr(
            emu.add_clickatell(USER, PASSWORD, API_ID)
        )

        for secret in (KEY, PASSWORD, API_ID):
            assert secret not in text

    def test_clock(self) -> None:
        """The clock is injectable and advance moves it forward."""
        now = [100.0]
        emu = Emulator(clock=lambda: now[0])
        emu.advance(5)
        now[0] = 101.0

        assert 106.0 == emu.now()
        with pytest.raises(ValueError, match="seconds"):
            emu.advance(-1)


class TestOneClickDZAuth:
    async def test_missing_token(self, api: Callable[..., Any], emu: Emulator) -> None:
        """No header is MISSING_ACCESS_TOKEN, 401 or 400 as configured."""
        status, doc, headers = await api("GET", "/v3/account/balance", key=None)
        emu.missing_token_status = 400
        status_400, _, _ = await api("GET", "/v3/account/balance", key=None)

        assert (401, 400) == (status, status_400)
        assert "MISSING_ACCESS_TOKEN" == doc["error"]["code"]
        assert doc["requestId"] == headers["X-Request-Id"]

    async def test_ip_block(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """Five bad keys block the address for 900 s, then it recovers."""
        left = []
        for _ in range(5):
            status, doc, _ = await api("GET", "/v3/account/balance", key="bad")
            assert (401, "INVALID_ACCESS_TOKEN") == (status, doc["error"]["code"])
            left.append(doc["error"]["details"]["attemptsLeft"])

        status, doc, headers = await api("GET", "/v3/account/balance")
        emu.advance(899)
        status_later, _, headers_later = await api("GET", "/v3/validate")
        emu.advance(1)
        status_after, _, _ = await api("GET", "/v3/account/balance")
        _, doc_after, _ = await api("GET", "/v3/account/balance", key="bad")

        assert [4, 3, 2, 1, 0] == left
        assert (403, "IP_BLOCKED", "900") == (
            status,
            doc["error"]["code"],
            headers["Retry-After"],
        )
        assert (403, "1") == (status_later, headers_later["Retry-After"])
        assert 200 == status_after
        assert 4 == doc_after["error"]["details"]["attemptsLeft"]

    async def test_failures_expire(
        self, api: Callable[..., Any], emu: Emulator
    ) -> None:
        """Bad keys older than the block window are forgotten."""
        for _ in range(4):
            await api("GET", "/v3/account/balance", key="bad")
        emu.advance(900)

        _, doc, _ = await api("GET", "/v3/account/balance", key="bad")

        assert 4 == doc["error"]["details"]["attemptsLeft"]

    async def test_unblock(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """unblock forgets blocks at once."""
        emu.auth_failure_limit = 1
        await api("GET", "/v3/account/balance", key="bad")
        blocked, _, _ = await api("GET", "/v3/account/balance")

        emu.unblock()

        assert 403 == blocked
        assert 200 == (await api("GET", "/v3/account/balance"))[0]

    async def test_disabled_and_not_allowed(
        self, api: Callable[..., Any], account: OneClickDZAccount
    ) -> None:
        """Key flags answer API_DISABLED and IP_NOT_ALLOWED."""
        account.allowed_ips = ("10.0.0.1",)
        _, not_allowed, _ = await api("GET", "/v3/account/balance")
        account.allowed_ips = ("127.0.0.1",)
        allowed, _, _ = await api("GET", "/v3/account/balance")
        account.disabled = True
        _, disabled, _ = await api("GET", "/v3/account/balance")

        assert "IP_NOT_ALLOWED" == not_allowed["error"]["code"]
        assert "127.0.0.1" == not_allowed["error"]["details"]["ip"]
        assert 200 == allowed
        assert "API_DISABLED" == disabled["error"]["code"]


class TestOneClickDZRoutes:
    async def test_balance(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """The balance is a JSON number with meta.timestamp and requestId."""
        emu.set_balance(account, "1326.13")
        status, doc, headers = await api("GET", "/v3/account/balance")

        assert 200 == status
        assert Decimal("1326.13") == doc["data"]["balance"]
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["meta"]["timestamp"]
        )
        assert doc["requestId"].startswith("req_")
        assert doc["requestId"] == headers["X-Request-Id"]

    async def test_validate(
        self, api: Callable[..., Any], account: OneClickDZAccount
    ) -> None:
        """validate describes the key, without meta or requestId."""
        account.key_type = "SANDBOX"
        status, doc, _ = await api("GET", "/v3/validate")

        assert 200 == status
        assert {
            "username": "emulated-user",
            "apiKey": {
                "key": KEY,
                "isEnabled": True,
                "type": "SANDBOX",
                "allowedips": [],
                "scope": "READ-WRITE",
            },
        } == doc["data"]
        assert {"success", "data"} == set(doc)

    async def test_ping(self, api: Callable[..., Any], emu: Emulator) -> None:
        """ping needs no key and reports operators."""
        _, up, _ = await api("GET", "/v3/ping", key=None)
        emu.operators["djezzy"] = "down"
        _, down, _ = await api("GET", "/v3/ping", key=None)

        assert "ok" == up["data"]["api"]
        assert "up" == up["data"]["operators"]["mobilis"]
        assert "error" == down["data"]["api"]

    async def test_plans(
        self, api: Callable[..., Any], account: OneClickDZAccount
    ) -> None:
        """plans lists dynamic and fixed plans."""
        _, doc, _ = await api("GET", "/v3/mobile/plans")

        assert 5 == len(doc["data"]["dynamicPlans"])
        assert {
            "code": "DJEZZY_HADAYA_1000",
            "name": "Djezzy Hadaya 1000",
            "operator": "djezzy",
            "cost": 1,
            "isEnabled": True,
            "amount": 1000,
        } == doc["data"]["fixedPlans"][0]

    async def test_router_miss(self, api: Callable[..., Any], emu: Emulator) -> None:
        """Unknown /v3 paths answer the router's bare 404 JSON."""
        status, doc, _ = await api("POST", "/v3/nothing", key=None)

        assert 404 == status
        assert {
            "message": "Route POST:/v3/nothing not found",
            "error": "Not Found",
            "statusCode": 404,
        } == doc
        assert emu.requests[-1].route is None

    @pytest.mark.parametrize(
        "route",
        [
            "/v3/account/balance",
            "/v3/account/transactions",
            "/v3/mobile/plans",
            "/v3/mobile/check-ref/x",
            "/v3/mobile/check-id/x",
        ],
    )
    async def test_routes_need_key(self, api: Callable[..., Any], route: str) -> None:
        """Every route but ping runs the auth layer."""
        status, doc, _ = await api("GET", route, key="bad")

        assert (401, "INVALID_ACCESS_TOKEN") == (status, doc["error"]["code"])

    async def test_send_needs_key(self, api: Callable[..., Any]) -> None:
        """send runs the auth layer before reading the body."""
        status, _, _ = await api("POST", "/v3/mobile/send", key="bad", body={})

        assert 401 == status


class TestSend:
    async def test_debits(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """A send debits the balance and answers ids and the new balance."""
        status, doc, _ = await api(
            "POST", "/v3/mobile/send", body=send_body(300, ref="order-1")
        )

        assert 200 == status
        assert re.fullmatch(r"[0-9a-f]{24}", doc["data"]["topupId"])
        assert "order-1" == doc["data"]["topupRef"]
        assert Decimal(700) == doc["data"]["newBalance"]
        assert Decimal(700) == emu.balance(KEY)
        (topup,) = account.topups
        assert ("0778037340", Decimal(300)) == (topup.mssidn, topup.charged)
        last = account.transactions[-1]
        assert ("FLEXY", Decimal(1000), Decimal(700), topup.id) == (
            last.type,
            last.old_balance,
            last.new_balance,
            last.objid,
        )

    async def test_without_ref(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """Without a ref one is made up; newBalance can be left out."""
        emu.send_new_balance = False
        _, doc, _ = await api("POST", "/v3/mobile/send", body=send_body())

        assert doc["data"]["topupRef"].startswith("emu-")
        assert "newBalance" not in doc["data"]

    async def test_insufficient(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """A short balance answers 403 with required and available as numbers."""
        emu.set_balance(account, "99.5")
        status, doc, _ = await api("POST", "/v3/mobile/send", body=send_body(100))
        emu.insufficient_balance_code = "NO_BALANCE"
        _, other, _ = await api("POST", "/v3/mobile/send", body=send_body(100))

        assert (403, "INSUFFICIENT_BALANCE") == (status, doc["error"]["code"])
        assert {"required": Decimal(100), "available": Decimal("99.5")} == doc["error"][
            "details"
        ]
        assert all(isinstance(v, Decimal) for v in doc["error"]["details"].values())
        assert "NO_BALANCE" == other["error"]["code"]
        assert Decimal("99.5") == emu.balance(KEY)

    async def test_duplicated_ref(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """A reused ref is refused and charged once."""
        await api("POST", "/v3/mobile/send", body=send_body(100, ref="r1"))
        status, doc, _ = await api(
            "POST", "/v3/mobile/send", body=send_body(100, ref="r1")
        )

        assert (403, "DUPLICATED_REF") == (status, doc["error"]["code"])
        assert Decimal(900) == emu.balance(KEY)

    @pytest.mark.parametrize(
        ("body", "field", "value"),
        [
            ([1, 2], "body", None),
            ({"MSSIDN": "0778037340", "amount": 100}, "plan_code", None),
            (send_body(plan_code="NOPE"), "plan_code", "NOPE"),
            (send_body(MSSIDN=778037340), "MSSIDN", 778037340),
            (send_body(MSSIDN="0878037340"), "MSSIDN", "0878037340"),
            (send_body(MSSIDN="077803734"), "MSSIDN", "077803734"),
            (send_body(None), "amount", None),
            (send_body("100"), "amount", "100"),
            (send_body(True), "amount", True),
            (send_body(49), "amount", 49),
            (send_body(5001), "amount", 5001),
            (send_body(ref=""), "ref", ""),
            (send_body(ref=7), "ref", 7),
            (
                {
                    "plan_code": "DJEZZY_HADAYA_1000",
                    "MSSIDN": "0778037340",
                    "amount": 500,
                },
                "amount",
                500,
            ),
        ],
    )
    async def test_validation(
        self,
        api: Callable[..., Any],
        emu: Emulator,
        account: OneClickDZAccount,
        body: object,
        field: str,
        value: object,
    ) -> None:
        """Invalid bodies answer 400 ERR_VALIDATION naming field and value."""
        status, doc, _ = await api("POST", "/v3/mobile/send", body=body)

        assert (400, "ERR_VALIDATION") == (status, doc["error"]["code"])
        assert {"field": field, "value": value} == doc["error"]["details"]
        assert Decimal(1000) == emu.balance(KEY)

    async def test_not_json(
        self, emu: Emulator, session: aiohttp.ClientSession, account: OneClickDZAccount
    ) -> None:
        """A body that is not JSON is a validation error."""
        async with session.post(
            f"{emu.url}/v3/mobile/send",
            data=b"{nope",
            headers={"X-Access-Token": KEY, "Content-Type": "application/json"},
        ) as response:
            doc = await response.json()

        assert (400, "body") == (response.status, doc["error"]["details"]["field"])

    async def test_fixed_plan(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """A fixed plan charges its own amount."""
        body = {"plan_code": "DJEZZY_HADAYA_1000", "MSSIDN": "0660000000"}
        status, _, _ = await api("POST", "/v3/mobile/send", body=body)

        assert 200 == status
        assert Decimal(0) == emu.balance(KEY)

    async def test_plan_cost(self, api: Callable[..., Any]) -> None:
        """Plans with a cost ratio charge amount * cost, to the cent."""
        plan = Plan(
            "CHEAP",
            "cheap",
            "ooredoo",
            cost=Decimal("0.9925"),
            min_amount=Decimal(1),
            max_amount=None,
        )
        async with Emulator(plans=[plan]) as emu, aiohttp.ClientSession() as s:
            emu.add_oneclickdz(KEY, 1000)
            async with s.post(
                f"{emu.url}/v3/mobile/send",
                json={"plan_code": "CHEAP", "MSSIDN": "0550000000", "amount": 137},
                headers={"X-Access-Token": KEY},
            ) as response:
                assert 200 == response.status

            assert Decimal("864.03") == emu.balance(KEY)

    async def test_sandbox(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """Sandbox keys never debit, even beyond their balance."""
        account.key_type = "SANDBOX"
        status, _, _ = await api("POST", "/v3/mobile/send", body=send_body(5000))

        assert 200 == status
        assert Decimal(1000) == emu.balance(KEY)

    async def test_races(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """Concurrent sends never overspend: the excess is refused."""
        results = await asyncio.gather(
            *(api("POST", "/v3/mobile/send", body=send_body(100)) for _ in range(15))
        )

        assert [200] * 10 + [403] * 5 == sorted(r[0] for r in results)
        assert Decimal(0) == emu.balance(KEY)


class TestTopupStatus:
    async def test_walk(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """Each check moves a top-up one status along; the last one sticks."""
        emu.topup_statuses = ("PENDING", "HANDLING", "FULFILLED")
        _, sent, _ = await api("POST", "/v3/mobile/send", body=send_body(ref="w"))
        topup_id = sent["data"]["topupId"]

        seen = [
            (await api("GET", path))[1]["data"]["status"]
            for path in (
                "/v3/mobile/check-ref/w",
                f"/v3/mobile/check-id/{topup_id}",
                "/v3/mobile/check-ref/w",
                "/v3/mobile/check-ref/w",
            )
        ]

        assert ["PENDING", "HANDLING", "FULFILLED", "FULFILLED"] == seen

    async def test_refund(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """REFUNDED credits the charge back once, as REFUND-FLEXY."""
        emu.topup_statuses = ("HANDLING", "REFUNDED")
        await api("POST", "/v3/mobile/send", body=send_body(250, ref="x"))

        await api("GET", "/v3/mobile/check-ref/x")
        _, doc, _ = await api("GET", "/v3/mobile/check-ref/x")
        await api("GET", "/v3/mobile/check-ref/x")

        assert "REFUNDED" == doc["data"]["status"]
        assert "refund_message" in doc["data"]
        assert Decimal(1000) == emu.balance(KEY)
        assert ["DEPOSIT", "FLEXY", "REFUND-FLEXY"] == [
            t.type for t in account.transactions
        ]

    async def test_sandbox_refund(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """A refunded sandbox top-up credits nothing back."""
        account.key_type = "SANDBOX"
        emu.topup_statuses = ("REFUNDED",)
        await api("POST", "/v3/mobile/send", body=send_body(250, ref="s"))

        _, doc, _ = await api("GET", "/v3/mobile/check-ref/s")

        assert "REFUNDED" == doc["data"]["status"]
        assert Decimal(1000) == emu.balance(KEY)
        assert ["DEPOSIT"] == [t.type for t in account.transactions]

    async def test_unknown(
        self, api: Callable[..., Any], account: OneClickDZAccount
    ) -> None:
        """An unknown ref is a 404 NOT_FOUND."""
        status, doc, _ = await api("GET", "/v3/mobile/check-ref/nope")

        assert (404, "NOT_FOUND") == (status, doc["error"]["code"])


class TestTransactions:
    async def test_pages(
        self, api: Callable[..., Any], emu: Emulator, account: OneClickDZAccount
    ) -> None:
        """The ledger is listed newest first, page by page."""
        for amount in (100, 200, 300):
            await api("POST", "/v3/mobile/send", body=send_body(amount))

        _, doc, _ = await api(
            "GET", "/v3/account/transactions", params={"page": "2", "pageSize": "3"}
        )

        assert {
            "page": 2,
            "pageSize": 3,
            "totalPages": 2,
            "totalResults": 4,
        } == doc["data"]["pagination"]
        (item,) = doc["data"]["items"]
        assert ("DEPOSIT", Decimal(1000), Decimal(0), Decimal(1000)) == (
            item["type"],
            item["amount"],
            item["oldBalance"],
            item["newBalance"],
        )

    async def test_window(
        self, api: Callable[..., Any], account: OneClickDZAccount
    ) -> None:
        """from and to filter by time."""
        wide = {"from": "2000-01-01T00:00:00Z", "to": "2999-01-01T00:00:00"}
        past = {"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"}

        _, all_items, _ = await api("GET", "/v3/account/transactions", params=wide)
        _, none, _ = await api("GET", "/v3/account/transactions", params=past)

        assert 1 == all_items["data"]["pagination"]["totalResults"]
        assert [] == none["data"]["items"]

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"pageSize": "101"}, "pageSize"),
            ({"pageSize": "0"}, "pageSize"),
            ({"page": "0"}, "page"),
            ({"page": "abc"}, "page"),
            ({"page": "9" * 5000}, "page"),
            ({"from": "2024-01-01T00:00:00Z"}, "to"),
            ({"to": "2024-01-01T00:00:00Z"}, "from"),
            ({"from": "yesterday", "to": "2024-01-01"}, "from"),
        ],
    )
    async def test_validation(
        self,
        api: Callable[..., Any],
        account: OneClickDZAccount,
        params: dict[str, str],
        field: str,
    ) -> None:
        """Bad paging or a lone from/to answers 400."""
        status, doc, _ = await api("GET", "/v3/account/transactions", params=params)

        assert (400, field) == (status, doc["error"]["details"]["field"])


class TestClickatell:
    async def test_session(
        self, ct: Callable[..., Any], emu: Emulator, ct_account: ClickatellAccount
    ) -> None:
        """auth opens a session that getbalance and ping use and extend."""
        reply = await ct("auth")
        session_id = reply.removeprefix("OK: ")
        emu.advance(600)
        balance = await ct("getbalance", creds=False, session_id=session_id)
        emu.advance(600)
        ping = await ct("ping", creds=False, session_id=session_id)
        emu.clickatell_ping_echo = True
        echo = await ct("ping", creds=False, session_id=session_id, get=True)
        emu.advance(900)
        expired = await ct("getbalance", creds=False, session_id=session_id)

        assert HEX32.fullmatch(session_id)
        assert "Credit: 10" == balance
        assert "OK:" == ping
        assert f"OK: {session_id}" == echo
        assert "ERR: 003, Session ID expired" == expired

    async def test_ping_needs_session(
        self, ct: Callable[..., Any], ct_account: ClickatellAccount
    ) -> None:
        """ping without a session id is ERR 005; an unknown one ERR 003."""
        assert "ERR: 005, Missing session ID" == await ct("ping")
        assert "ERR: 003, Session ID expired" == await ct("ping", session_id="ab")

    async def test_session_of_removed_account(
        self, ct: Callable[..., Any], emu: Emulator, ct_account: ClickatellAccount
    ) -> None:
        """A session outliving its account is expired."""
        session_id = (await ct("auth")).removeprefix("OK: ")
        del emu._clickatell.accounts[USER]

        assert "ERR: 003, Session ID expired" == await ct(
            "getbalance", creds=False, session_id=session_id
        )

    @pytest.mark.parametrize(
        ("fields", "setup", "reply"),
        [
            ({"password": "wrong"}, {}, "ERR: 001, Authentication failed"),
            ({"user": "nobody"}, {}, "ERR: 001, Authentication failed"),
            (
                {"password": "wrong"},
                {"clickatell_login_error": 2},
                "ERR: 002, Unknown username or password",
            ),
            ({"api_id": "1"}, {}, "ERR: 108, Invalid or missing API ID"),
            ({"api_id": ""}, {}, "ERR: 108, Invalid or missing API ID"),
            (
                {"password": "wrong"},
                {"clickatell_code_digits": 4},
                "ERR: 0001, Authentication failed",
            ),
        ],
    )
    async def test_login_errors(
        self,
        ct: Callable[..., Any],
        emu: Emulator,
        ct_account: ClickatellAccount,
        fields: dict[str, str],
        setup: dict[str, Any],
        reply: str,
    ) -> None:
        """Bad credentials answer HTTP 200 with an ERR line."""
        for name, value in setup.items():
            setattr(emu, name, value)

        assert reply == await ct("auth", **fields)

    async def test_account_flags(
        self, ct: Callable[..., Any], ct_account: ClickatellAccount
    ) -> None:
        """Frozen accounts and IP lockdown answer ERR 004 and 007."""
        ct_account.allowed_ips = ("10.0.0.9",)
        lockdown = await ct("getbalance")
        ct_account.frozen = True
        frozen = await ct("sendmsg", to="27820000001", text="hi")

        assert "ERR: 007, IP Lockdown violation" == lockdown
        assert "ERR: 004, Account frozen" == frozen

    @pytest.mark.parametrize("get", [True, False])
    async def test_sendmsg(
        self,
        ct: Callable[..., Any],
        emu: Emulator,
        ct_account: ClickatellAccount,
        get: bool,
    ) -> None:
        """sendmsg answers an ID and debits, over GET query or POST form."""
        reply = await ct("sendmsg", get=get, to="27820000001", text="Hello")

        assert re.fullmatch(r"ID: [0-9a-f]{32}", reply)
        assert Decimal(9) == emu.balance(USER)
        (message,) = ct_account.messages
        assert ("27820000001", "Hello", 1, Decimal(1)) == (
            message.to,
            message.text,
            message.parts,
            message.charge,
        )
        assert f"ID: {message.id}" == reply

    async def test_multi_recipient(
        self, ct: Callable[..., Any], emu: Emulator, ct_account: ClickatellAccount
    ) -> None:
        """Several recipients get one line each, outcomes mixed."""
        ct_account.credits_per_part = Decimal(4)

        reply = await ct(
            "sendmsg", to="27820000001, 0123,27820000002,27820000003", text="x"
        )

        lines = reply.split("\n")
        assert 4 == len(lines)
        assert re.fullmatch(r"ID: [0-9a-f]{32} To: 27820000001", lines[0])
        assert "ERR: 105, Invalid destination address To: 0123" == lines[1]
        assert re.fullmatch(r"ID: [0-9a-f]{32} To: 27820000002", lines[2])
        assert "ERR: 301, No credit left To: 27820000003" == lines[3]
        assert Decimal(2) == emu.balance(USER)

    @pytest.mark.parametrize(
        ("text", "credits"),
        [("a" * 160, 2), ("a" * 161, 4), ("ç" * 70, 2), ("ç" * 71, 4), ("€" * 81, 4)],
    )
    async def test_parts(
        self,
        ct: Callable[..., Any],
        emu: Emulator,
        ct_account: ClickatellAccount,
        text: str,
        credits: int,
    ) -> None:
        """A message costs credits_per_part times its GSM-7 or UCS-2 parts."""
        ct_account.credits_per_part = Decimal(2)

        await ct("sendmsg", to="27820000001", text=text)

        assert Decimal(10 - credits) == emu.balance(USER)

    @pytest.mark.parametrize(
        ("fields", "reply"),
        [
            ({"text": "hi"}, "ERR: 101, Invalid or missing parameters"),
            ({"to": "27820000001"}, "ERR: 101, Invalid or missing parameters"),
            ({"to": "27820000001", "text": ""}, "ERR: 107, Empty message"),
            (
                {"to": "+27820000001", "text": "a" * 161, "concat": "1"},
                "ERR: 113, Maximum message parts exceeded",
            ),
            (
                {"to": "27820000001", "text": "hi", "concat": "x"},
                "ERR: 101, Invalid or missing parameters",
            ),
            ({"to": "2782", "text": "hi"}, "ERR: 105, Invalid destination address"),
            ({"to": "27820000001", "text": "a" * 400}, "ERR: 302, Max allowed credit"),
        ],
    )
    async def test_sendmsg_errors(
        self,
        ct: Callable[..., Any],
        emu: Emulator,
        ct_account: ClickatellAccount,
        fields: dict[str, str],
        reply: str,
    ) -> None:
        """Refused messages answer an ERR line and cost nothing."""
        ct_account.max_credits_per_message = Decimal(2)

        assert reply == await ct("sendmsg", **fields)
        assert Decimal(10) == emu.balance(USER)
        assert [] == ct_account.messages

    async def test_concat_allows_parts(
        self, ct: Callable[..., Any], emu: Emulator, ct_account: ClickatellAccount
    ) -> None:
        """concat at or above the parts needed lets a long message through."""
        reply = await ct("sendmsg", to="27820000001", text="a" * 161, concat="2")

        assert reply.startswith("ID: ")
        assert Decimal(8) == emu.balance(USER)

    async def test_races(
        self, ct: Callable[..., Any], emu: Emulator, ct_account: ClickatellAccount
    ) -> None:
        """Concurrent messages never overspend."""
        replies = await asyncio.gather(
            *(ct("sendmsg", to="27820000001", text="hi") for _ in range(14))
        )

        assert 10 == sum(r.startswith("ID: ") for r in replies)
        assert 4 == replies.count("ERR: 301, No credit left")
        assert Decimal(0) == emu.balance(USER)


class TestFaults:
    async def test_scripted_oneclickdz_error_is_the_emulated_one(
        self, emu: Emulator, api: Callable[..., Any], account: OneClickDZAccount
    ) -> None:
        """Fault.oneclickdz answers the same envelope as a real refusal."""
        real_status, real, _ = await api("GET", "/v3/account/balance", key="nope")
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(
                401,
                real["error"]["code"],
                real["error"]["message"],
                details=real["error"]["details"],
            ),
        )

        status, scripted, _ = await api("GET", "/v3/account/balance", key="nope")

        assert (real_status, real.keys()) == (status, scripted.keys())
        assert real["error"] == scripted["error"]
        assert scripted["requestId"].startswith("req_")

    async def test_scripted_clickatell_error_is_the_emulated_one(
        self, emu: Emulator, ct: Callable[..., Any], ct_account: ClickatellAccount
    ) -> None:
        """Fault.clickatell_err answers the same line as a real refusal."""
        real = await ct("getbalance", password="wrong")
        emu.fail(
            Route.CLICKATELL_GETBALANCE,
            Fault.clickatell_err(1, "Authentication failed"),
        )

        assert real == await ct("getbalance", password="wrong")

    async def test_status_body_headers(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A fault answers its status, body and headers."""
        emu.fail(
            "clickatell.getbalance",
            Fault(503, body="busy", headers={"Retry-After": "9"}),
        )

        async with session.post(f"{emu.url}/http/getbalance") as response:
            assert (503, "busy", "9") == (
                response.status,
                await response.text(),
                response.headers["Retry-After"],
            )
            assert "text/plain" == response.content_type
        assert 503 == emu.requests[-1].status

    async def test_json(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """A JSON fault writes Decimals as exact numbers."""
        emu.fail(Route.ONECLICKDZ_PING, Fault(200, json={"balance": Decimal("1.10")}))

        async with session.get(f"{emu.url}/v3/ping") as response:
            assert "application/json" == response.content_type
            assert '{"balance":1.10}' == await response.text()

    async def test_content_type_header_wins(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A Content-Type given in headers is kept as is."""
        emu.fail(
            Route.ONECLICKDZ_PING,
            Fault(200, body=b"\x00", headers={"content-type": "application/x-custom"}),
        )

        async with session.get(f"{emu.url}/v3/ping") as response:
            assert "application/x-custom" == response.content_type

    async def test_times(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """Faults answer as many times as asked, in order, then normal service."""
        emu.fail(Route.ONECLICKDZ_PING, Fault(500), times=2)
        emu.fail(Route.ONECLICKDZ_PING, Fault(502))

        statuses = []
        for _ in range(4):
            async with session.get(f"{emu.url}/v3/ping") as response:
                statuses.append(response.status)

        assert [500, 500, 502, 200] == statuses
        assert 4 == emu.count("oneclickdz.ping")

    async def test_forever(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """times=None repeats until the faults are cleared."""
        emu.fail(Route.ONECLICKDZ_PING, Fault(500), times=None)
        emu.fail(Route.CLICKATELL_PING, Fault(500), times=None)
        statuses = []
        for _ in range(3):
            async with session.get(f"{emu.url}/v3/ping") as response:
                statuses.append(response.status)
        emu.clear_faults(Route.ONECLICKDZ_PING)
        async with session.get(f"{emu.url}/v3/ping") as response:
            statuses.append(response.status)
        emu.clear_faults()
        async with session.get(f"{emu.url}/http/ping") as response:
            statuses.append(response.status)

        assert [500, 500, 500, 200, 200] == statuses

    async def test_delay(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        """A delayed fault answers late; latency delays every answer."""
        emu.fail(Route.ONECLICKDZ_PING, Fault(500, delay=0.05))
        started = time.monotonic()
        async with session.get(f"{emu.url}/v3/ping") as response:
            assert 500 == response.status
        faulted = time.monotonic() - started
        emu.latency = 0.05
        started = time.monotonic()
        async with session.get(f"{emu.url}/v3/ping") as response:
            assert 200 == response.status

        assert faulted >= 0.05
        assert time.monotonic() - started >= 0.05

    async def test_in_flight_record(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A request is logged on arrival and its status filled in on answer."""
        emu.add_oneclickdz(KEY, 3)
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.slow(0.1))
        task = asyncio.create_task(emu.oneclickdz(KEY).fetch_balance(session))
        while not emu.count():
            await asyncio.sleep(0.005)
        pending = emu.requests[-1]

        assert Decimal(3) == await task
        assert pending.status is None
        assert 200 == emu.requests[-1].status
        assert pending.fault == emu.requests[-1].fault

    async def test_reset_in_flight(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A request answered after reset_log stays out of the log."""
        emu.fail(Route.ONECLICKDZ_PING, Fault.slow(0.05))
        task = asyncio.create_task(session.get(f"{emu.url}/v3/ping"))
        while not emu.count():
            await asyncio.sleep(0.005)

        emu.reset_log()
        async with await task as response:
            assert 200 == response.status

        assert [] == emu.requests

    async def test_drop(self, session: aiohttp.ClientSession, emu: Emulator) -> None:
        """A dropping fault closes the connection without an answer."""
        emu.fail(Route.CLICKATELL_PING, Fault(drop=True))

        # POST, because aiohttp quietly retries an idempotent GET once.
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(f"{emu.url}/http/ping")

        (record,) = emu.requests
        assert record.status is None
        assert record.fault is not None

    async def test_unknown_route(self, emu: Emulator) -> None:
        """Unknown route names are refused with the list of good ones."""
        with pytest.raises(ValueError, match=r"oneclickdz\.balance"):
            emu.fail("oneclickdz.nope", Fault())
        with pytest.raises(ValueError, match="times"):
            emu.fail(Route.ONECLICKDZ_PING, Fault(), times=0)

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"status": 99}, ValueError),
            ({"status": True}, TypeError),
            ({"body": "x", "json": {}}, ValueError),
            ({"drop": True, "passthrough": True}, ValueError),
            ({"delay": -1}, ValueError),
            ({"delay": "1"}, TypeError),
            ({"json": {"a": object()}}, TypeError),
            ({"json": {1: "a"}}, TypeError),
            ({"json": {"a": Decimal("NaN")}}, ValueError),
            ({"json": float("inf")}, ValueError),
            ({"body": 5}, TypeError),
        ],
    )
    def test_bad_fault(self, kwargs: dict[str, Any], error: type[Exception]) -> None:
        """Faults are checked where they are written."""
        with pytest.raises(error):
            Fault(**kwargs)

    def test_helpers(self) -> None:
        """The helpers build the documented envelopes and lines."""
        oneclick = Fault.oneclickdz(
            403, "IP_BLOCKED", "blocked", details={"a": 1}, retry_after=1.5
        )
        err = Fault.clickatell_err("0001", "Authentication failed")

        assert {"code": "IP_BLOCKED", "message": "blocked", "details": {"a": 1}} == (
            oneclick.json["error"]  # type: ignore[index]
        )
        assert {"Retry-After": "1.5"} == oneclick.headers
        assert (200, "ERR: 0001, Authentication failed") == (err.status, err.body)
        assert "ERR: 007, x" == Fault.clickatell_err(7, "x").body
        assert "ERR: 0007, x" == Fault.clickatell_err(7, "x", digits=4).body
        assert Fault(500) == Fault(500)
        assert hash(Fault(500)) == hash(Fault(500))


class TestLog:
    async def test_masks_secrets(
        self, ct: Callable[..., Any], emu: Emulator, ct_account: ClickatellAccount
    ) -> None:
        """Passwords, api ids and session ids are masked in queries and forms."""
        await ct("getbalance", get=True)
        await ct("ping", creds=False, get=True, session_id="abc")
        await ct("getbalance")

        get, ping, post = emu.requests
        assert {"user": USER, "password": "[secure]", "api_id": "[secure]"} == get.query
        assert {"session_id": "[secure]"} == ping.query
        assert {"user": USER, "password": "[secure]", "api_id": "[secure]"} == post.form
        text = repr(emu.requests)
        assert PASSWORD not in text
        assert API_ID not in text

    async def test_masks_headers_and_json(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """Access tokens in headers and secret-named JSON keys are masked."""
        async with session.post(
            f"{emu.url}/v3/mobile/send",
            json={"plan_code": "X", "nested": [{"password": "p"}], "token": "t"},
            headers={"X-Access-Token": KEY, "Authorization": "Bearer b"},
        ):
            pass

        (record,) = emu.requests
        assert "[secure]" == record.headers["X-Access-Token"]
        assert "[secure]" == record.headers["Authorization"]
        assert {
            "plan_code": "X",
            "nested": [{"password": "[secure]"}],
            "token": "[secure]",
        } == record.json
        assert ("POST", "/v3/mobile/send", 401) == (
            record.method,
            record.path,
            record.status,
        )

    async def test_count_and_reset(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """count filters by route; reset_log empties the log."""
        for path in ("/v3/ping", "/v3/ping", "/http/ping"):
            async with session.get(emu.url + path):
                pass

        counts = (
            emu.count(),
            emu.count(Route.ONECLICKDZ_PING),
            emu.count("clickatell.ping"),
        )
        emu.reset_log()

        assert (3, 2, 1) == counts
        assert 0 == emu.count()
        assert [] == emu.requests
