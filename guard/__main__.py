"""
``python -m guard``: the demo, a balance reader and the provider emulator.
"""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
