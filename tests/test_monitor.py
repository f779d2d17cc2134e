"""
BalanceMonitor: alerts once per crossing, recoveries, forecasts and
delivery, against the provider emulator over real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import runpy
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from guard import (
    AmountError,
    BalanceAlert,
    BalanceGuard,
    BalanceMonitor,
    ConfigurationError,
    Forecast,
    GuardEvent,
    Threshold,
    _sync,
    require_balance,
)
from guard.monitor import DEFAULT_HYSTERESIS, Watched
from guard.monitor._state import MemoryAlertState, Wish
from guard.providers import OneClickDZ
from guard.testing import (
    CapturedAlerts,
    Emulator,
    InMemoryProvider,
    Route,
    capture_alerts,
)

KEY = "live-key-monitor-5b7c0e"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sms_alerts.py"
THRESHOLDS = [
    Threshold(3000),
    Threshold(1000, level="critical"),
    Threshold(4000, level="notice"),
]


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 5000)
        yield emu


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def topup(
    guard: BalanceGuard,
    provider: OneClickDZ,
    http: aiohttp.ClientSession,
    url: str,
    amount: int,
) -> None:
    """One guarded OneClickDZ top-up that really debits the emulator."""
    async with (
        guard.reserve(provider, amount) as r,
        http.post(
            f"{url}/v3/mobile/send",
            headers={"X-Access-Token": KEY},
            json={
                "plan_code": "PREPAID_MOBILIS",
                "MSSIDN": "0661000000",
                "amount": amount,
            },
        ) as reply,
    ):
        if not (await reply.json())["success"]:
            r.failed()


class Collect:
    """An async notifier that keeps what it is given."""

    def __init__(self) -> None:
        self.alerts: list[BalanceAlert] = []

    async def __call__(self, alert: BalanceAlert) -> None:
        self.alerts.append(alert)

    def kinds(self) -> list[tuple[str, str]]:
        return [(a.kind, a.level) for a in self.alerts]


WALK = [
    ("low", "notice"),
    ("low", "warning"),
    ("low", "critical"),
    ("recovered", "notice"),
]


class TestWalk:
    @pytest.mark.parametrize("settle", ["invalidate", "debit"])
    async def test_spent_to_zero_and_refilled(
        self,
        emu: Emulator,
        http: aiohttp.ClientSession,
        guard_alerts: CapturedAlerts,
        settle: str,
    ) -> None:
        """5,000 DZD spent to 0 through 3 thresholds, refilled: 3 low + 1 recovered."""
        oneclick = emu.oneclickdz(KEY)
        collect = Collect()
        async with BalanceGuard(settle=settle) as g:  # type: ignore[arg-type]
            monitor = BalanceMonitor(guard=g, interval=300)
            monitor.watch(oneclick, THRESHOLDS, notify=[collect])
            async with monitor:
                for _ in range(20):
                    await topup(g, oneclick, http, emu.url, 250)
                    await monitor.flush()
                assert Decimal(0) == emu.balance(KEY)
                # What the last spend left, as the next call or poll learns it.
                await g.balance(oneclick)
                await monitor.flush()
                assert "critical" == monitor.level("oneclickdz", _digest(g))
                emu.set_balance(KEY, 5000)
                await g.balance(oneclick, fresh=True)
                await monitor.flush()
                assert monitor.level("oneclickdz", _digest(g)) is None
        assert WALK == collect.kinds()
        assert WALK == guard_alerts.kinds()
        assert [Decimal(4000), Decimal(3000), Decimal(1000), Decimal(4000)] == [
            a.threshold for a in collect.alerts
        ]
        assert {("notice", "delivered"): 2, ("warning", "delivered"): 1} | {
            ("critical", "delivered"): 1
        } == monitor.alert_counts()

    async def test_jump_past_several_fires_each_lowest_last(
        self, emu: Emulator
    ) -> None:
        """A jump past every threshold fires one alert each, lowest last."""
        oneclick = emu.oneclickdz(KEY)
        collect = Collect()
        async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
            monitor.watch(oneclick, THRESHOLDS, notify=[collect])
            await g.balance(oneclick)
            emu.set_balance(KEY, 500)
            await g.balance(oneclick, fresh=True)
            await monitor.flush()
            emu.set_balance(KEY, 2000)
            await g.balance(oneclick, fresh=True)  # above 1,050: one recovered
            await monitor.flush()
        assert [
            ("low", "notice"),
            ("low", "warning"),
            ("low", "critical"),
            ("recovered", "critical"),
        ] == collect.kinds()
        low = collect.alerts[2]
        assert (Decimal(500), "oneclickdz", "DZD") == (
            low.balance,
            low.provider,
            low.currency,
        )
        assert low.at.tzinfo is not None

    async def test_flapping_polls_alert_once(
        self, emu: Emulator, guard_alerts: CapturedAlerts
    ) -> None:
        """1,000 readings alternating 1,000 DZD +- 1: one alert."""
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
            monitor.watch(oneclick, [Threshold(1000)])
            for i in range(1000):
                emu.set_balance(KEY, 999 if i % 2 == 0 else 1001)
                await g.balance(oneclick, fresh=True)
            await monitor.flush()
        assert [("low", "warning")] == guard_alerts.kinds()

    async def test_first_reading_below_alerts(self, emu: Emulator) -> None:
        """A monitor started on a low account says so once."""
        emu.set_balance(KEY, 10)
        oneclick = emu.oneclickdz(KEY)
        with capture_alerts() as alerts:
            async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
                monitor.watch(oneclick, [Threshold(1000, level="critical")])
                await asyncio.sleep(0.05)  # the first poll
                await g.balance(oneclick, fresh=True)
                await monitor.flush()
        assert [
            "oneclickdz: 10.00 DZD left, at or below the 1,000 DZD critical threshold"
        ] == [str(a) for a in alerts]

    async def test_poller_reads_through_the_guard(self, emu: Emulator) -> None:
        """Polls are served by the guard's cache: no fetch traffic made already."""
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard(ttl=30) as g:
            await g.balance(oneclick)
            before = emu.count(Route.ONECLICKDZ_BALANCE)
            monitor = BalanceMonitor(guard=g, interval=0.01)
            monitor.watch(oneclick, THRESHOLDS)
            async with monitor:
                await asyncio.sleep(0.1)
                await monitor.flush()
            assert before == emu.count(Route.ONECLICKDZ_BALANCE)

    async def test_poller_polls_at_most_every_ttl(self, emu: Emulator) -> None:
        """An interval below the guard's ttl polls every ttl, and polls do fetch."""
        oneclick = emu.oneclickdz(KEY)
        with capture_alerts() as alerts:
            async with BalanceGuard(ttl=0.2) as g:
                monitor = BalanceMonitor(guard=g, interval=0.01)
                monitor.watch(oneclick, [Threshold(1000)])
                async with monitor:
                    await asyncio.sleep(0.05)
                    emu.set_balance(KEY, 900)
                    await asyncio.sleep(0.5)
                    await monitor.flush()
                fetches = emu.count(Route.ONECLICKDZ_BALANCE)
        assert 2 <= fetches <= 5
        assert [("low", "warning")] == alerts.kinds()


def _digest(g: BalanceGuard) -> str:
    return g.accounts()[0].account


class TestEngine:
    @pytest.mark.parametrize("settle", ["invalidate", "debit"])
    async def test_settled_after_the_store(self, settle: str) -> None:
        """A settled hook sees the store settled: hold gone, balance debited or gone."""
        provider = InMemoryProvider(100)
        seen: list[tuple[Decimal, Decimal | None]] = []
        async with BalanceGuard(settle=settle) as g:  # type: ignore[arg-type]

            def hook(event: GuardEvent) -> None:
                if event.kind == "settled":
                    entry = g.store.read(g._track(provider).account)
                    # MemoryStore.read does not await: run it to its end here.
                    try:
                        entry.send(None)
                    except StopIteration as done:
                        cached = done.value
                    seen.append((g.held(provider), cached and cached.amount))

            g.add_hook(hook)
            async with g.reserve(provider, 30):
                pass
        assert [(Decimal(0), Decimal(70) if settle == "debit" else None)] == seen

    async def test_hook_kinds(self) -> None:
        """add_hook(kinds=...) gets only those events; remove_hook drops them."""
        provider = InMemoryProvider(100)
        fetched: list[str] = []
        every: list[str] = []
        async with BalanceGuard() as g:
            g.add_hook(lambda e: fetched.append(e.kind), kinds=["fetched"])
            g.add_hook(lambda e: every.append(e.kind))
            async with g.reserve(provider, 30):
                pass
            assert ["fetched"] == fetched
            assert ["fetched", "settled"] == every
            for hook in list(g._hooks):
                g.remove_hook(hook)
            async with g.reserve(provider, 30):
                pass
            assert (["fetched"], 2) == (fetched, len(every))

    @pytest.mark.parametrize("kinds", [[], ["fetched", "spent"]])
    def test_bad_hook_kinds(self, kinds: list[str]) -> None:
        """Unknown or no kinds are refused, naming the known ones."""
        with pytest.raises(ConfigurationError, match="kinds must be event kinds"):
            BalanceGuard().add_hook(print, kinds=kinds)  # type: ignore[arg-type]


class TestValues:
    def test_threshold_reads_amounts(self) -> None:
        """below and hysteresis take int, str or Decimal; the default is 5 %."""
        t = Threshold("1000.50", level="critical", hysteresis=10)
        assert (Decimal("1000.50"), Decimal(10)) == (t.below, t.hysteresis)
        assert Decimal("1010.50") == t.rearm_above
        assert Decimal("0.05") == DEFAULT_HYSTERESIS
        assert Decimal(1050) == Threshold(1000).rearm_above

    @pytest.mark.parametrize("below", [-1, "nan", 1.5e30, True])
    def test_bad_below(self, below: object) -> None:
        """A bad amount is an AmountError naming below."""
        with pytest.raises(AmountError, match="below"):
            Threshold(below)  # type: ignore[arg-type]

    def test_bad_level(self) -> None:
        """An empty level is refused."""
        with pytest.raises(ConfigurationError, match="level"):
            Threshold(1, level=" ")

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"hours": 0}, "hours"),
            ({"hours": "6"}, "hours"),
            ({"hours": 6, "window": 1}, "window"),
            ({"hours": 6, "window": "x"}, "window"),
        ],
    )
    def test_bad_forecast(self, kwargs: dict[str, object], match: str) -> None:
        """A forecast's hours and window are checked."""
        with pytest.raises(ConfigurationError, match=match):
            Forecast(**kwargs)  # type: ignore[arg-type]

    def test_alert_sentences(self) -> None:
        """Each kind of alert reads as one sentence."""
        at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        low = BalanceAlert(
            kind="low",
            level="critical",
            threshold=Decimal(1000),
            balance=Decimal("950"),
            provider="oneclickdz",
            account="abc",
            currency="DZD",
            at=at,
        )
        assert (
            "oneclickdz: 950.00 DZD left, at or below the 1,000 DZD critical threshold"
            == str(low)
        )
        back = BalanceAlert(
            kind="recovered",
            level="warning",
            threshold=Decimal("2.5"),
            balance=Decimal("5000"),
            provider="clickatell",
            account="abc",
            currency="credits",
            at=at,
        )
        assert (
            "clickatell: 5,000.00 credits, back above the 2.5 credits warning threshold"
            == str(back)
        )
        body = low.as_dict()
        assert "2026-01-01T00:00:00+00:00" == body["at"]
        assert all(isinstance(v, str) for v in body.values())
        assert str(low) == body["text"]


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"interval": 0}, "interval"),
            ({"interval": "5"}, "interval"),
            ({"queue_size": 0}, "queue_size"),
            ({"retries": -1}, "retries"),
            ({"timeout": float("nan")}, "timeout"),
            ({"backoff": True}, "backoff"),
        ],
    )
    def test_bad_options(self, kwargs: dict[str, object], match: str) -> None:
        """Each bad option is named."""
        with pytest.raises(ConfigurationError, match=match):
            BalanceMonitor(**kwargs)  # type: ignore[arg-type]

    def test_bad_watch(self) -> None:
        """watch() refuses no thresholds, a non-threshold, twins and non-callables."""
        monitor = BalanceMonitor()
        p = OneClickDZ("k")
        with pytest.raises(ConfigurationError, match="at least one"):
            monitor.watch(p, [])
        with pytest.raises(ConfigurationError, match="Threshold or Forecast"):
            monitor.watch(p, [1000])  # type: ignore[list-item]
        with pytest.raises(ConfigurationError, match="twice"):
            monitor.watch(p, [Threshold(1), Threshold(1)])
        with pytest.raises(ConfigurationError, match="callables"):
            monitor.watch(p, [Threshold(1)], notify=["http://x"])  # type: ignore[list-item]
        monitor.watch(p, [Threshold(1)])
        with pytest.raises(ConfigurationError, match="already watched"):
            monitor.watch(p, [Threshold(2)])

    async def test_reads_for_dashboards(self, emu: Emulator) -> None:
        """watched(), level() and alert_counts() describe the monitor."""
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
            assert () == monitor.watched()
            monitor.watch(oneclick, THRESHOLDS)  # while running
            with pytest.raises(ConfigurationError, match="already watched"):
                monitor.watch(oneclick, THRESHOLDS)
            await monitor.flush()
            (watched,) = monitor.watched()
            assert (
                Watched(
                    provider="oneclickdz",
                    account=_digest(g),
                    currency="DZD",
                    thresholds=(
                        (Decimal(4000), "notice"),
                        (Decimal(3000), "warning"),
                        (Decimal(1000), "critical"),
                    ),
                )
                == watched
            )
            assert monitor.level("oneclickdz", watched.account) is None
            assert monitor.level("nope", "nope") is None
            emu.set_balance(KEY, 2000)
            await g.balance(oneclick, fresh=True)
            await monitor.flush()
            assert "warning" == monitor.level("oneclickdz", watched.account)
            assert {} == monitor.alert_counts()  # no notifiers
            with pytest.raises(RuntimeError, match="running already"):
                await monitor.start_async()
        assert "running=False" in repr(monitor)

    async def test_default_guard(
        self, emu: Emulator, default_guard: BalanceGuard, guard_alerts: CapturedAlerts
    ) -> None:
        """With no guard, the monitor watches the default guard."""
        oneclick = emu.oneclickdz(KEY)
        monitor = BalanceMonitor()
        assert default_guard is monitor.guard
        monitor.watch(oneclick, [Threshold(6000)])
        async with monitor:
            await default_guard.balance(oneclick)
            await monitor.flush()
        assert [("low", "warning")] == guard_alerts.kinds()

    async def test_restart(self, emu: Emulator) -> None:
        """A stopped monitor can be started again with the same watches."""
        oneclick = emu.oneclickdz(KEY)
        collect = Collect()
        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g)
            monitor.watch(oneclick, [Threshold(1000)], notify=[collect])
            async with monitor:
                pass
            await monitor.aclose()  # idempotent
            emu.set_balance(KEY, 10)
            async with monitor:
                await g.balance(oneclick, fresh=True)
                await monitor.flush()
        assert [("low", "warning")] == collect.kinds()


class TestForecast:
    async def test_runs_out_soon(
        self, emu: Emulator, http: aiohttp.ClientSession, guard_alerts: CapturedAlerts
    ) -> None:
        """Spending fast enough to empty the account within the hours alerts once."""
        oneclick = emu.oneclickdz(KEY)
        async with (
            BalanceGuard(settle="invalidate") as g,
            BalanceMonitor(guard=g) as monitor,
        ):
            monitor.watch(oneclick, [Threshold(10), Forecast(6, level="critical")])
            for _ in range(3):
                await topup(g, oneclick, http, emu.url, 500)  # 1,500 in < 60 s
                await g.balance(oneclick)
                await monitor.flush()
        (alert,) = guard_alerts
        # The first 500 DZD spent within the first minute: 30,000 DZD an
        # hour, against 5,000 DZD.
        assert ("low", "critical") == (alert.kind, alert.level)
        assert alert.hours_left is not None
        assert alert.hours_left <= 5000 / 30000
        assert f"runs out in about {alert.hours_left:.1f} h at the recent" in str(alert)
        assert Decimal("180000.00") == alert.threshold

    async def test_refills_are_not_spending(self, emu: Emulator) -> None:
        """A balance that only moves up and down by refills forecasts nothing."""
        oneclick = emu.oneclickdz(KEY)
        with capture_alerts() as alerts:
            async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
                monitor.watch(oneclick, [Forecast(6)])
                for balance in (10, 5000, 10):
                    emu.set_balance(KEY, balance)
                    await g.balance(oneclick, fresh=True)
                await monitor.flush()
        assert [] == alerts


class TestSync:
    def test_from_threaded_code(self, emu_sync: tuple[str, Emulator]) -> None:
        """start()/stop() run the monitor on guard's private loop."""
        url, emu = emu_sync
        oneclick = OneClickDZ(KEY, base_url=url)
        seen: list[BalanceAlert] = []
        g = BalanceGuard(settle="invalidate")  # the next call reads the refill
        monitor = BalanceMonitor(guard=g, interval=300)
        monitor.watch(oneclick, [Threshold(1000)], notify=[seen.append])
        with monitor:
            with require_balance(oneclick, 4500, guard=g):
                pass
            emu.set_balance(KEY, 500)
            with require_balance(oneclick, 1, guard=g):
                pass
            monitor.flush_sync()
            assert ["low"] == [a.kind for a in seen]
            with pytest.raises(RuntimeError, match="running already"):
                monitor.start()
        monitor.stop()  # stopped already: nothing
        _sync.close_guard(g)
        assert 1 == len(seen)


@pytest.fixture(name="emu_sync")
def _emu_sync() -> Iterator[tuple[str, Emulator]]:
    emu = Emulator()
    emu.add_oneclickdz(KEY, 5000)
    _sync.run(emu.start)
    try:
        yield emu.url, emu
    finally:
        _sync.run(emu.close)


class TestLogging:
    async def test_alert_logged(
        self, emu: Emulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Each alert is logged at INFO."""
        caplog.set_level(logging.INFO, "guard")
        emu.set_balance(KEY, 10)
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
            monitor.watch(oneclick, [Threshold(100)])
            await g.balance(oneclick)
            await monitor.flush()
        assert any(
            "guard alert: oneclickdz: 10.00 DZD left" in r.message
            for r in caplog.records
        )


class TestEdges:
    async def test_guard_on_another_loop(self, emu_sync: tuple[str, Emulator]) -> None:
        """A guard living on the private loop, a monitor on this one: readings cross."""
        url, emu = emu_sync
        oneclick = OneClickDZ(KEY, base_url=url)
        g = BalanceGuard(settle="invalidate")  # the second call reads the 900
        seen: list[BalanceAlert] = []

        def spend() -> None:
            with require_balance(oneclick, 1, guard=g):
                pass

        await asyncio.to_thread(spend)  # the guard's home: the private loop
        try:
            monitor = BalanceMonitor(guard=g)
            monitor.watch(oneclick, [Threshold(1000)], notify=[seen.append])
            async with monitor:
                emu.set_balance(KEY, 900)
                await asyncio.to_thread(spend)
                await asyncio.to_thread(monitor.flush_sync)
                assert ["low"] == [a.kind for a in seen]
        finally:
            await asyncio.to_thread(_sync.close_guard, g)

    async def test_failed_poll_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A poll that can't learn the balance is logged and the monitor goes on."""
        caplog.set_level(logging.INFO, "guard")
        provider = InMemoryProvider(10)
        provider.fail_next(times=5)
        async with BalanceGuard(retries=0) as g, BalanceMonitor(guard=g) as monitor:
            monitor.watch(provider, [Threshold(100)])
            await asyncio.sleep(0.05)
        assert "balance poll failed" in caplog.text

    async def test_notifier_returning_a_coroutine(self, emu: Emulator) -> None:
        """A plain callable that returns an awaitable has it awaited."""
        got: list[BalanceAlert] = []

        async def deliver(alert: BalanceAlert) -> None:
            got.append(alert)

        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g, BalanceMonitor(guard=g) as monitor:
            monitor.watch(oneclick, [Threshold(6000)], notify=[lambda a: deliver(a)])
            await g.balance(oneclick)
            await monitor.flush()
        assert 1 == len(got)

    def test_forecast_window(self) -> None:
        """Spending before the window is its base; older samples are pruned."""
        provider = InMemoryProvider(1000)
        monitor = BalanceMonitor(guard=BalanceGuard())
        forecast = Forecast(6, window=3600)
        monitor.watch(provider, [forecast])
        monitor._add(*monitor._pending.pop()[:3], [])
        (watch,) = monitor._watches.values()
        now = time.monotonic()
        monitor._started = now - 7200
        watch.samples.clear()
        watch.samples.extend(
            [
                (now - 7200, Decimal(0)),
                (now - 5000, Decimal(50)),
                (now - 4000, Decimal(100)),
                (now - 10, Decimal(400)),
            ]
        )
        left = monitor._hours_left(watch, Decimal(1000), forecast)
        assert left is not None
        # 300 spent in the last hour: 1,000 lasts 3.3 h; 6 h spend 1,800.
        assert (pytest.approx(1000 / 300), Decimal("1800.00")) == left
        assert 2 == len(watch.samples)  # the base and what came after
        watch.samples.clear()
        watch.samples.append((now, Decimal(400)))
        assert monitor._hours_left(watch, Decimal(1000), forecast) is None


class TestStaleReadings:
    async def test_older_reading_is_ignored(self) -> None:
        """A reading older than one applied changes nothing."""
        state = MemoryAlertState()
        fired = await state.apply("a", 2000, [Wish("t", fire=True)])
        assert ("t",) == fired.fired
        stale = await state.apply("a", 1000, [Wish("t", fire=False)])
        assert ((), None) == (stale.armed, stale.now_fired)
        again = await state.apply("a", 2000, [Wish("t", fire=False)])
        assert ("t",) == again.armed

    async def test_a_late_poll_does_not_undo_debits(self) -> None:
        """The SMS example: a poll answered after calls spent brings no 'recovered'."""
        example = runpy.run_path(str(EXAMPLE))
        await example["main"]()
