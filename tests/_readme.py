"""
Code examples taken from README.md, so that tests run them as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

README = Path(__file__).resolve().parent.parent / "README.md"


def plugin_snippet() -> str:
    """
    The Python example of the README's pytest plugin section, verbatim.
    """
    section = README.read_text().split("### pytest plugin\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def amount_function() -> Callable[[web.Request], Awaitable[object]]:
    """
    The amount function of the README's aiohttp server section, as written.
    """
    section = README.read_text().split("### aiohttp server", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    start = code.index("async def topup_amount")
    end = code.index("\n\n", start)
    namespace: dict[str, Any] = {"web": web}
    exec(code[start:end], namespace)  # noqa: S102 - the README's own code
    function: Callable[[web.Request], Awaitable[object]] = namespace["topup_amount"]
    return function
