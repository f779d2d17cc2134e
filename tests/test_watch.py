from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from test_cli import SECRET_KEY, free_port, run

from guard import BalanceGuard, BalanceMonitor, Threshold
from guard._watch import Reading, Watcher, duration, money, watch
from guard.testing import (
    Emulator,
    Fault,
    InMemoryProvider,
    Route,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WATCH_KEY = "watch-secret-key-0123456789"
ENV = {"GUARD_ONECLICKDZ_API_KEY": WATCH_KEY}
# In CI a missing tmux fails the test rather than skipping it.
NO_TMUX = shutil.which("tmux") is None and not os.environ.get("CI")


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(WATCH_KEY, 1000)
        yield emu


async def watch_process(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guard",
        "watch",
        *args,
        env={**os.environ, "PYTHONWARNINGS": "error", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def next_json(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line, "watch ended"
    record: dict[str, Any] = json.loads(line)
    return record


async def interrupt(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


class TestJson:
    async def test_outage_in_the_middle(self, emu: Emulator) -> None:
        """
        --json prints one object per account and poll; through an outage it
        keeps the last balance, says since when, polls on, and recovers.
        """
        process = await watch_process(
            "oneclickdz",
            "--json",
            "--interval",
            "0.1",
            "--timeout",
            "2",
            "--base-url",
            emu.url,
            env=ENV,
        )
        first = await next_json(process)
        emu.set_balance(WATCH_KEY, 900)
        while (spent := await next_json(process))["balance"] != "900":
            pass
        emu.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"),
            times=None,
        )
        while (down := await next_json(process))["unavailable_since"] is None:
            pass
        later = await next_json(process)
        emu.clear_faults()
        while (back := await next_json(process))["unavailable_since"] is not None:
            pass
        code, err = await interrupt(process)

        assert 0 == code
        assert "" == err
        assert ("oneclickdz", "DZD", "1000") == (
            first["provider"],
            first["currency"],
            first["balance"],
        )
        assert first["unavailable_since"] is None
        assert Decimal(spent["spend_per_hour"]) > 0
        # 100 DZD spent within a few polls: seconds to empty, rounded (maybe 0).
        assert spent["time_to_empty_seconds"] is not None
        # Down: the last balance, aging, and why.
        assert "900" == down["balance"] == later["balance"]
        assert later["age_seconds"] > down["age_seconds"]
        assert "503" in down["error"] or "SERVICE_UNAVAILABLE" in down["error"]
        assert down["unavailable_since"] == later["unavailable_since"]
        assert back["error"] is None
        assert back["age_seconds"] < later["age_seconds"]
        assert first["account"] == back["account"]

    async def test_alert_level(self, emu: Emulator) -> None:
        """
        --below sets thresholds: each line says the level of the lowest one
        the balance is at or below, as of that poll.
        """
        process = await watch_process(
            "oneclickdz",
            "--json",
            "--interval",
            "0.1",
            "--base-url",
            emu.url,
            "--below",
            "warning=1000",
            "--below",
            "critical=500",
            env=ENV,
        )
        first = await next_json(process)
        emu.set_balance(WATCH_KEY, 400)
        while (low := await next_json(process))["balance"] != "400":
            pass
        emu.set_balance(WATCH_KEY, 9000)
        while (back := await next_json(process))["balance"] != "9000":
            pass
        code, err = await interrupt(process)

        assert (0, "") == (code, err)
        assert "warning" == first["level"]
        assert "critical" == low["level"]
        assert back["level"] is None

    @pytest.mark.parametrize(
        ("below", "expected"),
        [
            # clickatell's own replace the others for it: well above 1 credit.
            (
                ["warning=100000000", "clickatell:critical=1"],
                {"oneclickdz": "warning", "clickatell-platform": "warning"},
            ),
            # Only one provider's: the others have none.
            (["oneclickdz:warning=100000000"], {"oneclickdz": "warning"}),
        ],
    )
    async def test_thresholds_of_one_provider(
        self, below: list[str], expected: dict[str, str]
    ) -> None:
        """A provider's own --below replace those given for every provider."""
        options = [arg for threshold in below for arg in ("--below", threshold)]
        process = await watch_process(
            "--emulator", "--json", "--interval", "0.1", *options, env={}
        )
        levels = {}
        while len(levels) < 3:
            record = await next_json(process)
            levels[record["provider"]] = record["level"]
        code, _ = await interrupt(process)

        assert 0 == code
        assert {
            "oneclickdz": None,
            "clickatell": None,
            "clickatell-platform": None,
            **expected,
        } == levels

    async def test_refused_key(self, emu: Emulator) -> None:
        """A refused key ends watch as it ends balance: one line, exit 3."""
        code, out, err = await run(
            "watch",
            "oneclickdz",
            "--json",
            "--base-url",
            emu.url,
            env={"GUARD_ONECLICKDZ_API_KEY": SECRET_KEY},
        )

        assert (3, "") == (code, out)
        assert 1 == len(err.splitlines())
        assert SECRET_KEY not in err

    async def test_unreachable_from_the_start(self) -> None:
        """A provider down from the start: watch polls on, balance unknown."""
        process = await watch_process(
            "oneclickdz",
            "--json",
            "--interval",
            "0.1",
            "--timeout",
            "1",
            "--base-url",
            f"http://127.0.0.1:{free_port()}",
            env=ENV,
        )
        first = await next_json(process)
        second = await next_json(process)
        code, _ = await interrupt(process)

        assert 0 == code
        assert first["balance"] is None is second["balance"]
        assert first["unavailable_since"] is not None

    @pytest.mark.parametrize(
        ("args", "env", "expected"),
        [
            ((), {}, "GUARD_ONECLICKDZ_API_KEY"),
            (("clickatell",), {}, "GUARD_CLICKATELL_USER"),
            (("sendgrid",), {}, "unknown provider 'sendgrid'"),
            (("--interval", "0"), {}, "--interval"),
            (("--below", "5000"), {}, "[PROVIDER:]LEVEL=AMOUNT"),
            (("--below", "warning=lots"), {}, "'warning=lots'"),
            (("--below", "=5000"), {}, "'=5000'"),
            (("--below", "sendgrid:low=5"), {}, "unknown provider 'sendgrid'"),
        ],
    )
    async def test_usage(
        self, args: tuple[str, ...], env: dict[str, str], expected: str
    ) -> None:
        """Usage errors are one line on stderr and exit 2, as for balance."""
        clean = dict.fromkeys(
            (
                "GUARD_ONECLICKDZ_API_KEY",
                "GUARD_CLICKATELL_USER",
                "GUARD_CLICKATELL_PASSWORD",
                "GUARD_CLICKATELL_API_ID",
            ),
            "",
        )
        code, out, err = await run("watch", *args, env={**clean, **env})

        assert (2, "") == (code, out)
        assert expected in err
        assert "Traceback" not in err


class TestPlain:
    async def test_one_line_per_poll(self) -> None:
        """Not on a terminal: one plain line per poll, every account on it."""
        process = await watch_process("--emulator", "--interval", "0.1", env={})
        assert process.stdout is not None
        lines = [
            (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            for _ in range(3)
        ]
        code, err = await interrupt(process)

        assert 0 == code
        assert "" == err
        for line in lines:
            assert " oneclickdz " in line
            assert " | clickatell " in line
            assert " DZD held " in line
            assert " credits held " in line
            assert "spend/h" in line
            assert "empty in" in line


@pytest.mark.skipif(NO_TMUX, reason="needs tmux (CI installs it)")
class TestTerminal:
    def test_screen(self, tmp_path: pathlib.Path) -> None:
        """
        On a terminal (a tmux pane), watch draws a table, keeps it current,
        and leaves on Ctrl-C with exit 0.
        """
        session = f"guard-watch-{uuid.uuid4().hex[:8]}"
        command = (
            f"{sys.executable} -m guard watch --emulator --interval 0.2 "
            "--below warning=100000000; "
            "echo EXIT=$?; sleep 30"
        )
        # A server of its own, its socket in the test's directory.
        tmux = ["tmux", "-S", str(tmp_path / "tmux.sock")]
        subprocess.run(  # noqa: S603 - our own argv
            [
                *tmux,
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "150",
                "-y",
                "20",
                command,
            ],
            check=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            screen = self.wait_for(tmux, "Spend/h", lambda s: "clickatell" in s)
            self.send(tmux, "C-c")
            after = self.wait_for(tmux, "EXIT=")
        finally:
            subprocess.run([*tmux, "kill-server"], check=False, timeout=30)  # noqa: S603

        assert "oneclickdz" in screen
        assert "10,000.00 DZD" in screen or " DZD" in screen
        assert "credits" in screen
        for column in ("Balance", "Held", "Available", "Age", "Time to empty", "Level"):
            assert column in screen
        assert "warning" in screen  # every demo balance is below the threshold
        assert "Traceback" not in after
        assert "EXIT=0" in after

    @staticmethod
    def send(tmux: list[str], keys: str) -> None:
        subprocess.run([*tmux, "send-keys", keys], check=True, timeout=30)  # noqa: S603

    @staticmethod
    def wait_for(tmux: list[str], text: str, also: Any = lambda s: True) -> str:
        deadline = time.monotonic() + 30
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(  # noqa: S603 - our own argv
                [*tmux, "capture-pane", "-p"],
                check=True,
                timeout=30,
                capture_output=True,
                text=True,
            ).stdout
            if text in screen and also(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never showed; the screen:\n{screen}")


class TestWatcher:
    async def test_rate_ignores_refills(self) -> None:
        """Spend per hour counts the balance's falls, not its refills."""
        provider = InMemoryProvider(1000)
        now = [0.0]
        async with BalanceGuard() as guard:
            watcher = Watcher(guard, [provider], clock=lambda: now[0])
            (first,) = await watcher.poll()
            for seconds, balance in ((60, 900), (120, 5000), (180, 4900)):
                now[0] = seconds
                provider.balance = Decimal(balance)
                (reading,) = await watcher.poll()

        assert first.spend_per_hour is None
        assert first.time_to_empty is None
        # 200 spent in 3 minutes: 4,000 an hour; 4,900 last 73.5 minutes.
        assert Decimal("4000.00") == reading.spend_per_hour
        assert 4410 == reading.time_to_empty

    async def test_old_readings_leave_the_window(self) -> None:
        """Readings older than an hour no longer count."""
        provider = InMemoryProvider(1000)
        now = [0.0]
        async with BalanceGuard() as guard:
            watcher = Watcher(guard, [provider], clock=lambda: now[0])
            await watcher.poll()
            now[0], provider.balance = 60, Decimal(0)
            await watcher.poll()
            now[0] = 4000
            (alone,) = await watcher.poll()
            now[0] = 4060
            (reading,) = await watcher.poll()

        assert alone.spend_per_hour is None  # one reading spans no time

        assert Decimal(0) == reading.spend_per_hour
        assert reading.time_to_empty is None

    async def test_level_from_monitor(self) -> None:
        """
        The alert level is the monitor's for that account, as of each
        poll's balance: set when it falls below a threshold, cleared when a
        refill lifts it back above.
        """
        provider = InMemoryProvider(1000)
        async with BalanceGuard() as guard:
            monitor = BalanceMonitor(guard=guard, interval=3600)
            monitor.watch(provider, [Threshold(2000), Threshold(500, level="critical")])
            async with monitor:
                watcher = Watcher(guard, [provider], monitor=monitor)
                (low,) = await watcher.poll()
                provider.balance = Decimal(400)
                (lower,) = await watcher.poll()
                provider.balance = Decimal(5000)
                (refilled,) = await watcher.poll()
                out = io.StringIO()
                provider.balance = Decimal(100)
                await watch(
                    guard,
                    [provider],
                    interval=0.01,
                    mode="plain",
                    out=out,
                    monitor=monitor,
                    polls=1,
                )

        assert ("warning", "critical", None) == (low.level, lower.level, refilled.level)
        assert "critical" == lower.to_json()["level"]
        assert "level critical" in out.getvalue()

    async def test_rich_table(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The rich view draws one table per poll with every figure."""
        monkeypatch.setenv("COLUMNS", "160")
        provider = InMemoryProvider(1000)
        out = io.StringIO()
        async with BalanceGuard() as guard:
            await watch(guard, [provider], interval=0.01, mode="rich", out=out, polls=2)

        text = out.getvalue()
        assert "1,000.00 DZD" in text
        assert "Time to empty" in text


class TestSandbox:
    async def test_labelled(self, emu: Emulator) -> None:
        """A sandbox key's reading says so, as text and JSON."""
        emu.add_oneclickdz("sandbox-key", 75, key_type="SANDBOX")
        async with BalanceGuard() as guard:
            watcher = Watcher(guard, [emu.oneclickdz("sandbox-key")])
            (reading,) = await watcher.poll()

        assert reading.sandbox
        assert reading.line().startswith("oneclickdz (SANDBOX) ")
        assert reading.to_json()["sandbox"] is True


class TestFormats:
    def test_unknown_balance_line(self) -> None:
        """A reading with no balance says so, and since when it is down."""
        at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        reading = Reading(
            provider="oneclickdz",
            account="abc",
            currency="DZD",
            at=at,
            balance=None,
            held=Decimal(0),
            available=None,
            fetched_at=None,
            spend_per_hour=None,
            time_to_empty=None,
            level=None,
            unavailable_since=at,
            error="down",
        )

        assert reading.age is None
        assert (
            "oneclickdz balance unknown spend/h - empty in - level - "
            "UNAVAILABLE since 03:04:05"
        ) == reading.line()
        assert reading.to_json()["balance"] is None

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (None, "-"),
            (42.9, "42s"),
            (425, "7m05s"),
            (12000, "3h20m"),
            (187200, "2d04h"),
        ],
    )
    def test_duration(self, seconds: float | None, text: str) -> None:
        """Durations read short."""
        assert text == duration(seconds)

    def test_money(self) -> None:
        """Amounts read with thousands separators and two decimals."""
        assert "2,500.00 DZD" == money(Decimal(2500), "DZD")
        assert "-" == money(None)
