"""
Test helpers for code that uses guard: a local provider emulator and an
in-memory provider.

.. code-block:: python

    from guard.testing import Emulator, Fault, Route

    async with Emulator() as emu:
        emu.add_oneclickdz("key", balance=1000)
        provider = emu.oneclickdz("key")
        emu.fail(Route.ONECLICKDZ_BALANCE, Fault.oneclickdz(503, "SERVICE_UNAVAILABLE"))

Route names (`Route`) are also the aiohttp resource names, so ``emu.app`` can
be served by pytest-aiohttp's ``aiohttp_server`` as well.
"""

from __future__ import annotations

from ._alerts import CapturedAlerts, capture_alerts
from ._clickatell import ClickatellAccount, SentMessage
from ._clickatell_platform import PlatformAccount
from ._core import (
    DEMO_CLICKATELL_API_ID,
    DEMO_CLICKATELL_PASSWORD,
    DEMO_CLICKATELL_PLATFORM_KEY,
    DEMO_CLICKATELL_USER,
    DEMO_ONECLICKDZ_KEY,
    EMULATOR_KEY,
    Emulator,
)
from ._faults import Fault
from ._log import RequestRecord
from ._memory import InMemoryProvider
from ._oneclickdz_records import (
    GiftCard,
    GiftCardType,
    InternetProduct,
    OneClickDZAccount,
    Plan,
    Topup,
    Transaction,
)
from ._routes import Route

__all__ = [
    "CapturedAlerts",
    "ClickatellAccount",
    "DEMO_CLICKATELL_API_ID",
    "DEMO_CLICKATELL_PASSWORD",
    "DEMO_CLICKATELL_PLATFORM_KEY",
    "DEMO_CLICKATELL_USER",
    "DEMO_ONECLICKDZ_KEY",
    "EMULATOR_KEY",
    "Emulator",
    "Fault",
    "GiftCard",
    "GiftCardType",
    "InMemoryProvider",
    "InternetProduct",
    "OneClickDZAccount",
    "Plan",
    "PlatformAccount",
    "RequestRecord",
    "Route",
    "SentMessage",
    "Topup",
    "Transaction",
    "capture_alerts",
]
