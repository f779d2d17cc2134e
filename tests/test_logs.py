from __future__ import annotations

import ast
import asyncio
import logging
import pathlib
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiocache import SimpleMemoryCache
from aiohttp import web

import guard
from guard import BalanceGuard, BalanceUnavailable
from guard.aiohttp import guard_client_middleware, guard_route, setup_guard
from guard.providers import OneClickDZ
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from aiohttp.test_utils import TestClient

    from guard.pytest_plugin import GuardEmulator

    Client = TestClient[web.Request, web.Application]
    MakeClient = Callable[[web.Application], Awaitable[Client]]

GUARD = pathlib.Path(guard.__file__).parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
SECRET = "logs-secret-key-0123456789"
STANDARD = {
    *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
    "message",
    "asctime",
}


class Records(logging.Handler):
    """Keeps every record of the guard logger, as a JSON formatter sees it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self, event: str) -> dict[str, Any]:
        (record,) = [r for r in self.records if getattr(r, "guard_event", "") == event]
        return {k: v for k, v in vars(record).items() if k not in STANDARD}


@pytest.fixture(name="records")
def _records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("guard")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
    # SECURITY: no credential in any field of any record.
    for record in handler.records:
        assert SECRET not in repr(vars(record))


def log_calls() -> Iterator[tuple[str, ast.Call]]:
    for path in sorted(GUARD.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.func.attr in LEVELS
            ):
                yield f"{path.relative_to(GUARD)}:{node.lineno}", node


class TestEveryRecordHasFields:
    def test_every_log_call_passes_fields(self) -> None:
        """Every ``log.*(...)`` call in guard passes ``extra=fields(...)``."""
        calls = list(log_calls())
        assert len(calls) >= 5
        bare = [
            where
            for where, call in calls
            if not any(
                kw.arg == "extra"
                and isinstance(kw.value, ast.Call)
                and isinstance(kw.value.func, ast.Name)
                and kw.value.func.id == "fields"
                for kw in call.keywords
            )
        ]
        assert [] == bare

    def test_guard_configures_no_logging(self) -> None:
        """Importing guard and its modules adds no handler and sets no level."""
        code = (
            "import logging, guard, guard.aiohttp, guard.stores, guard.testing, "
            "guard.prometheus, guard.otel, guard._cli\n"
            "log = logging.getLogger('guard')\n"
            "assert not log.handlers and not log.level and log.propagate\n"
            "assert not logging.getLogger().handlers\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # noqa: S603 - our own argv


class TestRecords:
    async def test_failed_open(self, records: Records) -> None:
        """Failing open logs the account, the amount and the reason."""
        down = OneClickDZ(SECRET, base_url="http://127.0.0.1:9")
        async with BalanceGuard(on_unavailable="open", retries=0) as g:
            async with g.reserve(down, "12.50"):
                pass
            (state,) = g.accounts()

        fields = records.fields("failed_open")
        assert {
            "guard_event": "failed_open",
            "provider": "oneclickdz",
            "account": state.account,
            "currency": "DZD",
            "amount": "12.50",
        } == {
            k: fields[k]
            for k in ("guard_event", "provider", "account", "currency", "amount")
        }
        assert isinstance(fields["reason"], str)

    async def test_hook_failed(
        self, records: Records, provider: InMemoryProvider
    ) -> None:
        """A failing hook logs which event and account it failed on."""

        def broken(event: object) -> None:
            raise RuntimeError("hook bug")

        async with BalanceGuard(hooks=[broken]) as g:
            await g.balance(provider)
            (state,) = g.accounts()

        assert {
            "guard_event": "hook_failed",
            "provider": "memory",
            "account": state.account,
            "kind": "fetched",
        } == records.fields("hook_failed")

    async def test_cache_delete_failed(
        self, records: Records, provider: InMemoryProvider
    ) -> None:
        """A cache that can't delete logs the account and the error's type."""

        class NoDelete(SimpleMemoryCache):  # type: ignore[misc]
            async def _delete(self, *args: Any, **kwargs: Any) -> Any:
                raise ConnectionResetError

        async with BalanceGuard(cache=NoDelete()) as g:
            await g.balance(provider)
            await g.invalidate(provider)
            (state,) = g.accounts()

        assert {
            "guard_event": "cache_delete_failed",
            "provider": "memory",
            "account": state.account,
            "error": "ConnectionResetError",
        } == records.fields("cache_delete_failed")

    async def test_request_unavailable(
        self, records: Records, aiohttp_client: MakeClient
    ) -> None:
        """The server middleware's 503 logs the route's account and status."""
        down = OneClickDZ(SECRET, base_url="http://127.0.0.1:9")

        async def topup(request: web.Request) -> web.Response:
            return web.Response()

        app = web.Application()
        app.router.add_post("/topup", topup, name="topup")
        made: list[BalanceGuard] = []

        def make() -> BalanceGuard:
            made.append(BalanceGuard(retries=0))
            return made[-1]

        setup_guard(app, make, routes={"topup": guard_route(down, 10)})
        client = await aiohttp_client(app)
        response = await client.post("/topup")
        (state,) = made[0].accounts()

        assert 503 == response.status
        fields = records.fields("request_unavailable")
        assert "oneclickdz" == fields["provider"]
        assert state.account == fields["account"]
        assert ("POST", "/topup") == (fields["method"], fields["path"])

    async def test_request_unavailable_in_handler(
        self, records: Records, aiohttp_client: MakeClient
    ) -> None:
        """A handler's own guarded call that fails: the account is ""."""

        async def topup(request: web.Request) -> web.Response:
            raise BalanceUnavailable("down", provider="oneclickdz")

        app = web.Application()
        app.router.add_post("/topup", topup)
        setup_guard(app)
        client = await aiohttp_client(app)

        assert 503 == (await client.post("/topup")).status
        assert "" == records.fields("request_unavailable")["account"]

    async def test_sent_unguarded(
        self, records: Records, guard_emulator: GuardEmulator
    ) -> None:
        """A spend of an unknown account sent unguarded logs its method and path."""
        oneclick = guard_emulator.oneclickdz
        guard_emulator.emulator.add_oneclickdz(SECRET, 5000)
        async with BalanceGuard() as g:
            middleware = guard_client_middleware(
                g, providers=[oneclick], unknown="allow"
            )
            async with aiohttp.ClientSession(middlewares=[middleware]) as session:
                response = await session.post(
                    f"{oneclick.base_url}/v3/mobile/send",
                    json={
                        "plan_code": "PREPAID_MOBILIS",
                        "MSSIDN": "0661234567",
                        "amount": 100,
                        "ref": "logs-1",
                    },
                    headers={"X-Access-Token": SECRET},
                )
                response.release()

        assert {
            "guard_event": "sent_unguarded",
            "provider": "",
            "account": "",
            "method": "POST",
            "path": "/v3/mobile/send",
        } == records.fields("sent_unguarded")


async def test_readme_filter(records: Records, provider: InMemoryProvider) -> None:
    """The README's logging filter puts the fields in the message."""
    from test_docs import snippet

    namespace: dict[str, Any] = {}
    exec(snippet("import logging\n\nclass GuardFields"), namespace)  # noqa: S102
    logger = logging.getLogger("guard")
    (added,) = [f for f in logger.filters if type(f).__name__ == "GuardFields"]
    try:

        def broken(event: object) -> None:
            raise RuntimeError("hook bug")

        async with BalanceGuard(hooks=[broken]) as g:
            await g.balance(provider)
    finally:
        logger.removeFilter(added)

    (record,) = records.records
    assert "[hook_failed memory " in record.getMessage()


async def test_refresh_failed(records: Records, provider: InMemoryProvider) -> None:
    """A background refresh that fails logs the account and the reason."""
    async with BalanceGuard(settle="refresh", refresh_interval=0, retries=0) as g:
        async with g.reserve(provider, 1):
            provider.fail_next(times=5)
        for _ in range(100):
            if any(
                getattr(r, "guard_event", "") == "refresh_failed"
                for r in records.records
            ):
                break
            await asyncio.sleep(0.01)
        (state,) = g.accounts()

    fields = records.fields("refresh_failed")
    assert ("memory", state.account) == (fields["provider"], fields["account"])
    assert isinstance(fields["reason"], str)
