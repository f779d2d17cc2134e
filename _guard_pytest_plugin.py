"""
Entry point of guard's pytest plugin (``pytest11``).

It imports `guard.pytest_plugin` once pytest is configured rather than when
pytest starts, so that coverage measurement started by pytest (pytest-cov)
sees guard's modules imported under it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.import_plugin("guard.pytest_plugin")
