"""
The operator dashboard: auth on every request, the JSON status, no
credential anywhere, the monitor's levels; and the page in a real headless
Chromium (Debian's chromium and chromium-driver, driven by Selenium): it
loads, shows the emulator's balances, updates after a spend without a
reload, draws its chart; the HTML report renders there too.

A missing Chromium skips the browser tests locally and fails them when
``CI`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from guard import BalanceGuard, ConfigurationError
from guard.aiohttp import dashboard
from guard.history import Reading, SQLiteHistory, build_report, render
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from aiohttp.test_utils import TestClient

TOKEN = "dashboard-token-0123456789abcdef"
KEY = "dashboard-oneclickdz-key-secret"
PASSWORD = "dashboard-clickatell-password-secret"
API_ID = "4000004"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent


class Levels:
    """A monitor stand-in: the level of each account, as a monitor gives it."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def level(self, provider: str, account: str) -> str | None:
        self.asked.append((provider, account))
        return "warning" if provider == "oneclickdz" else None


class Setup:
    def __init__(
        self, emu: Emulator, guard: BalanceGuard, history: SQLiteHistory
    ) -> None:
        self.emu = emu
        self.guard = guard
        self.history = history
        self.oneclick = emu.oneclickdz(KEY)
        self.clickatell = emu.clickatell("dash", PASSWORD, API_ID)

    async def spend(self, amount: int) -> None:
        """A guarded top-up that really debits the emulator."""
        async with (
            self.guard.reserve(self.oneclick, amount),
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.emu.url}/v3/mobile/send",
                headers={"X-Access-Token": KEY},
                json={
                    "plan_code": "PREPAID_DJEZZY",
                    "MSSIDN": "0550000001",
                    "amount": amount,
                },
            ) as reply,
        ):
            assert 200 == reply.status


@pytest.fixture(name="setup")
async def _setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 10_000)
        emu.add_clickatell("dash", PASSWORD, API_ID, 250)
        async with (
            SQLiteHistory(tmp_path / "h.db") as history,
            BalanceGuard(history=history) as guard,
        ):
            setup = Setup(emu, guard, history)
            await guard.balance(setup.oneclick)
            await guard.balance(setup.clickatell)
            await history.flush()
            yield setup


def app_of(setup: Setup, **options: Any) -> web.Application:
    app = web.Application()
    options.setdefault("auth", TOKEN)
    app.add_subapp("/guard/", dashboard(setup.guard, history=setup.history, **options))
    return app


class TestAuth:
    async def test_401_without_or_with_wrong_auth(
        self, setup: Setup, aiohttp_client: Any
    ) -> None:
        """Every route answers 401 without the token, or with a wrong one."""
        client: TestClient[Any, Any] = await aiohttp_client(app_of(setup))
        wrong = base64.b64encode(b"admin:not-the-token").decode()
        for path in ("/guard/", "/guard/status", "/guard/fragment", "/guard/nope"):
            for headers in (
                {},
                {"Authorization": "Bearer nope"},
                {"Authorization": f"Basic {wrong}"},
                {"Authorization": "Basic !!!"},
                {"Authorization": f"Token {TOKEN}"},
            ):
                reply = await client.get(path, headers=headers)
                assert 401 == reply.status, (path, headers)
                assert "Bearer" in reply.headers["WWW-Authenticate"]
                assert TOKEN not in await reply.text()

    async def test_bearer_and_basic(self, setup: Setup, aiohttp_client: Any) -> None:
        """The token works as a bearer token, or as Basic auth's password."""
        client: TestClient[Any, Any] = await aiohttp_client(app_of(setup))
        basic = base64.b64encode(f"ops:{TOKEN}".encode()).decode()
        for headers in (BEARER, {"Authorization": f"Basic {basic}"}):
            reply = await client.get("/guard/status", headers=headers)
            assert 200 == reply.status
            assert "no-store" == reply.headers["Cache-Control"]

    async def test_user_check(self, setup: Setup, aiohttp_client: Any) -> None:
        """An async check decides alone; anything but True refuses."""

        async def check(request: web.Request) -> bool:
            return request.headers.get("X-Ops") == "yes"

        client: TestClient[Any, Any] = await aiohttp_client(app_of(setup, auth=check))
        assert 200 == (await client.get("/guard/", headers={"X-Ops": "yes"})).status
        assert 401 == (await client.get("/guard/", headers=BEARER)).status

    def test_never_open(self, setup: Setup) -> None:
        """No auth, a short token or a sync check is a configuration error."""
        for auth in (None, "", "short", lambda request: True, 42):
            with pytest.raises(ConfigurationError):
                dashboard(setup.guard, auth=auth)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            dashboard(setup.guard)  # type: ignore[call-arg]
        with pytest.raises(ConfigurationError, match="refresh"):
            dashboard(setup.guard, auth=TOKEN, refresh=0)


class TestContent:
    async def test_status(self, setup: Setup, aiohttp_client: Any) -> None:
        """status lists each account with balance, held, available, age, level."""
        monitor = Levels()
        client: TestClient[Any, Any] = await aiohttp_client(
            app_of(setup, monitor=monitor)
        )
        doc = await (await client.get("/guard/status", headers=BEARER)).json()
        rows = {row["provider"]: row for row in doc["accounts"]}
        assert {"clickatell", "oneclickdz"} == set(rows)
        one = rows["oneclickdz"]
        assert ("10000", "0", "10000", "warning", "DZD") == (
            one["balance"],
            one["held"],
            one["available"],
            one["level"],
            one["currency"],
        )
        assert 0 <= one["age"] < 60
        assert rows["clickatell"]["level"] is None
        digests = {s.account for s in setup.guard.accounts()}
        assert {a for _, a in monitor.asked} == digests

    async def test_no_credential_anywhere(
        self, setup: Setup, aiohttp_client: Any
    ) -> None:
        """Neither the page, the fragment nor the JSON holds a credential."""
        client: TestClient[Any, Any] = await aiohttp_client(app_of(setup))
        for path in ("/guard/", "/guard/fragment", "/guard/status"):
            text = await (await client.get(path, headers=BEARER)).text()
            for secret in (KEY, PASSWORD, API_ID, TOKEN, "dash"):
                assert secret not in text, (path, secret)

    async def test_sandbox_labelled(self, setup: Setup, aiohttp_client: Any) -> None:
        """A sandbox key's account says so, on the page and in the JSON."""
        setup.emu.add_oneclickdz("sandbox-key", 75, key_type="SANDBOX")
        await setup.guard.balance(setup.emu.oneclickdz("sandbox-key"))
        client: TestClient[Any, Any] = await aiohttp_client(app_of(setup))

        doc = await (await client.get("/guard/status", headers=BEARER)).json()
        page = await (await client.get("/guard/", headers=BEARER)).text()

        sandbox = {row["balance"]: row["sandbox"] for row in doc["accounts"]}
        assert {"75": True, "10000": False, "250": False} == sandbox
        assert 1 == page.count("oneclickdz (SANDBOX)")

    async def test_page_headers_and_monitor_failure(
        self, setup: Setup, aiohttp_client: Any
    ) -> None:
        """The page is locked down by CSP; a failing monitor shows 'unknown'."""

        class Broken:
            def level(self, provider: str, account: str) -> str:
                raise RuntimeError("monitor down")

        client: TestClient[Any, Any] = await aiohttp_client(
            app_of(setup, monitor=Broken(), title="Ops <&>")
        )
        reply = await client.get("/guard/", headers=BEARER)
        page = await reply.text()
        assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
        assert "<title>Ops &lt;&amp;&gt;</title>" in page
        assert page.count(">unknown<") == 2
        assert "<svg" in page

    async def test_without_history_or_accounts(
        self, setup: Setup, aiohttp_client: Any
    ) -> None:
        """Without a history there is no chart; a new guard shows no account yet."""
        async with BalanceGuard() as fresh:
            app = web.Application()
            app.add_subapp("/guard/", dashboard(fresh, auth=TOKEN))
            client: TestClient[Any, Any] = await aiohttp_client(app)
            page = await (await client.get("/guard/", headers=BEARER)).text()
            assert "No account seen yet" in page
            await fresh.balance(setup.oneclick)
            page = await (await client.get("/guard/fragment", headers=BEARER)).text()
            assert "no history" in page
            assert "10,000.00 DZD" in page


async def test_dashboard_emulator_command() -> None:
    """python -m guard dashboard --emulator serves live traffic behind a token."""
    from guard._dashboard_demo import serve_dashboard

    stop = asyncio.Event()
    out = _Lines()
    task = asyncio.create_task(
        serve_dashboard(port=0, token=TOKEN, every=0.05, until=stop, out=out)
    )
    try:
        url = await out.url()
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as reply:
                assert 401 == reply.status
            seen: set[str] = set()
            for _ in range(100):
                async with http.get(f"{url}status", headers=BEARER) as reply:
                    doc = await reply.json()
                seen.update(r["spent"] for r in doc["accounts"])
                if len(seen) > 3:
                    break
                await asyncio.sleep(0.05)
            assert len(seen) > 3, "the spent amounts never moved"
    finally:
        stop.set()
        assert 0 == await task
    assert f"token: {TOKEN}" in out.text


class _Lines:
    def __init__(self) -> None:
        self.text = ""
        self.ready = asyncio.Event()

    def write(self, text: str) -> int:
        self.text += text
        self.ready.set()
        return len(text)

    def flush(self) -> None:
        pass

    async def url(self) -> str:
        await asyncio.wait_for(self.ready.wait(), 30)
        return self.text.split(" on ", 1)[1].split(" ", 1)[0]


# -- a real browser ---------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        reason = f"no {' or '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a headless Chromium: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Any]:
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="guard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,720",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def artifacts() -> Path:
    """Where screenshots go: GUARD_TEST_ARTIFACTS, or a temporary directory."""
    folder = Path(
        os.environ.get("GUARD_TEST_ARTIFACTS")
        or Path(tempfile.gettempdir()) / "guard-test-artifacts"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def in_thread(fn: Any, *args: Any) -> Any:
    # Selenium blocks; the dashboard must keep serving meanwhile.
    return await asyncio.to_thread(fn, *args)


async def wait_for(driver: Any, script: str, within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await in_thread(driver.execute_script, script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        await asyncio.sleep(0.1)


async def test_dashboard_in_chromium(setup: Setup, browser: Any) -> None:
    """The page loads, shows the balances, updates after a spend, draws its chart."""
    now = dt.datetime.now(dt.UTC)
    digest = next(
        s.account for s in setup.guard.accounts() if s.provider == "oneclickdz"
    )
    # A week of readings behind the live one, for the chart: spending,
    # then a refill.
    week = [
        Reading(
            "oneclickdz",
            digest,
            "DZD",
            Decimal(16_000 - 450 * h + (9_000 if h >= 16 else 0)),
            now - dt.timedelta(hours=6 * (28 - h)),
        )
        for h in range(28)
    ]
    await setup.history.write(week)
    app = app_of(setup, refresh=0.3, title="guard: ops", monitor=Levels())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/guard/"
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as reply:
            assert 401 == reply.status
        # Every request the browser makes carries the token, fetches too.
        await in_thread(browser.execute_cdp_cmd, "Network.enable", {})
        await in_thread(
            browser.execute_cdp_cmd,
            "Network.setExtraHTTPHeaders",
            {"headers": BEARER},
        )
        await in_thread(browser.get, url)
        text = await in_thread(browser.execute_script, "return document.body.innerText")
        assert "10,000.00 DZD" in text
        assert "250.00 credits" in text
        points = await wait_for(
            browser,
            "var l = document.querySelector('tr[data-account=\"" + digest + '"] '
            "svg polyline'); return l && l.getBoundingClientRect().width > 100 "
            "&& l.getAttribute('points').split(' ').length",
        )
        assert points > 28
        await in_thread(browser.execute_script, "window.notReloaded = true")

        await setup.spend(1500)

        await wait_for(
            browser,
            "return document.body.innerText.indexOf('8,500.00 DZD') >= 0",
        )
        assert await in_thread(browser.execute_script, "return window.notReloaded")
        assert "live" == await in_thread(
            browser.execute_script,
            "return document.getElementById('state').textContent",
        )
        shot = artifacts() / "dashboard.png"
        await in_thread(browser.save_screenshot, str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("GUARD_UPDATE_SCREENSHOT"):
            shutil.copy(shot, ROOT / "docs" / "dashboard.png")
    finally:
        await in_thread(
            browser.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": {}}
        )
        await runner.cleanup()


async def test_html_report_in_chromium(tmp_path: Path, browser: Any) -> None:
    """The 90-day HTML report renders its chart and is at most 100 KB."""
    from test_history_import import ninety_days

    async with SQLiteHistory(tmp_path / "r.db") as history:
        first, last = await ninety_days(history)
        page = render(await build_report(history, first, last), "html")
    target = tmp_path / "report.html"
    target.write_text(page, encoding="utf-8")
    assert target.stat().st_size <= 100 * 1024
    await in_thread(browser.get, target.as_uri())
    width = await wait_for(
        browser,
        "var l = document.querySelector('svg.chart polyline');"
        "return l && l.getBoundingClientRect().width",
    )
    assert width > 300
    rows = await in_thread(
        browser.execute_script, "return document.querySelectorAll('tbody tr').length"
    )
    assert 90 == rows
    await in_thread(browser.save_screenshot, str(artifacts() / "report.png"))


async def test_unknown_balance(aiohttp_client: Any) -> None:
    """An account whose balance could not be read shows 'unknown', not an error."""
    from guard import BalanceUnavailable
    from guard.testing import InMemoryProvider

    provider = InMemoryProvider(5, name="memory", currency="DZD")
    provider.fail_next(times=100)
    async with BalanceGuard(retries=0) as guard:
        with pytest.raises(BalanceUnavailable):
            await guard.balance(provider)
        app = web.Application()
        app.add_subapp("/guard/", dashboard(guard, auth=TOKEN))
        client: TestClient[Any, Any] = await aiohttp_client(app)
        reply = await client.get("/guard/fragment", headers=BEARER)
        assert 200 == reply.status
        assert 2 == (await reply.text()).count(">unknown<")  # balance, available
        doc = await (await client.get("/guard/status", headers=BEARER)).json()
        assert (None, None) == (
            doc["accounts"][0]["balance"],
            doc["accounts"][0]["age"],
        )
