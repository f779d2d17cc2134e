from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import aiohttp
import pytest

from guard._cli import main
from guard.testing import Emulator

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
        assert "insufficient balance: 3000 DZD required, 2500.00 DZD available" in out
        assert "7 of 7 checks passed" in out


class TestBalance:
    async def test_prints_balance(self) -> None:
        """balance prints the amount exactly, as text or JSON."""
        async with Emulator() as emu:
            emu.add_oneclickdz(SECRET_KEY, "1326.13")
            env = {"GUARD_ONECLICKDZ_API_KEY": SECRET_KEY}

            code, out, _ = await run(
                "balance", "oneclickdz", "--base-url", emu.url, env=env
            )
            assert (0, "oneclickdz: 1326.13 DZD\n") == (code, out)

            code, out, _ = await run(
                "balance", "oneclickdz", "--base-url", emu.url, "--json", env=env
            )
            assert 0 == code
            assert {"provider": "oneclickdz", "amount": "1326.13"}.items() <= (
                json.loads(out).items()
            )

    async def test_clickatell(self) -> None:
        """Clickatell credentials come from three environment variables."""
        async with Emulator() as emu:
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

    async def test_refused_key(self) -> None:
        """A refused key is one line on stderr, exit 3, and the key isn't in it."""
        async with Emulator() as emu:
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


class TestEmulatorCommand:
    async def test_serves(self) -> None:
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
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{port}/v3/account/balance",
                    headers={"X-Access-Token": "demo-oneclickdz-key"},
                ) as response,
            ):
                body = await response.json()
            assert 10000 == body["data"]["balance"]
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
