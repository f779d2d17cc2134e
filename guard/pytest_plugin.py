"""
pytest fixtures for code that uses guard, loaded through the ``pytest11``
entry point as soon as guard is installed.

- ``guard_emulator``: a running `guard.testing.Emulator` on loopback, with
  a `OneClickDZ` (10000 DZD) and a `Clickatell` (100 credits) account and
  providers pointed at it (`GuardEmulator`).
- ``memory_provider``: an `InMemoryProvider` holding 1000 DZD.
- ``low_funds``: ``low_funds("oneclickdz", 50)`` sets a provider's balance;
  the marker ``@pytest.mark.guard_low_funds(provider="oneclickdz",
  balance=50)`` does it before the test starts.
- ``guard_alerts``: every alert a `guard.BalanceMonitor` raises during the
  test, in order (`guard.testing.CapturedAlerts`, a list).
- ``default_guard`` (autouse): every test gets a fresh default guard,
  closed after it, so no cached balance or hold leaks between tests.

The fixtures are synchronous: they need no pytest-asyncio, and work with it
in ``asyncio_mode = auto`` and in strict mode, whatever the tests' loop
scope. The emulator is served from guard's private event loop thread, so
that sync and async tests, and the synchronous ``require_balance`` API,
reach it alike. When a test's marker and its class's or module's name the
same provider, the closest wins.

``async def`` tests that use these fixtures or the marker run with no
configuration: when no async plugin claims such a test (an ``asyncio``,
``anyio`` or ``trio`` marker, anyio's ``anyio_backend``), the plugin hands
it to pytest-asyncio if that is active, as if it were marked
``@pytest.mark.asyncio``, and otherwise runs it itself on a fresh event
loop. Other async tests are left alone.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import weakref
from typing import TYPE_CHECKING, Any, Final

import attrs
import pytest

from guard import _sync
from guard._guard import BalanceGuard
from guard._money import to_amount
from guard._require import set_default_guard
from guard.providers import Clickatell, OneClickDZ
from guard.testing import CapturedAlerts, InMemoryProvider, capture_alerts

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator
    from decimal import Decimal

    from guard.testing import Emulator, Fault, RequestRecord, Route
    from guard.typing import AmountLike, Provider

__all__ = ["GuardEmulator", "LowFunds"]

MARKER: Final = "guard_low_funds"

_PROVIDERS_KEY = pytest.StashKey[dict[str, Any]]()

# An async test that uses one of these, or the marker, is guard's to run
# when no async plugin claims it (default_guard counts only when asked for
# by name: it is autouse).
_FIXTURES: Final = frozenset({"guard_emulator", "memory_provider", "low_funds"})
# Markers of the async plugins that run a test they are on.
_RUNNER_MARKERS: Final = ("asyncio", "anyio", "trio")
_RUN_KEY = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """
    Register the ``guard_low_funds`` marker.
    """
    config.addinivalue_line(
        "markers",
        f"{MARKER}(provider, balance): run the test with *balance* on the "
        "guard fixture's provider named *provider* ('oneclickdz', "
        "'clickatell' from guard_emulator, 'memory' from memory_provider)",
    )


@attrs.define(frozen=True)
class GuardEmulator:
    """
    What the ``guard_emulator`` fixture gives: a running emulator and a
    provider for each of its accounts.

    Attributes:
        emulator: The `guard.testing.Emulator`; everything it offers (faults,
            the request log, the clock) is there.
        oneclickdz: A `OneClickDZ` pointed at it, 10000 DZD to start with.
        clickatell: A `Clickatell` pointed at it, 100 credits to start with.
    """

    emulator: Emulator
    oneclickdz: OneClickDZ
    clickatell: Clickatell

    @property
    def url(self) -> str:
        """
        The emulator's base URL.
        """
        return self.emulator.url

    def set_balance(self, provider: Provider | str, balance: AmountLike) -> None:
        """
        Set the balance of an account: a provider object or ``"oneclickdz"``
        / ``"clickatell"``.
        """
        if isinstance(provider, str):
            provider = self._named(provider)
        self.emulator.set_balance(provider, balance)

    def balance(self, provider: Provider | str) -> Decimal:
        """
        The emulated balance of an account.
        """
        if isinstance(provider, str):
            provider = self._named(provider)
        return self.emulator.balance(provider)

    def fail(self, route: Route | str, fault: Fault, *, times: int | None = 1) -> None:
        """
        Answer the next *times* requests to *route* with *fault*; see
        `guard.testing.Emulator.fail`.
        """
        self.emulator.fail(route, fault, times=times)

    def count(self, route: Route | str | None = None) -> int:
        """
        How many requests reached *route* (all when None).
        """
        return self.emulator.count(route)

    @property
    def requests(self) -> list[RequestRecord]:
        """
        The request log, secrets masked.
        """
        return self.emulator.requests

    def _named(self, name: str) -> Provider:
        if name == self.oneclickdz.name:
            return self.oneclickdz
        if name == self.clickatell.name:
            return self.clickatell
        raise ValueError(f"the emulator has no provider named {name!r}")


class LowFunds:
    """
    What the ``low_funds`` fixture gives: ``low_funds(provider, balance)``
    sets the balance of one of the test's guard fixtures' providers.

    Set it before the first guarded call: a balance the guard already cached
    stays until the guard fetches again (``await guard.invalidate(p)``).
    """

    def __init__(self, node: pytest.Item) -> None:
        self._node = node

    def __call__(self, provider: Provider | str, balance: AmountLike) -> None:
        """
        Give *provider* (an object or a name: ``"oneclickdz"``,
        ``"clickatell"``, ``"memory"``) *balance*.

        Raises:
            LookupError: No fixture of this test provides it.
        """
        amount = to_amount(balance, name="balance")
        _set_balance(self._node, provider, amount)


def _known(node: pytest.Item) -> dict[str, Any]:
    return node.stash.setdefault(_PROVIDERS_KEY, {})


def _set_balance(node: pytest.Item, provider: Provider | str, amount: Decimal) -> None:
    known = _known(node)
    if isinstance(provider, InMemoryProvider):
        provider.balance = amount
        return
    emulated = known.get("emulator")
    if isinstance(provider, OneClickDZ | Clickatell):
        if emulated is None:
            raise LookupError(
                f"low_funds({provider.name!r}) needs the guard_emulator fixture"
            )
        emulated.set_balance(provider, amount)
        return
    if provider in ("oneclickdz", "clickatell"):
        if emulated is None:
            raise LookupError(
                f"low_funds({provider!r}) needs the guard_emulator fixture"
            )
        emulated.set_balance(provider, amount)
        return
    if provider == "memory":
        memory = known.get("memory")
        if memory is None:
            raise LookupError("low_funds('memory') needs the memory_provider fixture")
        memory.balance = amount
        return
    raise LookupError(f"no guard fixture provides {provider!r}")


def _marked(node: pytest.Item, names: tuple[str, ...]) -> None:
    """
    Apply the node's ``guard_low_funds`` markers that name one of *names*.
    """
    for name, balance in _closest_markers(node).items():
        if name in names:
            _set_balance(node, name, to_amount(balance, name="balance"))


def _closest_markers(node: pytest.Item) -> dict[str, Any]:
    """
    The balance each provider is marked with, the closest marker winning (a
    test's own over its class's over its module's).
    """
    balances: dict[str, Any] = {}
    for marker in node.iter_markers(MARKER):  # closest first
        name, balance = _marker_args(marker)
        balances.setdefault(name, balance)
    return balances


def _marker_args(marker: pytest.Mark) -> tuple[str, Any]:
    args = dict(zip(("provider", "balance"), marker.args, strict=False))
    args.update(marker.kwargs)
    if set(args) != {"provider", "balance"}:
        raise pytest.UsageError(
            f"@pytest.mark.{MARKER} takes provider= and balance=, got {sorted(args)}"
        )
    return str(args["provider"]), args["balance"]


_NEEDS: Final = {
    "oneclickdz": "guard_emulator",
    "clickatell": "guard_emulator",
    "memory": "memory_provider",
}


def _check_markers(request: pytest.FixtureRequest) -> None:
    node = request.node
    own = {id(marker) for marker in getattr(node, "own_markers", ())}
    for marker in node.iter_markers(MARKER):
        name, balance = _marker_args(marker)
        fixture = _NEEDS.get(name)
        if fixture is None:
            raise pytest.UsageError(
                f"@pytest.mark.{MARKER}: unknown provider {name!r}; "
                f"one of {', '.join(map(repr, _NEEDS))}"
            )
        to_amount(balance, name="balance")
        # A class or module marker applies to those of its tests that use
        # the fixture; one on the test itself is a mistake without it.
        if id(marker) in own and fixture not in request.fixturenames:
            pytest.fail(
                f"@pytest.mark.{MARKER}(provider={name!r}) needs the {fixture} "
                "fixture in this test",
                pytrace=False,
            )


def _make_emulator() -> Emulator:
    from guard.testing import Emulator

    return Emulator.with_demo_accounts()


def _handle(emu: Emulator) -> GuardEmulator:
    from guard.testing import (
        DEMO_CLICKATELL_API_ID,
        DEMO_CLICKATELL_PASSWORD,
        DEMO_CLICKATELL_USER,
        DEMO_ONECLICKDZ_KEY,
    )

    return GuardEmulator(
        emu,
        emu.oneclickdz(DEMO_ONECLICKDZ_KEY),
        emu.clickatell(
            DEMO_CLICKATELL_USER, DEMO_CLICKATELL_PASSWORD, DEMO_CLICKATELL_API_ID
        ),
    )


def _registered(request: pytest.FixtureRequest, emu: Emulator) -> GuardEmulator:
    handle = _handle(emu)
    _known(request.node)["emulator"] = handle
    _marked(request.node, ("oneclickdz", "clickatell"))
    return handle


@pytest.fixture(name="memory_provider")
def _memory_provider(request: pytest.FixtureRequest) -> InMemoryProvider:
    """
    An `InMemoryProvider` named ``"memory"`` holding 1000 DZD.
    """
    provider = InMemoryProvider(1000, name="memory", currency="DZD")
    _known(request.node)["memory"] = provider
    _marked(request.node, ("memory",))
    return provider


@pytest.fixture(name="low_funds")
def _low_funds(request: pytest.FixtureRequest) -> LowFunds:
    """
    ``low_funds(provider, balance)``: set a guard fixture provider's balance.
    """
    return LowFunds(request.node)


@pytest.fixture(name="guard_emulator")
def _guard_emulator(request: pytest.FixtureRequest) -> Iterator[GuardEmulator]:
    """
    A running emulator on loopback with one account per provider.
    """
    emu = _make_emulator()
    # Served from guard's private loop thread, never from the test's loop:
    # any test reaches it, sync or async, whatever its loop scope.
    _sync.run(emu.start)
    try:
        yield _registered(request, emu)
    finally:
        _sync.run(emu.close)


@pytest.fixture(name="guard_alerts")
def _guard_alerts() -> Iterator[CapturedAlerts]:
    """
    Every alert a `guard.BalanceMonitor` raises during the test, in order.
    """
    with capture_alerts() as alerts:
        yield alerts


@pytest.fixture(name="default_guard", autouse=True)
def _default_guard(request: pytest.FixtureRequest) -> Iterator[BalanceGuard]:
    """
    A fresh default guard for each test, closed after it.
    """
    # Synchronous, so that it costs a sync test no event loop and works
    # without pytest-asyncio.
    _check_markers(request)
    guard = BalanceGuard()
    _made.add(guard)
    try:
        with set_default_guard(guard):
            yield guard
    finally:
        _close(guard)


# The default guards of tests not yet closed: a test's event loop closes
# those bound to it just before it goes (see pytest_fixture_setup).
_made: weakref.WeakSet[BalanceGuard] = weakref.WeakSet()


def _close(guard: BalanceGuard) -> None:
    _made.discard(guard)
    loop = guard._loops.home
    if guard.closed or loop is None:
        return  # Never used: it holds nothing.
    if not loop.is_closed() and not loop.is_running():
        # The test's loop, between tests (a module-scoped one).
        loop.run_until_complete(guard.aclose())
    else:
        # guard's private loop, or one running in another thread, to which
        # the guard forwards; or one that is gone, whose connections went
        # with it.
        _sync.run(guard.aclose)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    """
    Close the default guards bound to a test event loop before it closes.
    """
    result = yield
    loop = None
    if isinstance(result, asyncio.Runner):  # pytest-asyncio >= 0.25
        loop = result.get_loop()
    elif isinstance(result, asyncio.AbstractEventLoop):
        loop = result
    if loop is not None:
        # Fixture finalizers run last in, first out: this one before the
        # loop's own teardown.
        fixturedef.addfinalizer(functools.partial(_close_on, loop))
    return result


def _close_on(loop: asyncio.AbstractEventLoop) -> None:
    bound = [g for g in _made if g._loops.home is loop and not g.closed]
    for guard in bound:
        _made.discard(guard)
        if not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(guard.aclose())


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, object, object]:
    """
    Take on the async tests that use guard's fixtures or marker and that no
    async plugin claims.

    Innermost of the wrappers, so that pytest-asyncio (converting marked
    coroutines as it collects them) sees the marker added here.
    """
    result = yield
    if inspect.iscoroutinefunction(obj):
        items = result if isinstance(result, list) else [result]
        for item in items:
            if isinstance(item, pytest.Function) and _unclaimed_guard_test(item):
                if item.config.pluginmanager.hasplugin("asyncio"):
                    item.add_marker(pytest.mark.asyncio)
                else:
                    item.stash[_RUN_KEY] = True
    return result


def _unclaimed_guard_test(item: pytest.Function) -> bool:
    names = item.fixturenames
    if any(item.get_closest_marker(m) is not None for m in _RUNNER_MARKERS):
        return False
    if "anyio_backend" in names:  # anyio's marker, or its auto mode
        return False
    return (
        item.get_closest_marker(MARKER) is not None
        or not _FIXTURES.isdisjoint(names)
        or "default_guard" in item._fixtureinfo.argnames
    )


@pytest.hookimpl
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """
    Run an async guard test taken on at collection, on a fresh event loop.
    """
    if not pyfuncitem.stash.get(_RUN_KEY, False):
        return None
    funcargs = pyfuncitem.funcargs
    kwargs = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    with asyncio.Runner() as runner:
        try:
            runner.run(pyfuncitem.obj(**kwargs))
        finally:
            # Close the test's default guard before its loop closes.
            _close_on(runner.get_loop())
    return True
