from __future__ import annotations

import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def snippet(first_lines: str) -> str:
    """The README's Python code block that starts with *first_lines*."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), re.DOTALL)
    found = [block for block in blocks if block.startswith(first_lines)]
    assert 1 == len(found), f"no single README snippet starts with {first_lines!r}"
    return found[0]


async def test_emulator_snippet() -> None:
    """The README's emulator snippet runs as written and its assertions hold."""
    code = snippet(
        "from guard import BalanceGuard, require_balance\n"
        "from guard.testing import Emulator, Fault, Route\n"
    )
    assert "assert emu.count(Route.ONECLICKDZ_BALANCE)" in code
    namespace: dict[str, object] = {}
    source = "async def run_snippet():\n" + textwrap.indent(code, "    ")
    exec(compile(source, str(README), "exec"), namespace)  # noqa: S102 - our README

    await namespace["run_snippet"]()  # type: ignore[operator]


async def test_alerts_snippet() -> None:
    """The README's alerts snippet runs as written (the account is well above)."""
    from guard import BalanceGuard
    from guard.testing import Emulator

    code = snippet("from guard import BalanceMonitor, Threshold\n")
    assert 12 >= len(code.strip().splitlines())
    async with Emulator() as emu, BalanceGuard() as guard:
        emu.add_oneclickdz("k", 10000)
        oneclick = emu.oneclickdz("k")

        async def serve_forever() -> None:
            await guard.balance(oneclick)

        namespace: dict[str, object] = {
            "guard": guard,
            "oneclick": oneclick,
            "smtp_password": "pw",
            "serve_forever": serve_forever,
        }
        source = "async def run_snippet():\n" + textwrap.indent(code, "    ")
        exec(compile(source, str(README), "exec"), namespace)  # noqa: S102 - our README
        await namespace["run_snippet"]()  # type: ignore[operator]
        assert 1 == len(guard.accounts())
