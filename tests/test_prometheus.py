from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY

from guard import (
    BalanceAlert,
    BalanceGuard,
    BalanceMonitor,
    BalanceUnavailable,
    InsufficientBalance,
    Threshold,
)
from guard.prometheus import GuardCollector, metrics_handler
from guard.providers import OneClickDZ
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiohttp.test_utils import TestClient

    from guard._accounts import AccountState
    from guard.typing import Provider

    Client = TestClient[web.Request, web.Application]
    MakeClient = Callable[[web.Application], Awaitable[Client]]

KEY = "prom-secret-key-0123456789"
DOWN_KEY = "prom-down-key-9876543210"
USER, PASSWORD, API_ID = "prom-user", "prom-password-secret", "3999001"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(state: AccountState, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {
            "provider": state.provider,
            "account": state.account,
            "currency": state.currency,
            **more,
        }.items()
    )


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 1000)
        emu.add_clickatell(USER, PASSWORD, API_ID, 50)
        yield emu


async def spend(guard: BalanceGuard, emu: Emulator, provider: Provider, n: int) -> None:
    """A guarded top-up that really debits the emulated account."""
    async with guard.reserve(provider, n):
        emu.set_balance(KEY, emu.balance(KEY) - n)


class TestScrape:
    async def test_every_series_after_known_calls(
        self, aiohttp_client: MakeClient, emu: Emulator
    ) -> None:
        """
        /metrics, served over loopback and parsed by prometheus-client,
        carries every series with the values a known sequence of calls left.
        """
        oneclick = emu.oneclickdz(KEY)
        clickatell = emu.clickatell(USER, PASSWORD, API_ID)
        down = OneClickDZ(DOWN_KEY, base_url="http://127.0.0.1:9")
        async with BalanceGuard(retries=0, outage_backoff=60) as guard:
            await spend(guard, emu, oneclick, 100)
            await spend(guard, emu, oneclick, 100)
            async with guard.reserve(oneclick, 30) as r:
                r.failed()  # allowed, not spent
            with pytest.raises(InsufficientBalance):
                await spend(guard, emu, oneclick, 5000)
            with pytest.raises(BalanceUnavailable):
                await guard.balance(down)
            with pytest.raises(BalanceUnavailable):  # fails fast: no fetch
                async with guard.reserve(down, 1):
                    pass
            await guard.balance(clickatell)
            one, dn, cl = guard.accounts()  # in the order first seen
            # The balance (800) is below the warning: one alert, delivered
            # to one notifier and failed at the other.
            alerts: list[BalanceAlert] = []

            def pager_down(alert: BalanceAlert) -> None:
                raise RuntimeError("pager down")

            monitor = BalanceMonitor(guard=guard, retries=0)
            monitor.watch(
                oneclick,
                [Threshold(900), Threshold(100, level="critical")],
                notify=[alerts.append, pager_down],
            )
            app = web.Application()
            app.router.add_get("/metrics", metrics_handler(guard, monitor=monitor))
            client = await aiohttp_client(app)
            async with monitor:
                await guard.balance(oneclick, fresh=True)  # a reading it gets
                await monitor.flush()
                assert ["warning"] == [alert.level for alert in alerts]
                async with guard.reserve(clickatell, 5):  # held while scraped
                    response = await client.get("/metrics")
                    text = await response.text()
            assert 200 == response.status
            assert response.content_type.startswith("text/plain")
        got = parse(text)

        assert 800 == got["guard_balance", labels(one)]
        assert 0 == got["guard_balance_held", labels(one)]
        assert 800 == got["guard_balance_available", labels(one)]
        assert one.balance is not None
        assert one.balance.fetched_at.timestamp() == pytest.approx(
            got["guard_balance_fetched_timestamp_seconds", labels(one)]
        )
        assert 50 == got["guard_balance", labels(cl)]
        assert 5 == got["guard_balance_held", labels(cl)]
        assert 45 == got["guard_balance_available", labels(cl)]
        assert 900 == got["guard_balance_threshold", labels(one, level="warning")]
        assert 100 == got["guard_balance_threshold", labels(one, level="critical")]
        assert ("guard_balance_threshold", labels(cl, level="warning")) not in got
        for outcome, count in {
            "allowed": 3,
            "refused": 1,
            "unavailable": 0,
            "failed_open": 0,
        }.items():
            assert count == got["guard_calls_total", labels(one, outcome=outcome)]
        assert 1 == got["guard_calls_total", labels(dn, outcome="unavailable")]
        fetches_ok = got["guard_fetches_total", labels(one, outcome="ok")]
        assert fetches_ok >= 1
        assert 0 == got["guard_fetches_total", labels(one, outcome="auth")]
        assert 0 == got["guard_fetches_total", labels(one, outcome="bad_response")]
        assert 1 == got["guard_fetches_total", labels(dn, outcome="unavailable")]
        assert 200 == got["guard_spend_total", labels(one)]
        assert 0 == got["guard_spend_total", labels(cl)]
        assert fetches_ok == got["guard_fetch_duration_seconds_count", labels(one)]
        assert (
            fetches_ok
            == got["guard_fetch_duration_seconds_bucket", labels(one, le="+Inf")]
        )
        assert 0 < got["guard_fetch_duration_seconds_sum", labels(one)]
        for (level, outcome), count in {
            ("warning", "delivered"): 1,
            ("warning", "failed"): 1,
            ("warning", "dropped"): 0,
            ("critical", "delivered"): 0,
            ("critical", "failed"): 0,
        }.items():
            alerted = frozenset({("level", level), ("outcome", outcome)})
            assert count == got["guard_alerts_total", alerted]
        # Never learned: no balance-valued sample at all, not a 0 or +Inf.
        for name in (
            "guard_balance",
            "guard_balance_available",
            "guard_balance_fetched_timestamp_seconds",
        ):
            assert (name, labels(dn)) not in got
        # SECURITY: no credential anywhere on the page.
        for secret in (KEY, DOWN_KEY, USER, PASSWORD, API_ID):
            assert secret not in text

    async def test_counters_exist_before_traffic(self, emu: Emulator) -> None:
        """An account's counters are exported at 0 before its first call."""
        async with BalanceGuard() as guard:
            await guard.balance(emu.oneclickdz(KEY))
            (state,) = guard.accounts()
            registry = CollectorRegistry()
            registry.register(GuardCollector(guard))
            got = parse(generate_latest(registry).decode())

        assert 0 == got["guard_calls_total", labels(state, outcome="refused")]
        assert 0 == got["guard_spend_total", labels(state)]
        assert not any(name.startswith("guard_alerts") for name, _ in got)
        assert not any(name == "guard_balance_threshold" for name, _ in got)

    async def test_one_collector_per_registry(self, guard: BalanceGuard) -> None:
        """A registry refuses a second collector exporting the same series."""
        registry = CollectorRegistry()
        registry.register(GuardCollector(guard))

        with pytest.raises(ValueError, match="guard_balance"):
            registry.register(GuardCollector(guard))

    async def test_shared_registry(self, guard: BalanceGuard) -> None:
        """metrics_handler adds to a registry it is given, such as REGISTRY."""
        registry = CollectorRegistry()
        metrics_handler(guard, registry=registry)

        assert "guard_calls" in {m.name for m in registry.collect()}
        assert "GuardCollector" in repr(GuardCollector(guard))
        assert REGISTRY is not registry


IMPORTERS = """
import sys

OPTIONAL = ("prometheus_client", "opentelemetry", "rich")
importers = []


class Spy:
    # Records which file imports an optional library first, and goes on.
    def find_spec(self, name, path=None, target=None):
        if name in OPTIONAL:
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            importers.append((name, frame.f_code.co_filename))
        return None


sys.meta_path.insert(0, Spy())
import guard, guard.aiohttp, guard.providers, guard.stores, guard.testing

ours = [(n, f) for n, f in importers if "/guard/" in f and "/site-packages/" not in f]
assert not ours, ours
print(importers)
"""


def test_import_guard_loads_no_metrics_library() -> None:
    """
    ``import guard`` (and its public modules) never imports Prometheus,
    OpenTelemetry or rich itself. (redis-py >= 7, under aiocache, imports
    OpenTelemetry on its own when both are installed.)
    """
    subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-c", IMPORTERS], check=True, timeout=60
    )


def test_import_guard_without_redis_loads_none() -> None:
    """Without redis-py in the way, none of them is in sys.modules at all."""
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import guard, guard.aiohttp, guard.providers, guard.stores, guard.testing\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'opentelemetry', 'rich'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-c", code], check=True, timeout=60
    )


RULES = pathlib.Path(__file__).parent.parent / "examples" / "prometheus"
PROMTOOL = shutil.which("promtool")


class TestRulesFile:
    @pytest.mark.skipif(
        PROMTOOL is None and not os.environ.get("CI"),
        reason="needs promtool (Debian package prometheus; CI installs it)",
    )
    @pytest.mark.parametrize(
        "command",
        [
            ["check", "rules", "guard-rules.yml"],
            ["test", "rules", "guard-rules.test.yml"],
        ],
    )
    def test_promtool(self, command: list[str]) -> None:
        """The example rules pass promtool's check and their own unit tests."""
        assert PROMTOOL is not None, "promtool is missing: apt-get install prometheus"
        result = subprocess.run(  # noqa: S603 - our own argv
            [PROMTOOL, *command],
            cwd=RULES,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        assert 0 == result.returncode, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_names_are_exported(self, guard: BalanceGuard) -> None:
        """Every guard series the rules read is one the collector exports."""
        exported = set()
        monitor = BalanceMonitor(guard=guard)
        for family in GuardCollector(guard, monitor=monitor).describe():
            exported.add(family.name)
            exported.update(
                f"{family.name}_{s}" for s in ("total", "bucket", "count", "sum")
            )
        used = set(
            re.findall(r"\bguard_[a-z_]+", (RULES / "guard-rules.yml").read_text())
        )

        assert used
        assert set() == used - exported


async def test_readme_snippet(aiohttp_client: MakeClient, guard: BalanceGuard) -> None:
    """The README's Prometheus snippet serves guard's series as written."""
    from test_docs import snippet

    code = snippet("from guard.prometheus import metrics_handler\n")
    app = web.Application()
    exec(code, {"app": app, "guard": guard})  # noqa: S102 - our README
    client = await aiohttp_client(app)

    assert "guard_calls_total" in await (await client.get("/metrics")).text()


@pytest.mark.parametrize("module", ["guard.prometheus", "guard.otel"])
def test_all_sorted_and_complete(module: str) -> None:
    """The integration modules are thin: a sorted __all__ of their public names."""
    import importlib
    import types

    mod = importlib.import_module(module)
    public = {
        name
        for name, value in vars(mod).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in ("annotations", "TYPE_CHECKING")
        and getattr(value, "__module__", module) == module
    }
    assert sorted(mod.__all__) == mod.__all__
    assert public == set(mod.__all__)
