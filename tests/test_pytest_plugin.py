from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _readme import plugin_snippet

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

# A project with only guard installed: no async plugin but anyio's, which
# comes with guard and claims only the tests marked for it.
ONLY_GUARD = ("-p", "no:asyncio", "-p", "no:aiohttp")

# How a fresh project can be set up for its async tests: nothing at all (with
# or without pytest-asyncio installed), or pytest-asyncio in either mode.
FRESH_PROJECTS = {
    "only-guard": ONLY_GUARD,
    "pytest-asyncio-unconfigured": (),
    "pytest-asyncio-strict": ("-o", "asyncio_mode=strict"),
    "pytest-asyncio-auto": ("-o", "asyncio_mode=auto"),
}


def fresh_projects(*names: str) -> pytest.MarkDecorator:
    """
    Parametrize a test's ``options`` with the fresh projects *names*.
    """
    return pytest.mark.parametrize(
        "options", [FRESH_PROJECTS[name] for name in names], ids=names
    )


# Warnings are errors, but for pytest-asyncio's own about its unset option.
STRICT_WARNINGS = (
    "-W",
    "error",
    "-W",
    'ignore:The configuration option "asyncio_default_fixture_loop_scope"'
    ":pytest.PytestDeprecationWarning",
)


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

    @pytest.mark.parametrize("mode", ["auto", "strict"])
    def test_with_aiohttp_client(self, pytester: pytest.Pytester, mode: str) -> None:
        """
        The fixtures combine with pytest-aiohttp's aiohttp_client, unmarked
        in strict mode too: the test runs on its fixture's loop.
        """
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
        result = run(pytester, source, mode=mode)

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


class TestFreshProject:
    """
    guard's async tests in a project with no ini file and no asyncio_mode.
    """

    @fresh_projects(*FRESH_PROJECTS)
    def test_readme_snippet(
        self, pytester: pytest.Pytester, options: tuple[str, ...]
    ) -> None:
        """The README's plugin example passes as it is written."""
        pytester.makepyfile(test_readme=plugin_snippet())

        result = pytester.runpytest(*STRICT_WARNINGS, *options)

        result.assert_outcomes(passed=2)

    @fresh_projects("only-guard", "pytest-asyncio-unconfigured")
    def test_example_copied_out(
        self, pytester: pytest.Pytester, options: tuple[str, ...]
    ) -> None:
        """examples/test_with_plugin.py passes outside this repository."""
        shutil.copy(ROOT / "examples" / "test_with_plugin.py", pytester.path)

        result = pytester.runpytest(*STRICT_WARNINGS, *options)

        result.assert_outcomes(passed=4)


class TestAsyncRunner:
    """
    Which async tests the plugin takes on, and how.
    """

    def test_only_guards_tests(self, pytester: pytest.Pytester) -> None:
        """
        With no async plugin, guard runs the async tests that ask for its
        fixtures or carry its marker, and leaves the others to pytest.
        """
        pytester.makepyfile(
            test_fixtures="""
import asyncio

async def test_not_guards():
    pass

async def test_default_guard_by_name(default_guard):
    await asyncio.sleep(0)

class TestInClass:
    async def test_method(self, low_funds):
        await asyncio.sleep(0)
""",
            test_marker="""
import asyncio
import pytest

pytestmark = pytest.mark.guard_low_funds(provider="memory", balance=5)

async def test_marked_module():
    await asyncio.sleep(0)
""",
        )

        result = pytester.runpytest(*STRICT_WARNINGS, *ONLY_GUARD)

        result.assert_outcomes(passed=3, failed=1)
        result.stdout.fnmatch_lines(
            ["FAILED *::test_not_guards - Failed: async def functions are no*"]
        )

    def test_fresh_default_guard(self, pytester: pytest.Pytester) -> None:
        """Tests guard runs get a fresh default guard, closed on their loop."""
        pytester.makepyfile(test_user=FRESH_GUARD)

        result = pytester.runpytest(*STRICT_WARNINGS, *ONLY_GUARD)

        result.assert_outcomes(passed=3)

    def test_failures_reported(self, pytester: pytest.Pytester) -> None:
        """A failing async guard test fails, with its own traceback."""
        pytester.makepyfile(
            test_user="""
async def test_fails(memory_provider):
    assert memory_provider.fetches == 42
"""
        )

        result = pytester.runpytest(*ONLY_GUARD)

        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*assert 0 == 42*"])

    # Not with pytest-asyncio in auto mode: it claims anyio's tests itself.
    @fresh_projects("only-guard", "pytest-asyncio-strict")
    def test_leaves_anyio_tests_to_anyio(
        self, pytester: pytest.Pytester, options: tuple[str, ...]
    ) -> None:
        """A guard test marked for anyio, or asking for its backend, is anyio's."""
        pytester.makepyfile(
            test_user="""
import pytest
from guard import require_balance

@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_anyio(request, memory_provider):
    assert request.node.get_closest_marker("asyncio") is None
    async with require_balance(memory_provider, 1):
        pass

async def test_anyio_backend(request, anyio_backend, memory_provider):
    assert request.node.get_closest_marker("asyncio") is None
"""
        )

        result = pytester.runpytest(*STRICT_WARNINGS, *options)

        result.assert_outcomes(passed=2)
