"""
Guarded calls over real loopback HTTP against the provider emulator.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import aiohttp
import pytest
from aiocache import SimpleMemoryCache

from guard import (
    BalanceGuard,
    BalanceUnavailable,
    InsufficientBalance,
    ProviderAuthError,
    require_balance,
)
from guard.providers import Clickatell, OneClickDZ
from guard.testing import Emulator, Fault, Route

KEY = "live-key-7d1e4c2a9b"
PASSWORD = "pw-4f8a1c"
API_ID = "3114159"


@pytest.fixture(name="emu")
def _emu(emu: Emulator) -> Emulator:
    """The shared emulator, with a OneClickDZ and a Clickatell account."""
    emu.add_oneclickdz(KEY, 1000)
    emu.add_clickatell("acme", PASSWORD, API_ID, credits=20)
    return emu


def topup_function(
    emu: Emulator, session: aiohttp.ClientSession, guard: BalanceGuard
) -> tuple[object, list[str]]:
    """A guarded OneClickDZ top-up as users write it, and the error codes seen."""
    provider = emu.oneclickdz(KEY)
    errors: list[str] = []

    @require_balance(provider, lambda phone, amount: amount, guard=guard)
    async def send_topup(phone: str, amount: Decimal) -> str:
        async with session.post(
            f"{emu.url}/v3/mobile/send",
            headers={"X-Access-Token": KEY},
            json={"plan_code": "PREPAID_MOBILIS", "MSSIDN": phone, "amount": amount},
        ) as response:
            body = await response.json()
        if not body["success"]:
            errors.append(body["error"]["code"])
            raise RuntimeError(body["error"]["code"])
        return "sent"

    return send_topup, errors


class TestOverHTTP:
    async def test_holds_against_the_emulator(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """50 concurrent 100 DZD top-ups on 1,000 DZD: 10 go, 40 refused, 0 bounced."""
        async with BalanceGuard() as guard:
            send_topup, errors = topup_function(emu, session, guard)
            results = await asyncio.gather(
                *(send_topup("0661000000", 100) for _ in range(50)),  # type: ignore[operator]
                return_exceptions=True,
            )

        assert 10 == results.count("sent")
        assert 40 == sum(isinstance(r, InsufficientBalance) for r in results)
        assert [] == errors  # never INSUFFICIENT_BALANCE from the provider
        assert Decimal(0) == emu.balance(KEY)

    async def test_single_flight_over_http(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """1,000 concurrent cold guarded calls make one balance request."""
        emu.set_balance(KEY, 10**6)
        async with BalanceGuard() as guard:
            provider = emu.oneclickdz(KEY)
            asked: list[int] = []

            @require_balance(provider, 1, guard=guard)
            async def call() -> None:
                asked.append(emu.count(Route.ONECLICKDZ_BALANCE))
                await asyncio.sleep(0.01)

            await asyncio.gather(*(call() for _ in range(1000)))

        # Every call ran on the one request (the settles then refresh it).
        assert [1] * 1000 == asked

    async def test_clickatell_sms(self, emu: Emulator) -> None:
        """Guarded Clickatell sends are refused once the credits run out."""
        provider = emu.clickatell("acme", PASSWORD, API_ID)
        sent = 0
        refusal = None
        async with BalanceGuard(settle="debit") as guard:
            for _ in range(25):
                try:
                    async with require_balance(provider, 1, guard=guard):
                        emu.set_balance("acme", emu.balance("acme") - 1)
                        sent += 1
                except InsufficientBalance as exc:
                    refusal = exc

        assert 20 == sent
        assert refusal is not None
        assert (Decimal(0), "credits") == (refusal.available, refusal.currency)
        assert 1 == emu.count(Route.CLICKATELL_GETBALANCE)

    async def test_refill_seen_before_refusing(self, emu: Emulator) -> None:
        """A refill is seen at once: an old low balance is re-read before refusing."""
        provider = emu.oneclickdz(KEY)
        async with BalanceGuard(ttl=300, recheck_after=0) as guard:
            await guard.balance(provider)
            emu.set_balance(KEY, 5000)

            async with require_balance(provider, 3000, guard=guard):
                pass

        assert 2 == emu.count(Route.ONECLICKDZ_BALANCE)


class TestFailures:
    async def test_outage_fail_closed(self, emu: Emulator) -> None:
        """Repeated 503s exhaust the retries and refuse the call."""
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"),
            times=None,
        )
        async with BalanceGuard(retries=2, max_retry_after=0.01) as guard:
            with pytest.raises(BalanceUnavailable) as info:
                async with require_balance(emu.oneclickdz(KEY), 1, guard=guard):
                    pass

        assert 503 == info.value.status
        assert 3 == emu.count(Route.ONECLICKDZ_BALANCE)

    async def test_rate_limit_honours_retry_after(self, emu: Emulator) -> None:
        """A 429 is retried after its (capped) Retry-After and then succeeds."""
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after=3600),
        )
        async with BalanceGuard(max_retry_after=0.05) as guard:
            balance = await guard.balance(emu.oneclickdz(KEY))

        assert Decimal(1000) == balance.amount
        assert 2 == emu.count(Route.ONECLICKDZ_BALANCE)

    async def test_slow_provider_times_out(self, emu: Emulator) -> None:
        """A provider slower than fetch_timeout fails within it."""
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.slow(30), times=None)
        async with BalanceGuard(fetch_timeout=0.3) as guard:
            with pytest.raises(BalanceUnavailable):
                await asyncio.wait_for(guard.balance(emu.oneclickdz(KEY)), 5)

    async def test_dropped_connection_is_retried(self, emu: Emulator) -> None:
        """A connection dropped mid-request is transient and retried."""
        emu.fail(Route.CLICKATELL_GETBALANCE, Fault(drop=True))
        async with BalanceGuard(max_retry_after=0.01) as guard:
            balance = await guard.balance(emu.clickatell("acme", PASSWORD, API_ID))

        assert Decimal(20) == balance.amount

    async def test_auth_cooldown_spares_the_lockout(self, emu: Emulator) -> None:
        """A refused key is asked once per cooldown, however many calls come."""
        bad = OneClickDZ("not-the-key", base_url=emu.url)
        async with BalanceGuard(on_unavailable="open") as guard:
            for _ in range(50):
                with pytest.raises(ProviderAuthError):
                    async with require_balance(bad, 1, guard=guard):
                        pass

        assert 1 == emu.count(Route.ONECLICKDZ_BALANCE)

    async def test_auth_unavailable_is_not_auth(self, emu: Emulator) -> None:
        """503 AUTH_UNAVAILABLE on a valid key is transient, not refused credentials."""
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(503, "AUTH_UNAVAILABLE", retry_after=5),
        )
        async with BalanceGuard(max_retry_after=0.01) as guard:
            balance = await guard.balance(emu.oneclickdz(KEY))

        assert Decimal(1000) == balance.amount


class TestSecrets:
    async def test_secrets_never_leak(
        self,
        emu: Emulator,
        session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Keys and passwords never reach a repr, log, error, cache key or URL."""
        secrets = (KEY, PASSWORD, API_ID, "wrong-key-55aa")
        seen: list[str] = []
        oneclick = emu.oneclickdz(KEY)
        clickatell = emu.clickatell("acme", PASSWORD, API_ID)
        bad_click = Clickatell("ghost", "wrong-key-55aa", API_ID, base_url=emu.url)
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"))
        cache = SimpleMemoryCache()
        with caplog.at_level(logging.DEBUG):
            async with BalanceGuard(
                cache=cache,
                on_unavailable="open",
                retries=0,
                hooks=[lambda e: seen.append(repr(e))],
            ) as guard:
                seen += [repr(oneclick), repr(clickatell), repr(guard)]
                for provider, amount in (
                    (oneclick, 1),
                    (clickatell, 500),
                    (bad_click, 1),
                ):
                    for _ in range(2):
                        try:
                            async with require_balance(provider, amount, guard=guard):
                                pass
                        except Exception as exc:
                            seen += [str(exc), repr(exc)]
                copies = cache._cache
                seen += [f"{key} {value}" for key, value in copies.items()]
                assert copies  # the balances fetched were copied to the cache

        seen += [r.getMessage() for r in caplog.records]
        seen += [f"{r.path} {r.query} {r.form}" for r in emu.requests]
        assert any("credentials refused" in s for s in seen)
        assert any("insufficient balance" in s for s in seen)
        leaks = [s for s in seen for secret in secrets if secret in s]
        assert [] == leaks


class TestOneAccountManySpellings:
    async def test_spellings_share_holds(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """20 x 100 DZD on 1,000 DZD through two spellings of one URL: 10 go."""
        port = emu.url.rsplit(":", 1)[1]
        shouted = emu.oneclickdz(KEY, base_url=f"HTTP://127.0.0.1:{port}//")
        plain = emu.oneclickdz(KEY, base_url=f"http://127.0.0.1:{port}")
        refused: list[str] = []

        async def topup(provider: OneClickDZ, guard: BalanceGuard) -> str:
            async with require_balance(provider, 100, guard=guard):
                await asyncio.sleep(0.05)  # every call overlaps every other
                async with session.post(
                    f"{provider.base_url}/v3/mobile/send",
                    headers={"X-Access-Token": KEY},
                    json={
                        "plan_code": "PREPAID_MOBILIS",
                        "MSSIDN": "0661000000",
                        "amount": 100,
                    },
                ) as response:
                    body = await response.json()
                if not body["success"]:
                    refused.append(body["error"]["code"])
                return "sent"

        async with BalanceGuard() as guard:
            results = await asyncio.gather(
                *(topup((shouted, plain)[i % 2], guard) for i in range(20)),
                return_exceptions=True,
            )

        assert shouted.account_id == plain.account_id
        assert 10 == results.count("sent")
        assert 10 == sum(isinstance(r, InsufficientBalance) for r in results)
        assert [] == refused
        assert Decimal(0) == emu.balance(KEY)
