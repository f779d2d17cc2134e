"""
Notifiers for `guard.BalanceMonitor`: `Webhook` (JSON, Slack-compatible)
and `Email` (SMTP, standard library).

A notifier is any plain or async callable taking a `guard.BalanceAlert`;
these two are ready-made. Neither shows its URL's path, its headers or its
password in a repr, an error or a log line: a webhook URL often is a
credential itself (Slack's are).

.. versionadded:: 0.2
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING, cast

import aiohttp
import yarl

from .errors import ConfigurationError, GuardError
from .providers import Secret

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .monitor import BalanceAlert

__all__ = ["Email", "NotifyError", "Webhook"]


class NotifyError(GuardError):
    """
    A notifier could not deliver an alert. Its message names the
    destination's host, never a URL path, header or password.

    .. versionadded:: 0.2
    """

    safe_message = True


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a number of seconds > 0, got {value!r}"
        )
    return float(value)


class Webhook:
    """
    POST each alert as JSON to *url*: every `BalanceAlert` field as a
    string (amounts exact, ``at`` in ISO 8601), plus ``text``, the alert's
    sentence, which Slack and Mattermost incoming webhooks display.

    Args:
        url: An ``http`` or ``https`` URL. It may carry a token: it is
            shown as ``scheme://host/…`` only.
        headers: Sent with each request (an ``Authorization``, say); a
            value may be a `guard.providers.Secret`. Never shown.
        timeout: Seconds one request may take.

    An answer other than 2xx is a failure (the monitor retries it).
    """

    __slots__ = ("_headers", "_url", "timeout")

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str | Secret] | None = None,
        timeout: float = 10.0,
    ) -> None:
        try:
            parsed = yarl.URL(url)
        except (TypeError, ValueError):
            raise ConfigurationError("Webhook url must be an http(s) URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            # SECURITY: the URL itself is not echoed; it may be a token.
            raise ConfigurationError(
                "Webhook url must be an absolute http(s) URL with a host"
            )
        self._url = parsed
        self._headers = dict(headers or {})
        self.timeout = _seconds("timeout", timeout)

    def __repr__(self) -> str:
        return f"Webhook('{self._url.scheme}://{self._url.host}/…')"

    async def __call__(self, alert: BalanceAlert) -> None:
        """
        Post *alert*.

        Raises:
            NotifyError: No 2xx answer within the timeout.
        """
        headers = {
            k: v.reveal() if isinstance(v, Secret) else v
            for k, v in self._headers.items()
        }
        where = f"webhook {self._url.host}"
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout)
                ) as session,
                session.post(self._url, json=alert.as_dict(), headers=headers) as reply,
            ):
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # SECURITY: aiohttp's messages quote the URL; name the error only.
            raise NotifyError(f"{where}: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise NotifyError(f"{where} answered HTTP {status}")


class Email:
    """
    Send each alert as a short plain-text e-mail over SMTP (the standard
    library's ``smtplib``; the monitor runs it in a worker thread).

    Args:
        host: The SMTP server.
        port: Its port (25; 587 with *starttls*; 465 with *tls*).
        sender: The From address.
        to: One recipient address or several.
        username: Log in as this user (with *password*).
        password: A str or a `guard.providers.Secret`; never shown.
        starttls: Upgrade the connection with STARTTLS before logging in.
        tls: Connect over TLS from the start (SMTPS).
        timeout: Seconds the exchange may take.
    """

    __slots__ = (
        "_password",
        "host",
        "port",
        "sender",
        "starttls",
        "timeout",
        "tls",
        "to",
        "username",
    )

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        to: str | Iterable[str],
        username: str | None = None,
        password: str | Secret | None = None,
        starttls: bool = False,
        tls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(cast("object", host), str) or not host:
            raise ConfigurationError(f"Email host must be a host name, got {host!r}")
        given: object = port
        if (
            isinstance(given, bool)
            or not isinstance(given, int)
            or not 0 < port < 65536
        ):
            raise ConfigurationError(f"Email port must be 1-65535, got {port!r}")
        recipients = [to] if isinstance(to, str) else list(to)
        addresses: list[object] = [sender, *recipients]
        for address in addresses:
            if not isinstance(address, str) or "@" not in address or "\n" in address:
                raise ConfigurationError(
                    f"Email addresses must look like user@host, got {address!r}"
                )
        if not recipients:
            raise ConfigurationError("Email needs at least one recipient in to")
        if (username is None) != (password is None):
            raise ConfigurationError("Email takes username and password together")
        if starttls and tls:
            raise ConfigurationError("Email takes starttls or tls, not both")
        self.host = host
        self.port = port
        self.sender = sender
        self.to = tuple(recipients)
        self.username = username
        self._password = (
            password
            if password is None or isinstance(password, Secret)
            else Secret(password)
        )
        self.starttls = starttls
        self.tls = tls
        self.timeout = _seconds("timeout", timeout)

    def __repr__(self) -> str:
        return f"Email({self.host!r}, {self.port}, to={list(self.to)!r})"

    def message(self, alert: BalanceAlert) -> EmailMessage:
        """
        Return the e-mail *alert* is sent as.
        """
        message = EmailMessage()
        message["Subject"] = (
            f"[guard] {alert.provider}: balance {alert.kind} ({alert.level})"
        )
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        lines = [str(alert), ""]
        lines += [f"{k}: {v}" for k, v in alert.as_dict().items() if k != "text" and v]
        message.set_content("\n".join(lines) + "\n")
        return message

    def __call__(self, alert: BalanceAlert) -> None:
        """
        Send *alert* (blocking).

        Raises:
            NotifyError: The server could not be reached or refused it.
        """
        message = self.message(alert)
        where = f"SMTP {self.host}:{self.port}"
        try:
            smtp: smtplib.SMTP
            if self.tls:
                smtp = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    timeout=self.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username is not None and self._password is not None:
                    smtp.login(self.username, self._password.reveal())
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            # SECURITY: a server's reply may quote what it was sent.
            raise NotifyError(f"{where}: {type(exc).__name__}") from None
