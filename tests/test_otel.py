from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from guard import (
    BalanceAlert,
    BalanceGuard,
    BalanceMonitor,
    BalanceUnavailable,
    ConfigurationError,
    Threshold,
)
from guard.monitor import Watched
from guard.otel import instrument
from guard.providers import OneClickDZ
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "otel-secret-key-0123456789"
DOWN_KEY = "otel-down-key-9876543210"

Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


class Sdk:
    """An SDK configured for one test: in-memory metrics and spans."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.spans))

    def points(self) -> Points:
        data = self.reader.get_metrics_data()
        got: Points = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                assert "guard" == scope.scope.name
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        labels = frozenset(dict(point.attributes or {}).items())
                        value = getattr(point, "value", None)
                        if value is None:  # a histogram
                            value = point.count  # type: ignore[union-attr]
                        got[metric.name, labels] = value
        return got


@pytest.fixture(name="sdk")
def _sdk() -> Sdk:
    return Sdk()


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 1000)
        yield emu


def attrs_of(provider: str, account: str, **more: str) -> frozenset[tuple[str, Any]]:
    return frozenset(
        {
            "guard.provider": provider,
            "guard.account": account,
            "guard.currency": "DZD",
            **more,
        }.items()
    )


class TestMetrics:
    async def test_figures(self, sdk: Sdk, emu: Emulator) -> None:
        """The SDK's reader sees the guard's figures, and no unknown balance."""
        oneclick = emu.oneclickdz(KEY)
        down = OneClickDZ(DOWN_KEY, base_url="http://127.0.0.1:9")
        async with BalanceGuard(retries=0, settle="debit") as guard:
            async with guard.reserve(oneclick, 100):
                emu.set_balance(KEY, 900)
            with pytest.raises(BalanceUnavailable):
                await guard.balance(down)
            one, dn = guard.accounts()
            alerts: list[BalanceAlert] = []
            monitor = BalanceMonitor(guard=guard)
            monitor.watch(oneclick, [Threshold(950)], notify=[alerts.append])
            instrument(
                guard,
                monitor=monitor,
                meter_provider=sdk.meters,
                tracer_provider=sdk.tracers,
            )
            async with monitor:
                for _ in range(500):  # its first poll: 900, below 950
                    await monitor.flush()
                    if alerts:
                        break
                    await asyncio.sleep(0.01)
                assert ["warning"] == [alert.level for alert in alerts]
                async with guard.reserve(oneclick, 7):
                    got = sdk.points()

        a = attrs_of("oneclickdz", one.account)
        assert 900 == got["guard.balance", a]
        assert 7 == got["guard.balance.held", a]
        assert 893 == got["guard.balance.available", a]
        assert one.balance is not None
        assert one.balance.fetched_at.timestamp() == pytest.approx(
            got["guard.balance.fetch_time", a]
        )
        assert (
            950
            == got["guard.balance.threshold", a | {("guard.alert.level", "warning")}]
        )
        assert 2 == got["guard.calls", a | {("guard.outcome", "allowed")}]
        assert 100 == got["guard.spend", a]
        assert 1 == got["guard.fetches", a | {("guard.outcome", "ok")}]
        d = attrs_of("oneclickdz", dn.account)
        assert 1 == got["guard.fetches", d | {("guard.outcome", "unavailable")}]
        alert = frozenset(
            {("guard.alert.level", "warning"), ("guard.outcome", "delivered")}
        )
        assert 1 == got["guard.alerts", alert]
        for name in (
            "guard.balance",
            "guard.balance.available",
            "guard.balance.fetch_time",
        ):
            assert (name, d) not in got
        assert KEY not in repr(got)
        assert DOWN_KEY not in repr(got)

    async def test_fetch_duration_and_spans(self, sdk: Sdk, emu: Emulator) -> None:
        """Each provider request is a span with its outcome, and is timed."""
        oneclick = emu.oneclickdz(KEY)
        down = OneClickDZ(DOWN_KEY, base_url="http://127.0.0.1:9")
        async with BalanceGuard(retries=0) as guard:
            instrument(guard, meter_provider=sdk.meters, tracer_provider=sdk.tracers)
            await guard.balance(oneclick)
            await guard.balance(oneclick, fresh=True)
            with pytest.raises(BalanceUnavailable):
                await guard.balance(down)
            one, dn = guard.accounts()
            got = sdk.points()

        spans = sdk.spans.get_finished_spans()
        attributes = [dict(s.attributes or {}) for s in spans]
        assert ["guard.balance.fetch"] * 3 == [s.name for s in spans]
        assert [
            (one.account, "ok"),
            (one.account, "ok"),
            (dn.account, "unavailable"),
        ] == [(a["guard.account"], a["guard.outcome"]) for a in attributes]
        assert {"oneclickdz"} == {a["guard.provider"] for a in attributes}
        assert StatusCode.ERROR == spans[2].status.status_code
        assert StatusCode.UNSET == spans[0].status.status_code
        assert "BalanceUnavailable" == spans[2].status.description
        for span in spans:
            assert KEY not in repr(dict(span.attributes or {}))
        a = attrs_of("oneclickdz", one.account, **{"guard.outcome": "ok"})
        assert 2 == got["guard.fetch.duration", a]

    async def test_uninstrument(self, sdk: Sdk, emu: Emulator) -> None:
        """After uninstrument, no spans and no observations; then again is fine."""
        async with BalanceGuard() as guard:
            inst = instrument(
                guard, meter_provider=sdk.meters, tracer_provider=sdk.tracers
            )
            with pytest.raises(ConfigurationError, match="instrumented already"):
                instrument(guard)
            inst.uninstrument()
            assert "active=False" in repr(inst)
            await guard.balance(emu.oneclickdz(KEY))
            got = sdk.points()
            instrument(guard, meter_provider=MeterProvider())

        assert [] == list(sdk.spans.get_finished_spans())
        assert not any(name.startswith("guard.balance") for name, _ in got)


class TestNoSdk:
    async def test_nothing_happens(self, emu: Emulator) -> None:
        """With no SDK configured, instruments never read the guard or the monitor."""
        calls: list[str] = []

        class Counting(BalanceMonitor):
            def watched(self) -> tuple[Watched, ...]:
                calls.append("watched")
                return super().watched()

        async with BalanceGuard() as guard:
            monitor = Counting(guard=guard)
            instrument(guard, monitor=monitor)
            await guard.balance(emu.oneclickdz(KEY))
            (state,) = guard.accounts()

        assert [] == calls
        assert 1 == state.fetches["ok"]
