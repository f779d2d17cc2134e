from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest

from guard._cli import _serve, main
from guard.testing import (
    DEMO_CLICKATELL_API_ID,
    DEMO_CLICKATELL_PASSWORD,
    DEMO_CLICKATELL_USER,
    DEMO_ONECLICKDZ_KEY,
    Emulator,
)

SECRET_KEY = "cli-secret-key-0123456789"


async def run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guard",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestDemo:
    def test_demo_tells_its_story(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The demo runs against the bundled emulator and every check passes."""
        assert 0 == main(["demo"])

        out = capsys.readouterr().out
        assert "refused: 3,000.00 DZD required, 2,500.00 DZD available" in out
        # The hold: of two concurrent top-ups that fit only alone, one runs.
        assert "refused: 1,500.00 DZD required, 1,000.00 DZD available" in out
        passed = re.search(r"guard demo: (\d+) of (\d+) checks passed", out)
        assert passed is not None
        assert passed[1] == passed[2]
        assert "alert 'low' (critical): balance 1,000.00 DZD" in out
        assert "alert 'recovered' (critical): balance 10,000.00 DZD" in out
        # It ends by saying where its report is.
        report = out.rstrip().rpartition("The report is in ")[2]
        with open(report, encoding="utf-8") as page:
            assert "Debits that bypassed guard" in page.read()

    def test_demo_money_format(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Every amount the demo prints is written one way: 2,500.00 DZD."""
        assert 0 == main(["demo"])

        out = capsys.readouterr().out
        amounts = re.findall(r"[\d,.]*\d (?:DZD|credits)\b", out)
        assert amounts
        assert all(re.fullmatch(r"\d{1,3}(,\d{3})*\.\d\d \w+", a) for a in amounts)

    def test_terms_explained_where_first_used(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Single-flight and settling are explained in the step that first uses them."""
        assert 0 == main(["demo"])

        paragraphs = capsys.readouterr().out.split("\n\n")
        assert not re.search("single-flight|settle", paragraphs[0])
        assert "share one balance\n   request instead of making five" in paragraphs[1]
        assert "(single-flight)" in paragraphs[1]
        assert "settles it: it releases the amount" in paragraphs[1]

    async def test_quiet_prints_nothing(self) -> None:
        """demo --quiet prints nothing, the fail-open WARNING included."""
        code, out, err = await run("demo", "--quiet", env={})

        assert (0, "", "") == (code, out, err)


class TestBalance:
    async def test_prints_balance(self, emu: Emulator) -> None:
        """balance prints the amount exactly, as text or JSON."""
        emu.add_oneclickdz(SECRET_KEY, "1326.13")
        env = {"GUARD_ONECLICKDZ_API_KEY": SECRET_KEY}

        code, out, _ = await run(
            "balance", "oneclickdz", "--base-url", emu.url, env=env
        )
        assert (0, "oneclickdz: 1326.13 DZD (PRODUCTION key)\n") == (code, out)

        code, out, _ = await run(
            "balance", "oneclickdz", "--base-url", emu.url, "--json", env=env
        )
        assert 0 == code
        assert {
            "provider": "oneclickdz",
            "amount": "1326.13",
            "key_type": "PRODUCTION",
            "sandbox": False,
        }.items() <= (json.loads(out).items())

    async def test_sandbox_key_labelled(self, emu: Emulator) -> None:
        """A sandbox key's balance is labelled as such, as text and JSON."""
        emu.add_oneclickdz(SECRET_KEY, 500, key_type="SANDBOX")
        env = {"GUARD_ONECLICKDZ_API_KEY": SECRET_KEY}

        code, out, _ = await run(
            "balance", "oneclickdz", "--base-url", emu.url, env=env
        )
        assert (0, "oneclickdz: 500 DZD (SANDBOX key)\n") == (code, out)

        code, out, _ = await run(
            "balance", "oneclickdz", "--base-url", emu.url, "--json", env=env
        )
        assert {"key_type": "SANDBOX", "sandbox": True}.items() <= (
            json.loads(out).items()
        )

    async def test_clickatell_platform(self, emu: Emulator) -> None:
        """The Platform key is GUARD_CLICKATELL_API_KEY; the currency the account's."""
        emu.add_clickatell_platform(SECRET_KEY, "1267.92865", currency="ZAR")
        env = {"GUARD_CLICKATELL_API_KEY": SECRET_KEY}

        code, out, err = await run(
            "balance", "clickatell-platform", "--base-url", emu.url, env=env
        )

        assert (0, "clickatell-platform: 1267.92865 ZAR\n") == (code, out)
        assert SECRET_KEY not in out + err

    async def test_clickatell(self, emu: Emulator) -> None:
        """Clickatell credentials come from three environment variables."""
        emu.add_clickatell("acme", "pw-secret", "3000001", credits="12.5")
        env = {
            "GUARD_CLICKATELL_USER": "acme",
            "GUARD_CLICKATELL_PASSWORD": "pw-secret",
            "GUARD_CLICKATELL_API_ID": "3000001",
        }

        code, out, _ = await run(
            "balance", "clickatell", "--base-url", emu.url, env=env
        )

        assert (0, "clickatell: 12.5 credits\n") == (code, out)

    async def test_refused_key(self, emu: Emulator) -> None:
        """A refused key is one line on stderr, exit 3, and the key isn't in it."""
        code, out, err = await run(
            "balance",
            "oneclickdz",
            "--base-url",
            emu.url,
            env={"GUARD_ONECLICKDZ_API_KEY": SECRET_KEY},
        )

        assert 3 == code
        assert "" == out
        assert 1 == len(err.splitlines())
        assert "INVALID_ACCESS_TOKEN" in err
        assert SECRET_KEY not in err

    async def test_unreachable(self) -> None:
        """An unreachable provider is one line on stderr and exit 4."""
        code, _, err = await run(
            "balance",
            "oneclickdz",
            "--base-url",
            f"http://127.0.0.1:{free_port()}",
            "--timeout",
            "2",
            env={"GUARD_ONECLICKDZ_API_KEY": SECRET_KEY},
        )

        assert 4 == code
        assert 1 == len(err.splitlines())
        assert "Traceback" not in err

    def test_missing_credentials(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Missing credentials name the variables to set, exit 2."""
        for var in ("GUARD_CLICKATELL_USER", "GUARD_CLICKATELL_API_ID"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("GUARD_CLICKATELL_PASSWORD", "pw")

        assert 2 == main(["balance", "clickatell"])
        err = capsys.readouterr().err
        assert "GUARD_CLICKATELL_USER, GUARD_CLICKATELL_API_ID" in err

    def test_bad_base_url(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad --base-url is a usage error naming base_url."""
        monkeypatch.setenv("GUARD_ONECLICKDZ_API_KEY", SECRET_KEY)

        assert 2 == main(["balance", "oneclickdz", "--base-url", "ftp://x"])
        err = capsys.readouterr().err
        assert "base_url" in err
        assert SECRET_KEY not in err

    @pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "-inf", "soon"])
    def test_bad_timeout(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        timeout: str,
    ) -> None:
        """A --timeout that is not a positive number of seconds is exit 2."""
        monkeypatch.setenv("GUARD_ONECLICKDZ_API_KEY", SECRET_KEY)

        with pytest.raises(SystemExit) as exc_info:
            main(["balance", "oneclickdz", "--timeout", timeout])

        assert 2 == exc_info.value.code
        err = capsys.readouterr().err
        assert 1 == len(err.splitlines())
        assert "--timeout" in err
        assert "fetch_timeout" not in err


class TestEmulatorCommand:
    async def test_serves(self, session: aiohttp.ClientSession) -> None:
        """python -m guard emulator serves the demo accounts until stopped."""
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guard",
            "emulator",
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            banner = await asyncio.wait_for(process.stdout.readline(), 30)
            assert f"127.0.0.1:{port}" in banner.decode()
            async with session.get(
                f"http://127.0.0.1:{port}/v3/account/balance",
                headers={"X-Access-Token": "demo-oneclickdz-key"},
            ) as response:
                body = await response.json()
            assert 10000 == body["data"]["balance"]
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)

    async def test_serve_banner(self) -> None:
        """The banner gives the URL, the demo credentials and the IP lockout."""
        out = io.StringIO()
        stop = asyncio.Event()
        task = asyncio.create_task(
            _serve(Emulator.with_demo_accounts(), until=stop, out=out)
        )
        while "Ctrl+C" not in out.getvalue():
            await asyncio.sleep(0.005)

        stop.set()
        await task

        banner = out.getvalue()
        assert re.search(r"listening on http://127\.0\.0\.1:\d+", banner)
        for secret in (
            DEMO_ONECLICKDZ_KEY,
            DEMO_CLICKATELL_USER,
            DEMO_CLICKATELL_PASSWORD,
            DEMO_CLICKATELL_API_ID,
        ):
            assert secret in banner
        assert "5 bad X-Access-Token values" in banner
        assert "15 minutes" in banner

    async def test_banner_lockout_is_real(self, session: aiohttp.ClientSession) -> None:
        """The lockout the banner tells of is what the emulator does."""
        async with Emulator.with_demo_accounts() as emu:
            statuses = []
            for _ in range(6):
                async with session.get(
                    f"{emu.url}/v3/account/balance",
                    headers={"X-Access-Token": "wrong"},
                ) as response:
                    statuses.append(response.status)
            emu.advance(15 * 60 - 1)
            async with session.get(
                f"{emu.url}/v3/account/balance",
                headers={"X-Access-Token": DEMO_ONECLICKDZ_KEY},
            ) as response:
                still_blocked = response.status

        assert [401] * 5 + [403] == statuses
        assert 403 == still_blocked

    def test_port_in_use(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A port that is taken is one line on stderr and exit 1."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]

            assert 1 == main(["emulator", "--port", str(port)])

        err = capsys.readouterr().err
        assert f"cannot serve on 127.0.0.1:{port}" in err
        assert 1 == len(err.splitlines())

    @pytest.mark.parametrize("port", ["99999", "65536", "-1", "http", "\uff18\uff10"])
    def test_bad_port(self, capsys: pytest.CaptureFixture[str], port: str) -> None:
        """A --port that is no port number is one line naming --port, exit 2."""
        with pytest.raises(SystemExit) as exc_info:
            main(["emulator", "--port", port])

        assert 2 == exc_info.value.code
        err = capsys.readouterr().err
        assert 1 == len(err.splitlines())
        assert "--port" in err

    async def test_bad_port_no_traceback(self) -> None:
        """python -m guard emulator --port 99999 prints no traceback."""
        code, out, err = await run("emulator", "--port", "99999", env={})

        assert (2, "") == (code, out)
        assert "Traceback" not in err
        assert "--port" in err

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
    def test_until_interrupted(self) -> None:
        """The emulator runs until Ctrl+C and then exits 0."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard", "emulator", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)

        assert 0 == proc.returncode
        assert "listening on http://127.0.0.1:" in banner[0]
        assert DEMO_ONECLICKDZ_KEY in "".join(banner)
