"""
Code examples taken from README.md, so that tests run them as written.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def plugin_snippet() -> str:
    """
    The Python example of the README's pytest plugin section, verbatim.
    """
    section = README.read_text().split("### pytest plugin\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]
