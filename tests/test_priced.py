"""
OneClickDZ spends priced from the provider's own catalogue, over real
loopback HTTP against the emulator: every plan, internet card and gift card
held at what the provider debits; unknown items refused before sending; the
catalogue kept by the guard; an unreadable one under the guard's policy;
50 concurrent mixed sends; every documented spend endpoint guarded; the
provider's request id on errors; sandbox keys labelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from guard import (
    AmountError,
    BalanceGuard,
    BalanceUnavailable,
    GuardEvent,
    InsufficientBalance,
    ProviderAuthError,
)
from guard.aiohttp import guard_client_middleware
from guard.errors import ConfigurationError
from guard.testing import Emulator, Fault, Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from guard.providers import OneClickDZ

KEY = "priced-k3y-s3cret"
CENT = Decimal("0.01")
MOBILE = "/v3/mobile/send"
INTERNET = "/v3/internet/send"
GIFT = "/v3/gift-cards/placeOrder"
NUMBERS = {"ADSL": "021234567", "4G": "213551234567"}


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 1_000_000)
        yield emu


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    async with BalanceGuard(retries=0) as guard:
        yield guard


@pytest.fixture(name="session")
async def _session(
    emu: Emulator, guard: BalanceGuard
) -> AsyncIterator[aiohttp.ClientSession]:
    middleware = guard_client_middleware(guard, providers=[emu.oneclickdz(KEY)])
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        yield session


async def post(
    session: aiohttp.ClientSession, emu: Emulator, path: str, body: object
) -> tuple[int, Any]:
    async with session.post(
        f"{emu.url}{path}", json=body, headers={"X-Access-Token": KEY}
    ) as response:
        return response.status, await response.json()


def mobile(code: str, amount: object = None) -> dict[str, object]:
    body: dict[str, object] = {"plan_code": code, "MSSIDN": "0660000000"}
    if amount is not None:
        body["amount"] = amount
    return body


def internet(kind: str, value: object) -> dict[str, object]:
    return {"type": kind, "number": NUMBERS[kind], "value": value}


def gift(product: str, kind: str, quantity: int = 1) -> dict[str, object]:
    return {"productId": product, "typeId": kind, "quantity": quantity}


def every_send(emu: Emulator) -> list[tuple[str, dict[str, object]]]:
    """Every priced send the emulator's catalogue offers."""
    sends: list[tuple[str, dict[str, object]]] = []
    for plan in emu.plans.values():
        if plan.amount is not None:
            sends.append((MOBILE, mobile(plan.code)))
            continue
        assert plan.min_amount is not None
        assert plan.max_amount is not None
        for amount in {plan.min_amount, plan.max_amount, Decimal(1237)}:
            if plan.min_amount <= amount <= plan.max_amount:
                sends.append((MOBILE, mobile(plan.code, int(amount))))
    sends.extend(
        (INTERNET, internet(p.type, int(p.value)))
        for p in emu.internet_products
        if p.available
    )
    for card in emu.gift_cards:
        for kind in card.types:
            sends.extend(
                (GIFT, gift(card.product_id, kind.id, quantity))
                for quantity in (1, 2)
                if quantity <= kind.quantity
            )
    return sends


def settled(guard: BalanceGuard) -> list[Decimal]:
    amounts: list[Decimal] = []

    def hook(event: GuardEvent) -> None:
        if event.kind == "settled" and event.amount is not None:
            amounts.append(event.amount)

    guard.add_hook(hook)
    return amounts


class TestHeldAsDebited:
    async def test_every_item_of_the_catalogue(
        self, emu: Emulator, guard: BalanceGuard, session: aiohttp.ClientSession
    ) -> None:
        """Every plan, card and gift card is held at the emulator's debit, to 0.01."""
        held = settled(guard)
        sends = every_send(emu)
        assert 18 <= len(sends)
        for path, body in sends:
            before = emu.balance(KEY)
            status, reply = await post(session, emu, path, body)
            assert 200 == status, reply
            debit = before - emu.balance(KEY)

            assert abs(held[-1] - debit) <= CENT, (path, body, held[-1], debit)
            assert held[-1] >= debit, "never hold less than the provider debits"

    async def test_estimate_matches_the_account(
        self, emu: Emulator, guard: BalanceGuard, session: aiohttp.ClientSession
    ) -> None:
        """After each settle the guard's balance is the account's, to 0.01 DZD."""
        provider = emu.oneclickdz(KEY)
        for path, body in every_send(emu):
            await post(session, emu, path, body)
            estimate = (await guard.balance(provider)).amount
            assert abs(estimate - emu.balance(KEY)) <= CENT
        assert 1 == emu.count(Route.ONECLICKDZ_BALANCE)

    async def test_fixed_plan_without_amount(
        self, emu: Emulator, guard: BalanceGuard, session: aiohttp.ClientSession
    ) -> None:
        """A fixed plan sent without an amount holds amount x cost."""
        held = settled(guard)
        status, _ = await post(session, emu, MOBILE, mobile("PIXX_500"))

        assert 200 == status
        assert [Decimal("485.00")] == held

    async def test_catalogues_read_once(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """The plans, products and gift card prices are read once, then kept."""
        for _ in range(3):
            for path, body in (
                (MOBILE, mobile("PIXX_500")),
                (MOBILE, mobile("FLEXY_DJEZZY", 100)),
                (INTERNET, internet("ADSL", 500)),
                (GIFT, gift("pubg-mobile", "uc-60")),
            ):
                assert 200 == (await post(session, emu, path, body))[0]

        assert 1 == emu.count(Route.ONECLICKDZ_PLANS)
        assert 1 == emu.count(Route.ONECLICKDZ_INTERNET_PRODUCTS)
        assert 1 == emu.count(Route.ONECLICKDZ_GIFT_CARD_PRODUCT)


class TestRefusedBeforeSending:
    @pytest.mark.parametrize(
        ("path", "body", "named"),
        [
            (MOBILE, mobile("NO_SUCH_PLAN", 100), "unknown plan_code 'NO_SUCH_PLAN'"),
            (MOBILE, mobile("FLEXY_MOBILIS", 99), "outside plan FLEXY_MOBILIS"),
            (MOBILE, mobile("FLEXY_MOBILIS", 2001), "outside plan FLEXY_MOBILIS"),
            (MOBILE, mobile("FLEXY_DJEZZY"), "FLEXY_DJEZZY needs an amount"),
            (MOBILE, mobile("PIXX_500", 400), "PIXX_500 tops up 500"),
            (MOBILE, mobile("PIXX_500", "500"), "amount must be a number"),
            (MOBILE, {"MSSIDN": "0660000000"}, "without a plan_code"),
            (INTERNET, internet("ADSL", 750), "no ADSL card of value 750"),
            (INTERNET, internet("4G", 3000), "4G 3000 card is out of stock"),
            (INTERNET, {"type": "5G", "value": 1}, "ADSL or 4G"),
            (INTERNET, {"type": "4G"}, "without a numeric value"),
            (GIFT, gift("steam", "x"), "unknown productId 'steam'"),
            (GIFT, gift("pubg-mobile", "uc-9999"), "unknown typeId 'uc-9999'"),
            (GIFT, gift("google-play", "gp-10", 4), "4 cards asked, 3 in stock"),
            (GIFT, gift("pubg-mobile", "uc-60", 0), "quantity must be 1 or more"),
            (GIFT, gift("../account/balance", "x"), "invalid productId"),
            (GIFT, {"productId": "pubg-mobile", "typeId": None}, "invalid typeId"),
        ],
    )
    async def test_named_and_not_sent(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        path: str,
        body: dict[str, object],
        named: str,
    ) -> None:
        """An unknown or unsendable item is refused, named, and never sent."""
        with pytest.raises(AmountError, match="refused, not sent") as ei:
            await post(session, emu, path, body)

        assert named in str(ei.value)
        sends = (
            Route.ONECLICKDZ_SEND,
            Route.ONECLICKDZ_INTERNET_SEND,
            Route.ONECLICKDZ_GIFT_CARD_ORDER,
        )
        assert 0 == sum(emu.count(r) for r in sends)
        assert Decimal(1_000_000) == emu.balance(KEY)

    async def test_disabled_plan(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A plan the catalogue lists as disabled is refused, named."""
        import attrs

        emu.plans["PIXX_500"] = attrs.evolve(emu.plans["PIXX_500"], enabled=False)

        with pytest.raises(AmountError, match="disabled plan_code 'PIXX_500'"):
            await post(session, emu, MOBILE, mobile("PIXX_500"))

    async def test_short_balance_never_reaches_the_provider(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A priced send the balance cannot cover is refused at its price."""
        emu.set_balance(KEY, 480)

        with pytest.raises(InsufficientBalance) as ei:
            await post(session, emu, MOBILE, mobile("PIXX_500"))

        assert (Decimal("485.00"), Decimal(480)) == (
            ei.value.required,
            ei.value.available,
        )
        assert 0 == emu.count(Route.ONECLICKDZ_SEND)

    async def test_priced_rules_need_the_middleware(self) -> None:
        """A priced rule used without a guard says what it needs."""
        from yarl import URL

        from guard.aiohttp import SpendRequest, oneclickdz_rules

        request = SpendRequest(
            "POST", URL("http://x/v3/mobile/send"), {}, b'{"plan_code": "P"}'
        )
        with pytest.raises(ConfigurationError, match="client middleware"):
            await oneclickdz_rules()[0].required(request)


class TestUnreadableCatalogue:
    async def test_closed_refuses(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """With on_unavailable="closed", a send that cannot be priced is not sent."""
        emu.fail(
            Route.ONECLICKDZ_PLANS,
            Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"),
            times=None,
        )

        with pytest.raises(BalanceUnavailable, match="SERVICE_UNAVAILABLE"):
            await post(session, emu, MOBILE, mobile("PIXX_500"))
        assert 0 == emu.count(Route.ONECLICKDZ_SEND)

    async def test_open_sends_unchecked(
        self, emu: Emulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With on_unavailable="open" it is sent unchecked, with a warning."""
        emu.fail(Route.ONECLICKDZ_GIFT_CARD_PRODUCT, Fault.html(502), times=None)
        provider = emu.oneclickdz(KEY)
        async with BalanceGuard(on_unavailable="open", retries=0) as guard:
            middleware = guard_client_middleware(guard, providers=[provider])
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                with caplog.at_level(logging.WARNING, logger="guard"):
                    status, _ = await post(
                        session, emu, GIFT, gift("pubg-mobile", "uc-60")
                    )
            (state,) = guard.accounts()

        assert 200 == status
        assert 1 == state.calls["failed_open"]
        assert "proceeding unchecked" in caplog.text
        assert KEY not in caplog.text

    async def test_open_still_raises_auth(self, emu: Emulator) -> None:
        """A refused key raises whatever the policy."""
        emu.fail(
            Route.ONECLICKDZ_PLANS,
            Fault.oneclickdz(401, "INVALID_ACCESS_TOKEN"),
            times=None,
        )
        provider = emu.oneclickdz(KEY)
        async with BalanceGuard(on_unavailable="open", retries=0) as guard:
            middleware = guard_client_middleware(guard, providers=[provider])
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                with pytest.raises(ProviderAuthError):
                    await post(session, emu, MOBILE, mobile("PIXX_500"))
        assert 0 == emu.count(Route.ONECLICKDZ_SEND)

    @pytest.mark.parametrize(
        "doc",
        [
            [],
            {"fixedPlans": "nope"},
            {"fixedPlans": [{"code": "X", "cost": "0.9"}]},
            {"fixedPlans": [{"code": "X", "cost": 0.9}]},
        ],
    )
    async def test_unreadable_plans(
        self, emu: Emulator, session: aiohttp.ClientSession, doc: object
    ) -> None:
        """A plan list guard cannot read is an unreadable answer, not a price."""
        emu.fail(
            Route.ONECLICKDZ_PLANS,
            Fault(200, json={"success": True, "data": doc}),
            times=None,
        )
        with pytest.raises(BalanceUnavailable, match="unreadable mobile plan"):
            await post(session, emu, MOBILE, mobile("X"))

    @pytest.mark.parametrize(
        ("route", "doc", "path", "body", "match"),
        [
            (
                Route.ONECLICKDZ_INTERNET_PRODUCTS,
                {"products": "none"},
                INTERNET,
                internet("ADSL", 500),
                "unreadable ADSL products",
            ),
            (
                Route.ONECLICKDZ_INTERNET_PRODUCTS,
                [{"value": 500}],
                INTERNET,
                internet("ADSL", 500),
                "unreadable ADSL products",
            ),
            (
                Route.ONECLICKDZ_GIFT_CARD_PRODUCT,
                {"types": {}},
                GIFT,
                gift("pubg-mobile", "uc-60"),
                "unreadable gift card",
            ),
            (
                Route.ONECLICKDZ_GIFT_CARD_PRODUCT,
                {"types": [{"id": "uc-60", "price": "1"}]},
                GIFT,
                gift("pubg-mobile", "uc-60"),
                "unreadable gift card",
            ),
        ],
    )
    async def test_unreadable_products(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        route: Route,
        doc: object,
        path: str,
        body: dict[str, object],
        match: str,
    ) -> None:
        """Product lists guard cannot read are unreadable answers, not prices."""
        emu.fail(route, Fault(200, json={"success": True, "data": doc}), times=None)

        with pytest.raises(BalanceUnavailable, match=match):
            await post(session, emu, path, body)

    async def test_bare_internet_list(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """The products may come as a bare list (as one guide shows)."""
        emu.fail(
            Route.ONECLICKDZ_INTERNET_PRODUCTS,
            Fault(
                200,
                json={"success": True, "data": [{"value": 500, "cost": 490}]},
            ),
        )
        assert 200 == (await post(session, emu, INTERNET, internet("ADSL", 500)))[0]

    async def test_gift_card_outage(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A gift card that cannot be checked is not an unknown one."""
        emu.fail(
            Route.ONECLICKDZ_GIFT_CARD_PRODUCT,
            Fault.oneclickdz(400, "ERR_VALIDATION"),
        )
        with pytest.raises(BalanceUnavailable, match="ERR_VALIDATION"):
            await post(session, emu, GIFT, gift("pubg-mobile", "uc-60"))

    @pytest.mark.parametrize("path", [MOBILE, INTERNET, GIFT])
    async def test_body_not_an_object(
        self, emu: Emulator, session: aiohttp.ClientSession, path: str
    ) -> None:
        """A JSON body that is not an object cannot be priced: not sent."""
        with pytest.raises(ValueError, match="not a JSON object"):
            await post(session, emu, path, [1, 2])
        assert 0 == emu.count()

    async def test_reply_not_json_settles_as_usual(
        self, emu: Emulator, guard: BalanceGuard, session: aiohttp.ClientSession
    ) -> None:
        """A 200 reply that is not JSON reports no balance: settled as usual."""
        emu.fail(Route.ONECLICKDZ_SEND, Fault(200, body="<html>ok</html>"))
        async with session.post(
            f"{emu.url}{MOBILE}",
            json=mobile("PIXX_500"),
            headers={"X-Access-Token": KEY},
        ) as response:
            assert "<html>ok</html>" == await response.text()

        # The guard's default settle: the price taken off the cached balance.
        estimate = (await guard.balance(emu.oneclickdz(KEY))).amount
        assert Decimal(1_000_000) - Decimal("485.00") == estimate


class TestCatalogueKept:
    async def test_single_flight_and_expiry(self, guard: BalanceGuard) -> None:
        """Concurrent callers share one load; it is loaded again once expired."""
        from guard.testing import InMemoryProvider

        provider = InMemoryProvider(1)
        loads = 0

        async def load(session: aiohttp.ClientSession) -> int:
            nonlocal loads
            loads += 1
            await asyncio.sleep(0.01)
            return loads

        got = await asyncio.gather(
            *(guard.catalogue(provider, "prices", load, ttl=0.05) for _ in range(20))
        )
        assert [1] * 20 == got
        await asyncio.sleep(0.06)
        assert 2 == await guard.catalogue(provider, "prices", load, ttl=60)
        assert 2 == await guard.catalogue(provider, "prices", load, ttl=60)

    async def test_failure_not_kept(self, guard: BalanceGuard) -> None:
        """A failed load is not kept; the next call loads again."""
        from guard.testing import InMemoryProvider

        provider = InMemoryProvider(1)
        calls = 0

        async def load(session: aiohttp.ClientSession) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BalanceUnavailable("down", provider="memory")
            return "ok"

        with pytest.raises(BalanceUnavailable):
            await guard.catalogue(provider, "prices", load, ttl=60)
        assert "ok" == await guard.catalogue(provider, "prices", load, ttl=60)

    async def test_slow_load_times_out(self) -> None:
        """A load slower than the fetch timeout is BalanceUnavailable."""
        from guard.testing import InMemoryProvider

        async def load(session: aiohttp.ClientSession) -> str:
            await asyncio.sleep(5)
            return "late"  # pragma: no cover - cancelled

        async with BalanceGuard(fetch_timeout=0.05) as guard:
            with pytest.raises(BalanceUnavailable, match="no prices within"):
                await guard.catalogue(InMemoryProvider(1), "prices", load, ttl=1)


class TestConcurrentMixedSends:
    async def test_fifty_against_a_short_balance(self, emu: Emulator) -> None:
        """50 mixed sends: none reaches the provider short; none refused needlessly."""
        rng = random.Random(14)
        menu = [
            (MOBILE, mobile("PIXX_500"), Decimal("485.00")),
            (MOBILE, mobile("YOOZ_1000"), Decimal("980.00")),
            (MOBILE, mobile("FLEXY_DJEZZY", 800), Decimal("794.00")),
            (MOBILE, mobile("FLEXY_MOBILIS", 1500), Decimal("1440.00")),
            (INTERNET, internet("ADSL", 1000), Decimal("979.50")),
            (INTERNET, internet("4G", 500), Decimal("487.25")),
            (GIFT, gift("pubg-mobile", "uc-325", 2), Decimal("1825.50")),
            (GIFT, gift("google-play", "gp-5"), Decimal("1250.00")),
        ]
        sends = [rng.choice(menu) for _ in range(50)]
        total = sum((price for _, _, price in sends), Decimal(0))
        emu.set_balance(KEY, total / 3)
        provider = emu.oneclickdz(KEY)

        async with BalanceGuard(retries=0) as guard:
            middleware = guard_client_middleware(guard, providers=[provider])
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:

                async def one(path: str, body: dict[str, object]) -> object:
                    try:
                        return await post(session, emu, path, body)
                    except InsufficientBalance as exc:
                        return exc

                results = await asyncio.gather(*(one(p, b) for p, b, _ in sends))

        answers = [r for r in results if isinstance(r, tuple)]
        refused = [
            price
            for (_, _, price), r in zip(sends, results, strict=True)
            if isinstance(r, InsufficientBalance)
        ]
        codes = [doc["error"]["code"] for status, doc in answers if status != 200]
        assert [] == codes  # 0 INSUFFICIENT_BALANCE from the provider
        assert answers
        assert refused
        left = emu.balance(KEY)
        assert left >= 0
        # What was refused could not have been sent, give or take one item.
        most = max(price for _, _, price in menu)
        for price in refused:
            assert left < price + most

    async def test_insufficient_balance_answer_is_settled_failed(
        self, emu: Emulator, guard: BalanceGuard, session: aiohttp.ClientSession
    ) -> None:
        """A provider's INSUFFICIENT_BALANCE settles the hold as a failure."""
        emu.fail(
            Route.ONECLICKDZ_SEND,
            Fault.oneclickdz(403, "INSUFFICIENT_BALANCE", "short"),
        )
        status, _ = await post(session, emu, MOBILE, mobile("PIXX_500"))

        assert 403 == status
        assert Decimal(0) == guard.held(emu.oneclickdz(KEY))


# The spend endpoints of providers.md section 1.2, transcribed by hand
# (rows 3, 7 and 9), each with a body the provider would accept.
DOCUMENTED_SPENDS = [
    ("POST", "/v3/mobile/send", mobile("PREPAID_DJEZZY", 100)),
    ("POST", "/v3/mobile/send", mobile("DJEZZY_HADAYA_1000")),
    ("POST", "/v3/internet/send", internet("ADSL", 500)),
    ("POST", "/v3/gift-cards/placeOrder", gift("pubg-mobile", "uc-60")),
]


class TestEverySpendGuarded:
    @pytest.mark.parametrize(("method", "path", "body"), DOCUMENTED_SPENDS)
    @pytest.mark.parametrize("spelling", ["as documented", "trailing slash", "CASE"])
    async def test_refused_when_short(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: dict[str, object],
        spelling: str,
    ) -> None:
        """Each documented spend endpoint is guarded: short, it never leaves."""
        emu.set_balance(KEY, 1)
        if spelling == "trailing slash":
            path += "/"
        elif spelling == "CASE":
            path = path.upper()

        with pytest.raises(InsufficientBalance):
            await session.request(
                method, f"{emu.url}{path}", json=body, headers={"X-Access-Token": KEY}
            )
        assert 0 == sum(
            1 for r in emu.requests if r.method == "POST" and r.route is not None
        )

    @pytest.mark.parametrize(("method", "path", "body"), DOCUMENTED_SPENDS)
    async def test_unknown_account_refused(
        self,
        emu: Emulator,
        guard: BalanceGuard,
        method: str,
        path: str,
        body: dict[str, object],
    ) -> None:
        """A documented spend with a key the middleware was not given is refused."""
        middleware = guard_client_middleware(guard, providers=[])
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            with pytest.raises(ConfigurationError):
                await session.request(
                    method,
                    f"{emu.url}{path}",
                    json=body,
                    headers={"X-Access-Token": KEY},
                )
        assert 0 == emu.count()


class TestRequestId:
    async def test_on_errors(self, emu: Emulator) -> None:
        """The provider's requestId is kept on the error and shown in str()."""
        import aiohttp as client

        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(404, "NOT_FOUND"))
        provider: OneClickDZ = emu.oneclickdz(KEY)
        async with client.ClientSession() as http:
            with pytest.raises(BalanceUnavailable) as ei:
                await provider.fetch_balance(http)

        assert ei.value.request_id is not None
        assert ei.value.request_id.startswith("req_")
        assert f"(request id {ei.value.request_id})" in str(ei.value)

    async def test_auth_error_through_the_guard(self, emu: Emulator) -> None:
        """An auth error, and its cooled-down repeat, keep the request id."""
        provider = emu.oneclickdz("wrong-key")
        async with BalanceGuard() as guard:
            with pytest.raises(ProviderAuthError) as first:
                await guard.balance(provider)
            with pytest.raises(ProviderAuthError) as again:
                await guard.balance(provider)

        assert first.value.request_id is not None
        assert first.value.request_id == again.value.request_id
        assert first.value.request_id in str(again.value)

    async def test_echoed_key_masked(self, emu: Emulator) -> None:
        """A request id that echoes the key is masked like any provider text."""
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault(
                503,
                json={
                    "success": False,
                    "error": {"code": "SERVICE_UNAVAILABLE", "message": "down"},
                    "requestId": f"req_{KEY}",
                },
            ),
        )
        async with aiohttp.ClientSession() as http:
            with pytest.raises(BalanceUnavailable) as ei:
                await emu.oneclickdz(KEY).fetch_balance(http)

        assert "req_[secure]" == ei.value.request_id
        assert KEY not in str(ei.value) + repr(ei.value)

    def test_survives_pickling(self) -> None:
        """The request id survives a pickle round trip."""
        import pickle

        from guard import ProviderResponseError

        error = ProviderResponseError("x", provider="p", request_id="req_1")

        assert "req_1" == pickle.loads(pickle.dumps(error)).request_id  # noqa: S301


class TestSandbox:
    async def test_labelled(self, emu: Emulator) -> None:
        """A sandbox key's balance and account are labelled as such."""
        emu.add_oneclickdz("sandbox-key", 50, key_type="SANDBOX")
        async with BalanceGuard() as guard:
            sandbox = await guard.balance(emu.oneclickdz("sandbox-key"))
            real = await guard.balance(emu.oneclickdz(KEY))
            states = {s.balance.amount: s for s in guard.accounts() if s.balance}

        assert (True, False) == (sandbox.sandbox, real.sandbox)
        assert "SANDBOX" == states[Decimal(50)].key_type
        assert states[Decimal(50)].sandbox
        assert "PRODUCTION" == states[Decimal(1_000_000)].key_type
        assert 2 == emu.count(Route.ONECLICKDZ_VALIDATE)

    async def test_asked_once_and_not_with_a_bad_key(self, emu: Emulator) -> None:
        """The key type is asked once, after a good read, never with a bad key."""
        async with BalanceGuard() as guard:
            with pytest.raises(ProviderAuthError):
                await guard.balance(emu.oneclickdz("bad"))
            for _ in range(3):
                await guard.balance(emu.oneclickdz(KEY), fresh=True)

        assert 1 == emu.count(Route.ONECLICKDZ_VALIDATE)

    async def test_unknown_when_validate_fails(self, emu: Emulator) -> None:
        """If /v3/validate fails, the balance is read all the same."""
        emu.fail(Route.ONECLICKDZ_VALIDATE, Fault.html(503))
        async with BalanceGuard() as guard:
            balance = await guard.balance(emu.oneclickdz(KEY))
            (state,) = guard.accounts()

        assert Decimal(1_000_000) == balance.amount
        assert state.key_type is None

    async def test_key_type(self, emu: Emulator) -> None:
        """OneClickDZ.key_type reads /v3/validate."""
        emu.add_oneclickdz("sandbox-key", 50, key_type="SANDBOX")
        async with aiohttp.ClientSession() as http:
            assert "SANDBOX" == await emu.oneclickdz("sandbox-key").key_type(http)
            emu.fail(
                Route.ONECLICKDZ_VALIDATE,
                Fault(200, json={"success": True, "data": {"apiKey": {}}}),
            )
            with pytest.raises(BalanceUnavailable, match="SANDBOX or PRODUCTION"):
                await emu.oneclickdz(KEY).key_type(http)


class TestEmulatedRoutes:
    @pytest.mark.parametrize(
        ("method", "path", "body", "status", "code"),
        [
            ("GET", "/v3/internet/products?type=5G", None, 400, "ERR_VALIDATION"),
            ("POST", INTERNET, {"type": "ADSL", "value": 500}, 400, "ERR_VALIDATION"),
            ("POST", INTERNET, internet("ADSL", 501), 400, "ERR_VALIDATION"),
            ("POST", INTERNET, internet("4G", 3000), 400, "OUT_OF_STOCK"),
            ("POST", INTERNET, [1], 400, "ERR_VALIDATION"),
            ("POST", INTERNET, internet("ADSL", 2000), 403, "INSUFFICIENT_BALANCE"),
            ("GET", "/v3/gift-cards/checkProduct/steam", None, 404, "NOT_FOUND"),
            ("POST", GIFT, gift("steam", "x"), 400, "ERR_VALIDATION"),
            ("POST", GIFT, gift("pubg-mobile", "x"), 400, "ERR_VALIDATION"),
            ("POST", GIFT, gift("pubg-mobile", "uc-60", 0), 400, "ERR_VALIDATION"),
            ("POST", GIFT, gift("google-play", "gp-10", 4), 400, "OUT_OF_STOCK"),
            ("POST", GIFT, gift("google-play", "gp-5", 2), 403, "INSUFFICIENT_BALANCE"),
        ],
    )
    async def test_refusals(
        self,
        emu: Emulator,
        method: str,
        path: str,
        body: object,
        status: int,
        code: str,
    ) -> None:
        """The emulated internet and gift-card routes refuse as the API does."""
        emu.set_balance(KEY, 1500)
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method, f"{emu.url}{path}", json=body, headers={"X-Access-Token": KEY}
            ) as response,
        ):
            doc = await response.json()

        assert (status, code) == (response.status, doc["error"]["code"])
        assert Decimal(1500) == emu.balance(KEY)

    async def test_sandbox_never_debited(self, emu: Emulator) -> None:
        """A sandbox key's internet and gift-card orders move no money."""
        emu.add_oneclickdz("sandbox-key", 10, key_type="SANDBOX")
        async with aiohttp.ClientSession() as http:
            for path, body in (
                (INTERNET, internet("ADSL", 2000)),
                (GIFT, gift("google-play", "gp-5")),
            ):
                async with http.post(
                    f"{emu.url}{path}",
                    json=body,
                    headers={"X-Access-Token": "sandbox-key"},
                ) as response:
                    assert 200 == response.status

        assert Decimal(10) == emu.balance("sandbox-key")


class _OddKeyType:
    """A provider of the user's own whose key_type is not what guard expects."""

    name = "odd"
    currency = "DZD"
    account_id = "odd-1"

    def key_type(self) -> str:
        return "SANDBOX"  # not a coroutine, and takes no session

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        return Decimal(5)


async def test_odd_key_type_does_not_fail_the_read() -> None:
    """A provider's key_type that misbehaves leaves the key type unknown."""
    async with BalanceGuard() as guard:
        balance = await guard.balance(_OddKeyType())
        (state,) = guard.accounts()

    assert (Decimal(5), False, None) == (
        balance.amount,
        balance.sandbox,
        state.key_type,
    )
