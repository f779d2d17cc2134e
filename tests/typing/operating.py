"""
The operating integrations' public API, type-checked, never run.
"""

from __future__ import annotations

from typing import assert_type

from aiohttp import web
from prometheus_client import REGISTRY

from guard import BalanceGuard
from guard.otel import Instrumentation, instrument
from guard.prometheus import GuardCollector, metrics_handler


def use(guard: BalanceGuard, app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_handler(guard))
    app.router.add_get("/all", metrics_handler(guard, registry=REGISTRY))
    REGISTRY.register(GuardCollector(guard))
    instrumentation = instrument(guard)
    assert_type(instrumentation, Instrumentation)
    instrumentation.uninstrument()
