"""
Delivering alerts: webhooks to a real aiohttp server and e-mail to a real
SMTP server (aiosmtpd), both on loopback; retries, timeouts, drops, and no
secret anywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from guard import (
    BalanceAlert,
    BalanceGuard,
    BalanceMonitor,
    ConfigurationError,
    Threshold,
)
from guard.notify import Email, NotifyError, Webhook
from guard.providers import Secret
from guard.testing import Emulator

KEY = "live-key-notify-93af10d2"
SMTP_PASSWORD = "smtp-pw-71c2e9"
HOOK_TOKEN = "T000/B000/xoxb-secret-hook"
THRESHOLDS = [Threshold(3000), Threshold(1000, level="critical")]

ALERT = BalanceAlert(
    kind="low",
    level="critical",
    threshold=Decimal(1000),
    balance=Decimal("950.5"),
    provider="oneclickdz",
    account="0123abcd",
    currency="DZD",
    at=dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
)


class Hooks:
    """A webhook receiver: scripted statuses, a hang, and what it received."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hang = asyncio.Event()
        self.hanging = False
        self.hung = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.hanging:
            self.hung += 1
            await self.hang.wait()
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")


@pytest.fixture(name="hooks")
async def _hooks() -> AsyncIterator[tuple[Hooks, str]]:
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hooks/{token:.*}", hooks.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield hooks, f"http://127.0.0.1:{port}/hooks/{HOOK_TOKEN}"
    finally:
        hooks.hang.set()
        await runner.cleanup()


@pytest.fixture(name="emu")
async def _emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 5000)
        yield emu


class Mailbox:
    """aiosmtpd handler keeping each message; checks the login."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.logins: list[str] = []

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(envelope.content)
        return "250 OK"


def _authenticate(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == b"ops"
        and data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok)


@pytest.fixture(name="smtp")
def _smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    with socket.socket() as probe:  # a free port: aiosmtpd can't take 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


class TestWebhook:
    async def test_body(self, hooks: tuple[Hooks, str]) -> None:
        """Every field as a string, plus a Slack-compatible text; headers sent."""
        receiver, url = hooks
        await Webhook(url, headers={"Authorization": Secret("Bearer t0k")})(ALERT)
        (body,) = receiver.bodies
        assert {
            "kind": "low",
            "level": "critical",
            "threshold": "1000",
            "balance": "950.5",
            "provider": "oneclickdz",
            "account": "0123abcd",
            "currency": "DZD",
            "at": "2026-03-01T12:00:00+00:00",
            "hours_left": "",
            "text": (
                "oneclickdz: 950.50 DZD left, at or below the 1,000 DZD "
                "critical threshold"
            ),
        } == body
        assert "Bearer t0k" == receiver.headers[0]["Authorization"]

    async def test_errors_hide_the_url(self, hooks: tuple[Hooks, str]) -> None:
        """A refused or unreachable webhook raises NotifyError naming the host only."""
        receiver, url = hooks
        receiver.statuses = [500]
        hook = Webhook(url)
        with pytest.raises(NotifyError, match="answered HTTP 500") as info:
            await hook(ALERT)
        with pytest.raises(NotifyError, match="ClientConnectorError") as down:
            await Webhook(f"http://127.0.0.1:1/hooks/{HOOK_TOKEN}")(ALERT)
        for text in (str(info.value), str(down.value), repr(hook)):
            assert HOOK_TOKEN not in text
        assert "Webhook('http://127.0.0.1/…')" == repr(hook)

    @pytest.mark.parametrize("url", ["ftp://x/y", "/relative", "http://", 5])
    def test_bad_url(self, url: object) -> None:
        """Only absolute http(s) URLs are taken, and not echoed."""
        with pytest.raises(ConfigurationError, match="http") as info:
            Webhook(url)  # type: ignore[arg-type]
        assert "ftp://x/y" not in str(info.value)

    def test_bad_timeout(self) -> None:
        """A timeout must be positive seconds."""
        with pytest.raises(ConfigurationError, match="timeout"):
            Webhook("https://x/y", timeout=0)


class TestDelivery:
    async def test_500_then_200_delivers_once(
        self, emu: Emulator, hooks: tuple[Hooks, str]
    ) -> None:
        """A webhook that answers 500 and then 200 gets the alert once."""
        receiver, url = hooks
        receiver.statuses = [500]
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g, backoff=0.01)
            monitor.watch(oneclick, THRESHOLDS, notify=[Webhook(url)])
            async with monitor:
                emu.set_balance(KEY, 2000)
                await g.balance(oneclick)
                await monitor.flush()
        assert ["low"] == [b["kind"] for b in receiver.bodies[1:]]
        assert 2 == len(receiver.bodies)  # the 500, then the one delivered
        assert {("warning", "delivered"): 1} == monitor.alert_counts()

    async def test_hanging_webhook_is_abandoned(
        self,
        emu: Emulator,
        hooks: tuple[Hooks, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A hanging webhook is given up at its timeout; guarded calls go on."""
        receiver, url = hooks
        receiver.hanging = True
        oneclick = emu.oneclickdz(KEY)
        seen: list[BalanceAlert] = []
        async with BalanceGuard(settle="debit") as g:
            monitor = BalanceMonitor(guard=g, retries=1, backoff=0.01, timeout=0.3)
            monitor.watch(
                oneclick, [Threshold(4990)], notify=[Webhook(url), seen.append]
            )
            async with monitor:
                async with g.reserve(oneclick, 20):
                    pass
                while not receiver.hung:
                    await asyncio.sleep(0.005)
                # The webhook hangs: guarded calls don't wait for it.
                for _ in range(100):
                    async with g.reserve(oneclick, 1):
                        pass
                assert 1 == receiver.hung
                assert {} == {
                    k: v
                    for k, v in monitor.alert_counts().items()
                    if k[1] != "delivered"
                }
                await monitor.flush()
        assert 2 == receiver.hung  # tried twice, each abandoned at the timeout
        assert ["low"] == [a.kind for a in seen]  # the other notifier got it at once
        assert {
            ("warning", "failed"): 1,
            ("warning", "delivered"): 1,
        } == monitor.alert_counts()
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert (
            "dropped after 2 attempts to Webhook('http://127.0.0.1/…') (timed out)"
            in (warning.getMessage())
        )

    async def test_full_queue_drops_and_counts(
        self, emu: Emulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Alerts past a notifier's queue are dropped, counted and logged."""
        release = asyncio.Event()

        async def slow(alert: BalanceAlert) -> None:
            await release.wait()

        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g, queue_size=1)
            monitor.watch(
                oneclick,
                [Threshold(4000), Threshold(3000), Threshold(2000)],
                notify=[slow],
            )
            async with monitor:
                emu.set_balance(KEY, 100)
                await g.balance(oneclick)
                await monitor._drain()
                release.set()
                await monitor.flush()
        # One reading, three alerts at once: one queued, two dropped.
        assert {("warning", "delivered"): 1, ("warning", "dropped"): 2} == (
            monitor.alert_counts()
        )
        assert any("queue is full" in r.getMessage() for r in caplog.records)

    async def test_sync_notifier_that_raises(
        self, emu: Emulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A plain notifier runs in a thread; its error is named, not echoed."""

        def broken(alert: BalanceAlert) -> None:
            raise RuntimeError(f"boom {KEY}")

        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g, retries=2, backoff=0.001)
            monitor.watch(oneclick, [Threshold(6000)], notify=[broken])
            async with monitor:
                await g.balance(oneclick)
                await monitor.flush()
        assert {("warning", "failed"): 1} == monitor.alert_counts()
        assert "(RuntimeError)" in caplog.text
        assert KEY not in caplog.text

    async def test_stop_drops_what_is_left(self, emu: Emulator) -> None:
        """Alerts still queued when the monitor stops are counted as dropped."""
        oneclick = emu.oneclickdz(KEY)

        async def never(alert: BalanceAlert) -> None:
            await asyncio.sleep(3600)

        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g, timeout=0.1, retries=0)
            monitor.watch(oneclick, [Threshold(6000), Threshold(5500)], notify=[never])
            async with monitor:
                await g.balance(oneclick)
                await monitor._drain()
        # The first timed out; the second was cut short by the stop.
        assert {("warning", "failed"): 1, ("warning", "dropped"): 1} == (
            monitor.alert_counts()
        )


class TestEmail:
    async def test_delivered_with_login(self, smtp: tuple[Mailbox, int]) -> None:
        """An alert arrives as a plain-text e-mail; the password never shows."""
        mailbox, port = smtp
        notifier = Email(
            "127.0.0.1",
            port,
            sender="guard@example.org",
            to=["ops@example.org", "cto@example.org"],
            username="ops",
            password=SMTP_PASSWORD,
        )
        assert SMTP_PASSWORD not in repr(notifier)
        await asyncio.to_thread(notifier, ALERT)
        (raw,) = mailbox.messages
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert "[guard] oneclickdz: balance low (critical)" == message["Subject"]
        assert "ops@example.org, cto@example.org" == message["To"]
        body = message.get_content()  # type: ignore[attr-defined]
        assert body.startswith(str(ALERT))
        assert "balance: 950.5" in body
        assert SMTP_PASSWORD not in raw.decode()

    def test_refused_login(self, smtp: tuple[Mailbox, int]) -> None:
        """A refused login is a NotifyError that does not echo the password."""
        _, port = smtp
        notifier = Email(
            "127.0.0.1",
            port,
            sender="guard@example.org",
            to="ops@example.org",
            username="ops",
            password=Secret("wrong-pw-5521"),
            timeout=1,
        )
        with pytest.raises(NotifyError, match=r"SMTP 127\.0\.0\.1") as info:
            notifier(ALERT)
        assert "wrong-pw-5521" not in str(info.value)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"host": ""}, "host"),
            ({"port": 0}, "port"),
            ({"sender": "nobody"}, "user@host"),
            ({"to": []}, "recipient"),
            ({"to": "a@b\nBcc: x@y"}, "user@host"),
            ({"username": "u"}, "together"),
            ({"starttls": True, "tls": True}, "not both"),
        ],
    )
    def test_bad_options(self, kwargs: dict[str, Any], match: str) -> None:
        """Each bad option is named."""
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "sender": "g@x.org",
            "to": "o@x.org",
        } | kwargs
        with pytest.raises(ConfigurationError, match=match):
            Email(**options)

    async def test_end_to_end_without_secrets(
        self,
        emu: Emulator,
        smtp: tuple[Mailbox, int],
        hooks: tuple[Hooks, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A walk with webhook and e-mail: no credential in bodies, mails or logs."""
        caplog.set_level(logging.DEBUG, logger="guard")
        mailbox, port = smtp
        receiver, url = hooks
        receiver.statuses = [503]
        oneclick = emu.oneclickdz(KEY)
        mail = Email(
            "127.0.0.1",
            port,
            sender="guard@example.org",
            to="ops@example.org",
            username="ops",
            password=SMTP_PASSWORD,
        )
        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g, backoff=0.01)
            monitor.watch(oneclick, THRESHOLDS, notify=[Webhook(url), mail])
            async with monitor:
                for balance in (2500, 500, 5000):
                    emu.set_balance(KEY, balance)
                    await g.balance(oneclick, fresh=True)
                    await monitor.flush()
        assert 3 == len(mailbox.messages)
        assert ["low", "low", "recovered"] == [b["kind"] for b in receiver.bodies[1:]]
        everything = "\n".join(
            [json.dumps(receiver.bodies), caplog.text]
            + [m.decode() for m in mailbox.messages]
        )
        for secret in (KEY, SMTP_PASSWORD, HOOK_TOKEN):
            assert secret not in everything


async def test_webhook_timeout(hooks: tuple[Hooks, str]) -> None:
    """A webhook call is bounded by its own timeout too."""
    receiver, url = hooks
    receiver.hanging = True
    with pytest.raises(NotifyError, match="TimeoutError"):
        await Webhook(url, timeout=0.1)(ALERT)


class TestFailures:
    async def test_always_500_is_named_in_the_warning(
        self, emu: Emulator, hooks: tuple[Hooks, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A webhook that keeps failing is dropped with its reason, not its URL."""
        receiver, url = hooks
        receiver.statuses = [500, 500]
        oneclick = emu.oneclickdz(KEY)
        async with BalanceGuard() as g:
            monitor = BalanceMonitor(guard=g, retries=1, backoff=0)
            monitor.watch(oneclick, [Threshold(6000)], notify=[Webhook(url)])
            async with monitor:
                await g.balance(oneclick)
                await monitor.flush()
        assert "(webhook 127.0.0.1 answered HTTP 500)" in caplog.text
        assert HOOK_TOKEN not in caplog.text

    @pytest.mark.parametrize("option", ["tls", "starttls"])
    def test_tls_to_a_plain_server(
        self, smtp: tuple[Mailbox, int], option: str
    ) -> None:
        """TLS asked of a server without it fails as a NotifyError."""
        _, port = smtp
        notifier = Email(
            "127.0.0.1",
            port,
            sender="g@example.org",
            to="o@example.org",
            timeout=2,
            **{option: True},
        )
        with pytest.raises(NotifyError, match=r"SMTP 127\.0\.0\.1"):
            notifier(ALERT)
