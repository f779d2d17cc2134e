"""
Test helpers for code that uses guard: a local provider emulator and an
in-memory provider.

.. code-block:: python

    from guard.testing import Emulator, Fault, Route

    async with Emulator() as emu:
        emu.add_oneclickdz("key", balance=1000)
        provider = emu.oneclickdz("key")
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"))
"""

from __future__ import annotations

from ._emulator import (
    DEMO_CLICKATELL_API_ID,
    DEMO_CLICKATELL_PASSWORD,
    DEMO_CLICKATELL_USER,
    DEMO_ONECLICKDZ_KEY,
    ClickatellAccount,
    Emulator,
    Fault,
    OneClickDZAccount,
    RequestRecord,
    Route,
)
from ._memory import InMemoryProvider

__all__ = [
    "ClickatellAccount",
    "DEMO_CLICKATELL_API_ID",
    "DEMO_CLICKATELL_PASSWORD",
    "DEMO_CLICKATELL_USER",
    "DEMO_ONECLICKDZ_KEY",
    "Emulator",
    "Fault",
    "InMemoryProvider",
    "OneClickDZAccount",
    "RequestRecord",
    "Route",
]
