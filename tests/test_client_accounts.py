"""
The client middleware with many accounts: each spend is held on, and
charged to, the account whose base URL and credentials it uses.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
from _spends import (
    KINDS,
    add_clickatell,
    add_oneclickdz,
    send_oneclickdz,
    spend_oneclickdz,
)
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from guard import BalanceGuard, InsufficientBalance
from guard.aiohttp import (
    SpendRequest,
    clickatell_platform_rules,
    clickatell_rules,
    guard_client_middleware,
    oneclickdz_rules,
)
from guard.errors import ConfigurationError
from guard.providers import Clickatell, ClickatellPlatform, OneClickDZ
from guard.providers._matching import AccountIndex
from guard.testing import Emulator, Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType
    from aiohttp.pytest_plugin import AiohttpServer

    from guard.typing import Provider

MANY = 25
FUNDED = Decimal(1000)


@pytest.fixture(name="guard")
async def _guard() -> AsyncIterator[BalanceGuard]:
    async with BalanceGuard(retries=0, settle="debit") as guard:
        yield guard


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        yield emu


@attrs.define
class Holds:
    """
    A client middleware behind the guard's: what the guard holds on each
    account as a request leaves.
    """

    guard: BalanceGuard
    providers: Sequence[Provider]
    seen: list[list[Decimal]] = attrs.field(factory=list)

    async def __call__(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        self.seen.append([self.guard.held(p) for p in self.providers])
        return await handler(request)


def session_for(
    guard: BalanceGuard, providers: Sequence[Provider], **options: Any
) -> tuple[aiohttp.ClientSession, Holds]:
    holds = Holds(guard, providers)
    middleware = guard_client_middleware(guard, providers=providers, **options)
    return aiohttp.ClientSession(middlewares=(middleware, holds)), holds


class TestManyAccounts:
    @pytest.mark.parametrize("kind", sorted(KINDS))
    @pytest.mark.parametrize("target", [0, MANY // 2, MANY - 1])
    async def test_spend_held_and_charged_on_its_account(
        self, guard: BalanceGuard, emu: Emulator, kind: str, target: int
    ) -> None:
        """Among many accounts of every kind, a spend is held on its own only."""
        add, spend = KINDS[kind]
        providers = [add(emu, i, Decimal(0)) for i in range(MANY)]
        # Every other kind too: a rule looks only at its own kind's accounts.
        others = [
            other(emu, MANY + n, Decimal(0))
            for n, (other, _) in enumerate(KINDS.values())
        ]
        emu.set_balance(providers[target], FUNDED)
        session, holds = session_for(guard, [*others, *providers])
        async with session:
            assert 200 <= await spend(session, providers[target]) < 300
            with pytest.raises(InsufficientBalance):
                await spend(session, providers[target - 1])

        (held,) = holds.seen
        assert [0] * len(others) == held[: len(others)]
        charged = [i for i, amount in enumerate(held[len(others) :]) if amount]
        assert [target] == charged
        assert emu.balance(providers[target]) < FUNDED
        assert FUNDED > (await guard.balance(providers[target])).amount
        assert all(Decimal(0) == guard.held(p) for p in providers)

    async def test_same_host_other_credential(
        self, guard: BalanceGuard, emu: Emulator
    ) -> None:
        """Two keys at one base URL: each spend is charged to its own key."""
        first, second = add_oneclickdz(emu, 1), add_oneclickdz(emu, 2)
        emu.set_balance(first, 500)
        emu.set_balance(second, 5000)
        session, holds = session_for(guard, [first, second])
        async with session:
            assert 200 == await spend_oneclickdz(session, second)
            assert 200 == await spend_oneclickdz(session, first)

        held = [[bool(amount) for amount in seen] for seen in holds.seen]
        assert [[False, True], [True, False]] == held
        assert Decimal(500) > emu.balance(first)
        assert Decimal(5000) > emu.balance(second)

    async def test_same_credential_other_port(self, guard: BalanceGuard) -> None:
        """One key on two servers: the spend is charged at the one it goes to."""
        async with Emulator() as here, Emulator() as there:
            here.add_oneclickdz("shared-key", 0)
            there.add_oneclickdz("shared-key", 1000)
            empty, funded = (
                here.oneclickdz("shared-key"),
                there.oneclickdz("shared-key"),
            )
            session, holds = session_for(guard, [empty, funded])
            async with session:
                assert 200 == await spend_oneclickdz(session, funded)
                with pytest.raises(InsufficientBalance):
                    await spend_oneclickdz(session, empty)

            assert [False, True] == [bool(h) for h in holds.seen[0]]
            assert Decimal(1000) > there.balance("shared-key")
            assert 0 == here.count(Route.ONECLICKDZ_SEND)

    async def test_same_credential_other_base_path(
        self, guard: BalanceGuard, aiohttp_server: AiohttpServer
    ) -> None:
        """One key under two base paths of one server: each path its account."""
        eu, us = Emulator(), Emulator()
        eu.add_oneclickdz("shared-key", 1000)
        us.add_oneclickdz("shared-key", 0)
        app = web.Application()
        app.add_subapp("/eu", eu.app)
        app.add_subapp("/us", us.app)
        server = await aiohttp_server(app)
        origin = str(server.make_url("/"))
        funded = eu.oneclickdz("shared-key", base_url=f"{origin}eu")
        # The other one spelled otherwise: it is the same base URL.
        empty = us.oneclickdz("shared-key", base_url=f"{origin.upper()}us//")
        session, holds = session_for(guard, [empty, funded])
        async with session:
            assert 200 == await spend_oneclickdz(session, funded)
            with pytest.raises(InsufficientBalance):
                await send_oneclickdz(session, f"{origin}us", "shared-key")

        assert [False, True] == [bool(h) for h in holds.seen[0]]
        assert Decimal(1000) > eu.balance("shared-key")
        assert 0 == us.count(Route.ONECLICKDZ_SEND)

    @pytest.mark.parametrize("path", ["/other", "/eu-west"])
    async def test_other_base_path_unknown(
        self, guard: BalanceGuard, emu: Emulator, path: str
    ) -> None:
        """A spend outside every account's base path is an unknown account."""
        emu.add_oneclickdz("key-eu", 1000)
        provider = emu.oneclickdz("key-eu", base_url=f"{emu.url}/eu")
        session, _ = session_for(guard, [provider])
        async with session:
            with pytest.raises(ConfigurationError, match="not among the providers"):
                await send_oneclickdz(session, f"{emu.url}{path}", "key-eu")

    async def test_unknown_credential_refused(
        self, guard: BalanceGuard, emu: Emulator
    ) -> None:
        """A key matching none of many accounts is refused, never sent."""
        providers = [add_oneclickdz(emu, i) for i in range(MANY)]
        emu.add_oneclickdz("stranger-s3cr3t", 1000)
        session, holds = session_for(guard, providers)
        async with session:
            with pytest.raises(ConfigurationError) as info:
                await send_oneclickdz(session, emu.url, "stranger-s3cr3t")

        assert "s3cr3t" not in str(info.value)
        assert [] == holds.seen
        assert 0 == emu.count(Route.ONECLICKDZ_SEND)

    async def test_unknown_credential_allowed(
        self, guard: BalanceGuard, emu: Emulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With unknown="allow", it goes out unguarded, with a warning."""
        providers = [add_oneclickdz(emu, i) for i in range(MANY)]
        emu.add_oneclickdz("stranger-s3cr3t", 1000)
        session, holds = session_for(guard, providers, unknown="allow")
        async with session:
            assert 200 == await send_oneclickdz(session, emu.url, "stranger-s3cr3t")

        assert [[0] * MANY] == holds.seen
        assert Decimal(1000) > emu.balance("stranger-s3cr3t")
        assert 0 == emu.count(Route.ONECLICKDZ_BALANCE)
        assert "sent unguarded" in caplog.text
        assert "s3cr3t" not in caplog.text


class TestClickatellSession:
    async def test_only_account_at_the_url(
        self, guard: BalanceGuard, emu: Emulator
    ) -> None:
        """A session_id send is held on the one Clickatell account at its URL."""
        clickatell = add_clickatell(emu, 1)
        elsewhere = emu.clickatell("user-002", "pw", "3000002", base_url=f"{emu.url}/x")
        emu.set_balance(clickatell, 1)
        session, _ = session_for(guard, [clickatell, elsewhere, add_oneclickdz(emu, 1)])
        async with session:
            with pytest.raises(InsufficientBalance) as info:
                await session.post(
                    f"{emu.url}/http/sendmsg",
                    data={"session_id": "s", "to": "1,2", "text": "hello"},
                )

        assert (Decimal(2), Decimal(1)) == (info.value.required, info.value.available)

    async def test_two_accounts_at_the_url(
        self, guard: BalanceGuard, emu: Emulator
    ) -> None:
        """With two accounts there, a session_id send names none: refused."""
        providers = [add_clickatell(emu, 1), add_clickatell(emu, 2)]
        session, _ = session_for(guard, providers)
        async with session:
            with pytest.raises(ConfigurationError):
                await session.post(
                    f"{emu.url}/http/sendmsg",
                    data={"session_id": "s", "to": "1", "text": "hello"},
                )

        assert 0 == emu.count(Route.CLICKATELL_SENDMSG)

    async def test_user_without_api_id(
        self, guard: BalanceGuard, emu: Emulator
    ) -> None:
        """A user name alone names no account: refused."""
        clickatell = add_clickatell(emu, 1)
        session, _ = session_for(guard, [clickatell])
        async with session:
            with pytest.raises(ConfigurationError):
                await session.post(
                    f"{emu.url}/http/sendmsg",
                    data={"user": "user-001", "to": "1", "text": "hello"},
                )


class TestMatchers:
    def test_rule_called_directly(self) -> None:
        """A bundled rule's matcher still answers SpendRule.account alone."""
        providers = [
            OneClickDZ("key-1", base_url="http://api.test"),
            OneClickDZ("key-2", base_url="http://api.test"),
        ]
        request = SpendRequest(
            "POST",
            URL("http://api.test/v3/mobile/send"),
            CIMultiDict({"X-Access-Token": " key-2 "}),
            b"{}",
        )
        (rule, *_) = oneclickdz_rules()

        assert providers[1] is rule.account(request, providers)
        assert rule.account(request, providers[:1]) is None

    def test_first_listed_wins(self) -> None:
        """Accounts at nested base paths with one key: the first listed."""
        root = ClickatellPlatform("k", base_url="http://api.test")
        nested = ClickatellPlatform("k", base_url="http://api.test/v1")
        url = URL("http://api.test/v1/messages")
        forward = AccountIndex([root, nested], lambda p: (p.api_key,))
        backward = AccountIndex([nested, root], lambda p: (p.api_key,))

        assert (root, nested) == (forward.find(url, "k"), backward.find(url, "k"))
        assert forward.find(URL("http://api.test/v2/messages"), "k") is root
        assert forward.find(url, "other") is None

    def test_reprs_hide_credentials(self) -> None:
        """Neither the index nor the matchers show a credential."""
        accounts = [
            Clickatell("bob", "pw-s3cr3t", "api-s3cr3t"),
            Clickatell("eve", "pw-s3cr3t", "api-s3cr3t"),
        ]
        index = AccountIndex(accounts, lambda p: (p.user, p.api_id))
        matchers = [
            rule.provider
            for rule in clickatell_rules()
            + clickatell_platform_rules()
            + oneclickdz_rules()
        ]
        shown = repr(index)
        shown += repr([getattr(index, slot) for slot in AccountIndex.__slots__])
        shown += repr(matchers)

        assert "s3cr3t" not in shown
        assert "<AccountIndex of 2 accounts>" == repr(index)
