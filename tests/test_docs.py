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
