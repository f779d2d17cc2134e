"""
The providers guard ships: OneClickDZ (DZD) and Clickatell legacy HTTP
(credits).

Each is a frozen value object that satisfies `guard.typing.Provider`: it
knows its credentials and endpoint, and makes one balance request per
`fetch_balance` call (the engine retries). Credentials never appear in a
repr, a URL or an exception message.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import attrs
from yarl import URL

from ._parsing import (
    CLICKATELL,
    ONECLICKDZ,
    clean_text,
    parse_clickatell_balance,
    parse_oneclickdz_balance,
)
from .errors import BalanceUnavailable, ProviderResponseError

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = ["Clickatell", "OneClickDZ"]

_BODY_LIMIT: Final = 64 * 1024
_ACCOUNT_ID_LENGTH: Final = 24


def _strip_slash(value: object) -> object:
    return value.rstrip("/") if isinstance(value, str) else value


def _check_credential(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    # SECURITY: messages name the parameter and never echo the value.
    name = attribute.name
    if not isinstance(value, str):
        msg = f"{name} must be a str, not {type(value).__name__}"
        raise TypeError(msg)
    if not value:
        msg = f"{name} must not be empty"
        raise ValueError(msg)
    if value != value.strip():
        msg = f"{name} must not start or end with whitespace"
        raise ValueError(msg)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        msg = f"{name} must not contain control characters"
        raise ValueError(msg)


def _check_base_url(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if not isinstance(value, str):
        msg = f"base_url must be a str, not {type(value).__name__}"
        raise TypeError(msg)
    try:
        url = URL(value)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        msg = "base_url must be an absolute http:// or https:// URL"
        raise ValueError(msg)
    # SECURITY: userinfo in the URL would end up in logs and reprs.
    if url.user is not None or url.password is not None:
        msg = "base_url must not contain credentials"
        raise ValueError(msg)
    if url.query_string or url.fragment:
        msg = "base_url must not have a query or fragment"
        raise ValueError(msg)


def _check_timeout(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"timeout must be a number of seconds, not {type(value).__name__}"
        raise TypeError(msg)
    if not (math.isfinite(value) and value > 0):
        msg = f"timeout must be a positive number of seconds, not {value!r}"
        raise ValueError(msg)


def _account_digest(*parts: str) -> str:
    # Domain-separated and NUL-joined, so ("ab", "c") and ("a", "bc") differ.
    data = "\0".join(("guard.account.v1", *parts)).encode()
    return hashlib.sha256(data).hexdigest()[:_ACCOUNT_ID_LENGTH]


async def _read_capped(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """
    Read at most 64 KiB of the body; tell whether that was all of it.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= _BODY_LIMIT:
        chunk = await response.content.read(_BODY_LIMIT + 1 - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:_BODY_LIMIT], False


async def _request(
    provider: str,
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    limit: float,
    redact: tuple[str, ...],
    **kwargs: Any,
) -> tuple[int, bytes, str | None]:
    """
    Make one request and return ``(status, body, Retry-After)``.

    Network trouble becomes `BalanceUnavailable`; a 200 body over the cap
    becomes `ProviderResponseError`.
    """
    try:
        async with session.request(
            method,
            url,
            timeout=aiohttp.ClientTimeout(total=limit),
            # SECURITY: a redirect would carry the credentials to another URL.
            allow_redirects=False,
            # The status is ours to read, whatever the session's default.
            raise_for_status=False,
            **kwargs,
        ) as response:
            body, complete = await _read_capped(response)
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except TimeoutError as exc:
        raise BalanceUnavailable(
            f"no answer within {limit:g} s", provider=provider
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        reason = clean_text(f"{type(exc).__name__}: {exc}", redact)
        raise BalanceUnavailable(
            f"request failed: {reason}", provider=provider
        ) from exc
    if status == 200 and not complete:
        raise ProviderResponseError(
            f"body larger than {_BODY_LIMIT // 1024} KiB",
            provider=provider,
            status=status,
        )
    return status, body, retry_after


@attrs.define(frozen=True)
class OneClickDZ:
    """
    A OneClickDZ (Flexy API v3) account, billed in Algerian dinars.

    Args:
        api_key: The ``X-Access-Token`` key (sandbox or production); never
            shown in a repr or message.
        base_url: Where the API lives; point it at the emulator in tests.
        timeout: Seconds one balance request may take in total.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: *api_key* is empty or malformed, *base_url* is not an
            http(s) URL, or *timeout* is not positive.
    """

    api_key: str = attrs.field(repr=False, validator=_check_credential)
    base_url: str = attrs.field(
        default="https://api.oneclickdz.com",
        kw_only=True,
        converter=_strip_slash,
        validator=_check_base_url,
    )
    timeout: float = attrs.field(default=10.0, kw_only=True, validator=_check_timeout)

    @property
    def name(self) -> str:
        """
        ``"oneclickdz"``.
        """
        return ONECLICKDZ

    @property
    def currency(self) -> str:
        """
        ``"DZD"``.
        """
        return "DZD"

    @property
    def account_id(self) -> str:
        """
        24 hex characters identifying the key at *base_url*; not reversible.
        """
        return _account_digest(ONECLICKDZ, self.base_url, self.api_key)

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        """
        Ask ``GET /v3/account/balance`` for the balance, once.

        Args:
            session: The session to send the request with.

        Returns:
            The balance in DZD, exactly as the provider wrote it.

        Raises:
            guard.ProviderAuthError: The key or the caller's IP was refused.
            guard.ProviderResponseError: The answer holds no readable balance.
            guard.BalanceUnavailable: Network trouble, timeout, 429 or 5xx.
        """
        redact = (self.api_key,)
        status, body, retry_after = await _request(
            ONECLICKDZ,
            session,
            "GET",
            f"{self.base_url}/v3/account/balance",
            limit=self.timeout,
            redact=redact,
            headers={"X-Access-Token": self.api_key, "Accept": "application/json"},
        )
        return parse_oneclickdz_balance(
            status, body, retry_after=retry_after, redact=redact
        )


@attrs.define(frozen=True)
class Clickatell:
    """
    A Clickatell account on the legacy HTTP API, counted in credits.

    Credentials go in a POST form body, never in the URL.

    Args:
        user: The Developers' Central user name.
        password: The account password; never shown.
        api_id: The HTTP API id; never shown.
        base_url: Where the API lives; point it at the emulator in tests.
        timeout: Seconds one balance request may take in total.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A credential is empty or malformed, *base_url* is not an
            http(s) URL, or *timeout* is not positive.
    """

    user: str = attrs.field(validator=_check_credential)
    password: str = attrs.field(repr=False, validator=_check_credential)
    api_id: str = attrs.field(repr=False, validator=_check_credential)
    base_url: str = attrs.field(
        default="https://api.clickatell.com",
        kw_only=True,
        converter=_strip_slash,
        validator=_check_base_url,
    )
    timeout: float = attrs.field(default=10.0, kw_only=True, validator=_check_timeout)

    @property
    def name(self) -> str:
        """
        ``"clickatell"``.
        """
        return CLICKATELL

    @property
    def currency(self) -> str:
        """
        ``"credits"``.
        """
        return "credits"

    @property
    def account_id(self) -> str:
        """
        24 hex characters identifying user and API id at *base_url*.
        """
        return _account_digest(CLICKATELL, self.base_url, self.user, self.api_id)

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        """
        Ask ``POST /http/getbalance`` for the balance, once.

        Args:
            session: The session to send the request with.

        Returns:
            The balance in credits, exactly as the provider wrote it.

        Raises:
            guard.ProviderAuthError: ``ERR`` 001, 002, 004, 007 or 108.
            guard.ProviderResponseError: Another ``ERR`` code or an
                unreadable body.
            guard.BalanceUnavailable: Network trouble, timeout, a non-200
                status or ``ERR: 901``.
        """
        redact = (self.password, self.api_id)
        status, body, retry_after = await _request(
            CLICKATELL,
            session,
            "POST",
            f"{self.base_url}/http/getbalance",
            limit=self.timeout,
            redact=redact,
            headers={"Accept": "text/plain"},
            # SECURITY: a form body, so credentials stay out of URLs and logs.
            data={"user": self.user, "password": self.password, "api_id": self.api_id},
        )
        return parse_clickatell_balance(
            status, body, retry_after=retry_after, redact=redact
        )
