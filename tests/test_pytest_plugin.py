from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = error
addopts = -p no:cacheprovider
"""

INI_PLAIN = """
[pytest]
filterwarnings = error
addopts = -p no:cacheprovider
"""

USES_FIXTURES = """
import pytest
from decimal import Decimal

from guard import InsufficientBalance, get_default_guard, require_balance


@pytest.mark.guard_low_funds(provider="oneclickdz", balance=50)
async def test_marker(guard_emulator):
    assert Decimal(50) == guard_emulator.balance("oneclickdz")
    with pytest.raises(InsufficientBalance):
        async with require_balance(guard_emulator.oneclickdz, 100):
            pass


async def test_emulator_accounts(guard_emulator):
    assert Decimal(10000) == guard_emulator.balance(guard_emulator.oneclickdz)
    assert Decimal(100) == guard_emulator.balance("clickatell")
    async with require_balance(guard_emulator.clickatell, 100):
        pass


def test_sync_api_reaches_the_emulator(guard_emulator, low_funds):
    low_funds("clickatell", 2)

    @require_balance(guard_emulator.clickatell, 3)
    def send():
        raise AssertionError("not sent")

    with pytest.raises(InsufficientBalance):
        send()
    assert 1 == guard_emulator.count("clickatell.getbalance")


@pytest.mark.guard_low_funds(provider="memory", balance="0.5")
async def test_memory(memory_provider, low_funds):
    with pytest.raises(InsufficientBalance):
        async with require_balance(memory_provider, 1):
            pass
    low_funds(memory_provider, 1)
    await get_default_guard().invalidate(memory_provider)
    async with require_balance(memory_provider, 1):
        pass
    assert 2 == memory_provider.fetches
"""

FRESH_GUARD = """
from guard import get_default_guard, require_balance

seen = []


async def test_first(default_guard, memory_provider):
    assert default_guard is get_default_guard()
    async with require_balance(memory_provider, 1):
        pass
    seen.append(default_guard)


def test_second(default_guard, memory_provider):
    assert default_guard is not seen[0]
    assert seen[0].closed
    assert 0 == memory_provider.fetches
    with require_balance(memory_provider, 1):
        pass
    seen.append(default_guard)


def test_third(default_guard):
    assert seen[1].closed
"""


def run(pytester: pytest.Pytester, source: str, mode: str = "auto") -> pytest.RunResult:
    pytester.makeini(INI.format(mode=mode))
    pytester.makepyfile(test_user=source)
    return pytester.runpytest("-q")


class TestPlugin:
    def test_fixtures_and_marker(self, pytester: pytest.Pytester) -> None:
        """The emulator, memory provider, low_funds and marker work in auto mode."""
        result = run(pytester, USES_FIXTURES)

        result.assert_outcomes(passed=4)

    def test_strict_mode(self, pytester: pytest.Pytester) -> None:
        """The async fixtures work in strict mode too."""
        source = USES_FIXTURES.replace(
            "\nasync def", "\n@pytest.mark.asyncio\nasync def"
        )

        result = run(pytester, source, mode="strict")

        result.assert_outcomes(passed=4)

    def test_fresh_default_guard(self, pytester: pytest.Pytester) -> None:
        """Each test gets a new default guard, and the last one is closed."""
        result = run(pytester, FRESH_GUARD)

        result.assert_outcomes(passed=3)

    def test_with_aiohttp_client(self, pytester: pytest.Pytester) -> None:
        """The fixtures combine with pytest-aiohttp's aiohttp_client."""
        source = """
from aiohttp import web
from guard.aiohttp import guard_route, setup_guard


async def test_app(aiohttp_client, guard_emulator, low_funds):
    low_funds(guard_emulator.oneclickdz, 10)

    async def topup(request):
        return web.Response(text="sent")

    app = web.Application()
    app.router.add_post("/topup", topup, name="topup")
    setup_guard(app, routes={"topup": guard_route(guard_emulator.oneclickdz, 20)})
    client = await aiohttp_client(app)
    assert 402 == (await client.post("/topup")).status
"""
        result = run(pytester, source)

        result.assert_outcomes(passed=1)

    def test_marker_needs_its_fixture(self, pytester: pytest.Pytester) -> None:
        """The marker without the fixture it needs fails with a clear message."""
        source = """
import pytest

@pytest.mark.guard_low_funds(provider="oneclickdz", balance=50)
def test_missing():
    pass

@pytest.mark.guard_low_funds(provider="nope", balance=50)
def test_unknown(memory_provider):
    pass
"""
        result = run(pytester, source)

        result.assert_outcomes(errors=2)
        result.stdout.fnmatch_lines(
            ["*needs the guard_emulator fixture*", "*unknown provider 'nope'*"]
        )

    def test_low_funds_needs_its_fixture(self, pytester: pytest.Pytester) -> None:
        """low_funds for a provider no fixture provides raises LookupError."""
        source = """
import pytest

def test_missing(low_funds):
    with pytest.raises(LookupError, match="guard_emulator"):
        low_funds("oneclickdz", 5)
"""
        result = run(pytester, source)

        result.assert_outcomes(passed=1)

    def test_without_the_asyncio_plugin(self, pytester: pytest.Pytester) -> None:
        """With pytest-asyncio installed but disabled, tests and fixtures work."""
        pytester.makeini(INI_PLAIN)
        pytester.makepyfile(
            test_user="""
import pytest
from guard import InsufficientBalance, require_balance

def test_plain():
    pass

def test_fixtures(guard_emulator, memory_provider, default_guard, low_funds):
    low_funds("clickatell", 0)
    with pytest.raises(InsufficientBalance):
        with require_balance(guard_emulator.clickatell, 1):
            pass
    with require_balance(memory_provider, 1):
        pass
"""
        )

        result = pytester.runpytest("-q", "-p", "no:asyncio", "-p", "no:aiohttp")

        result.assert_outcomes(passed=2)

    def test_any_loop_scope(self, pytester: pytest.Pytester) -> None:
        """The emulator serves tests on a module-scoped loop too."""
        source = """
import pytest
from guard import require_balance

@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(guard_emulator, memory_provider):
    async with require_balance(guard_emulator.oneclickdz, 10):
        pass
    async with require_balance(memory_provider, 1):
        pass

@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_again(guard_emulator):
    async with require_balance(guard_emulator.clickatell, 1):
        pass
"""
        result = run(pytester, source, mode="strict")

        result.assert_outcomes(passed=2)

    def test_closest_marker_wins(self, pytester: pytest.Pytester) -> None:
        """A test's own marker beats its module's; those name no required fixture."""
        source = """
import pytest
from decimal import Decimal

pytestmark = pytest.mark.guard_low_funds(provider="memory", balance=5000)

@pytest.mark.guard_low_funds(provider="memory", balance=50)
def test_own_marker(memory_provider):
    assert Decimal(50) == memory_provider.balance

def test_module_marker(memory_provider):
    assert Decimal(5000) == memory_provider.balance

@pytest.mark.guard_low_funds(provider="oneclickdz", balance=50)
def test_other_fixture(guard_emulator):
    assert Decimal(50) == guard_emulator.balance("oneclickdz")
"""
        result = run(pytester, source)

        result.assert_outcomes(passed=3)

    def test_marker_registered(self, pytester: pytest.Pytester) -> None:
        """The marker is registered, so --strict-markers accepts it."""
        pytester.makeini(INI.format(mode="auto"))

        result = pytester.runpytest_subprocess("--markers")

        result.stdout.fnmatch_lines(
            ["@pytest.mark.guard_low_funds(provider, balance)*"]
        )
