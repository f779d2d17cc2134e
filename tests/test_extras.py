from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from test_packaging import Built, built, without_coverage  # noqa: F401 - fixture

if TYPE_CHECKING:
    from pathlib import Path

CHECK = """
import asyncio, importlib.util

from prometheus_client import CollectorRegistry, generate_latest

from guard import BalanceGuard
from guard.otel import instrument
from guard.prometheus import GuardCollector
from guard.testing import InMemoryProvider

# The otel extra is the API only: the application brings the SDK.
assert importlib.util.find_spec("opentelemetry.sdk") is None
assert importlib.util.find_spec("rich") is not None


async def main():
    async with BalanceGuard() as guard:
        instrument(guard)
        await guard.balance(InMemoryProvider(1234))
        registry = CollectorRegistry()
        registry.register(GuardCollector(guard))
        assert b"guard_balance{" in generate_latest(registry)


asyncio.run(main())
print("extras ok")
"""


@pytest.mark.packaging
def test_extras_in_a_fresh_environment(built: Built, tmp_path: Path) -> None:  # noqa: F811
    """
    The wheel with its prometheus, otel and cli extras installs in a new
    virtual environment, where the integrations and ``watch`` work.
    """
    venv = tmp_path / "venv"
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    env = without_coverage()
    subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=120
    )
    subprocess.run(  # noqa: S603 - our own argv
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            f"guard[prometheus,otel,cli] @ {built.wheel.as_uri()}",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )

    check = subprocess.run(  # noqa: S603 - our own argv
        [python, "-c", CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "extras ok" in check.stdout, check.stdout + check.stderr

    watch = subprocess.Popen(  # noqa: S603 - our own argv
        [python, "-m", "guard", "watch", "--emulator", "--json", "--interval", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    first = json.loads(watch.stdout.readline())
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=30)

    assert "oneclickdz" == first["provider"]
    assert 0 == watch.returncode
