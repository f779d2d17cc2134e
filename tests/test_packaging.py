from __future__ import annotations

from importlib import metadata
from pathlib import Path

import guard


def test_version_matches_metadata() -> None:
    """The installed distribution's version is guard.__version__."""
    assert guard.__version__ == metadata.version("guard")


def test_typed() -> None:
    """The package ships its py.typed marker."""
    assert (Path(guard.__file__).parent / "py.typed").is_file()
