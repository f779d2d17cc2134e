"""
What the provider modules share: argument checks, the bounded request with
its capped body read, ``Retry-After`` parsing, and cleaning provider text for
messages.

Nothing here knows a provider's paths, headers or codes; those live in the
provider's own module.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import math
import re
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from yarl import URL

from guard.errors import BalanceUnavailable, ProviderResponseError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from decimal import Decimal

    import attrs

__all__ = [
    "BODY_LIMIT",
    "MAX_BALANCE_DIGITS",
    "account_digest",
    "check_credential",
    "check_timeout",
    "checked_balance",
    "clean_text",
    "normalise_base_url",
    "parse_retry_after",
    "read_capped",
    "request",
    "same_secret",
    "under_base",
]

BODY_LIMIT: Final = 64 * 1024
"""
The most of a body guard reads; a 200 answer larger than this is refused.
"""

MAX_BALANCE_DIGITS: Final = 24
"""
Balances at or above ``10**MAX_BALANCE_DIGITS`` are refused as nonsense; they
would also overflow the default `decimal` context in later arithmetic.
"""

_ACCOUNT_ID_LENGTH: Final = 24
_MESSAGE_LIMIT: Final = 200
_RETRY_SECONDS = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")


# --- Construction checks -------------------------------------------------------


def check_credential(
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


def normalise_base_url(value: object) -> str:
    """
    Check *value* is an http(s) base URL and return its one spelling.

    Scheme and host are lower-cased, the host IDNA-encoded, a default port
    and trailing slashes dropped: ``HTTP://API.Example:80/`` and
    ``http://api.example`` are one account, so one set of holds.

    Raises:
        TypeError: *value* is not a str.
        ValueError: It is not an absolute http(s) URL, or it carries
            credentials, a query or a fragment.
    """
    if not isinstance(value, str):
        msg = f"base_url must be a str, not {type(value).__name__}"
        raise TypeError(msg)
    try:
        url = URL(value)
        host = url.raw_host  # lower case, IDNA-encoded
        port = url.explicit_port
    except ValueError:
        url, host, port = URL(), None, None
    if url.scheme.lower() not in ("http", "https") or not host:
        msg = "base_url must be an absolute http:// or https:// URL"
        raise ValueError(msg)
    # SECURITY: userinfo in the URL would end up in logs and reprs.
    if url.user is not None or url.password is not None:
        msg = "base_url must not contain credentials"
        raise ValueError(msg)
    if url.query_string or url.fragment:
        msg = "base_url must not have a query or fragment"
        raise ValueError(msg)
    origin = URL.build(
        scheme=url.scheme.lower(),
        host=host,
        port=None if url.is_default_port() else port,
    )
    # The path keeps its own encoding; only trailing slashes go.
    return str(origin) + url.raw_path.rstrip("/")


def check_timeout(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"timeout must be a number of seconds, not {type(value).__name__}"
        raise TypeError(msg)
    if not (math.isfinite(value) and value > 0):
        msg = f"timeout must be a positive number of seconds, not {value!r}"
        raise ValueError(msg)


def account_digest(*parts: str) -> str:
    """
    24 hex characters naming an account; not reversible.
    """
    # Domain-separated and NUL-joined, so ("ab", "c") and ("a", "bc") differ.
    data = "\0".join(("guard.account.v1", *parts)).encode()
    return hashlib.sha256(data).hexdigest()[:_ACCOUNT_ID_LENGTH]


def under_base(url: URL, base_url: str) -> bool:
    """
    Tell whether *url* is on the API at *base_url* (same origin, path below).
    """
    base = URL(base_url)
    prefix = base.path.rstrip("/") + "/"
    return (
        url.scheme == base.scheme
        and url.host == base.host
        and url.port == base.port
        and url.path.startswith(prefix)
    )


def same_secret(given: str | None, expected: str) -> bool:
    """
    Tell whether *given* is the credential *expected*, in constant time.
    """
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


# --- The request -------------------------------------------------------------


async def read_capped(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """
    Read at most 64 KiB of the body; tell whether that was all of it.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= BODY_LIMIT:
        chunk = await response.content.read(BODY_LIMIT + 1 - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:BODY_LIMIT], False


async def request(
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
            body, complete = await read_capped(response)
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
            f"body larger than {BODY_LIMIT // 1024} KiB",
            provider=provider,
            status=status,
        )
    return status, body, retry_after


# --- Reading answers -----------------------------------------------------------


def parse_retry_after(
    value: str | None, *, now: dt.datetime | None = None
) -> float | None:
    """
    Read a ``Retry-After`` header value.

    Args:
        value: The header, as sent; `None` when absent.
        now: The current time for the HTTP-date form; defaults to now (UTC).

    Returns:
        Seconds to wait (never negative), or `None` when the value is absent
        or not a number of seconds nor an HTTP-date.
    """
    if value is None:
        return None
    value = value.strip()
    if _RETRY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now if now is not None else dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


def clean_text(text: str, redact: Iterable[str] = ()) -> str:
    """
    Make provider-supplied *text* safe for one log line or exception message.

    Control characters and runs of whitespace become one space, every string
    of *redact* is replaced by ``[secure]``, and the result is cut to 200
    characters.
    """
    for secret in redact:
        if secret:
            # SECURITY: a provider (or a proxy) may echo what it was sent.
            text = text.replace(secret, "[secure]")
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 1] + "…"
    return text


def checked_balance(value: Decimal, provider: str, status: int) -> Decimal:
    """
    Return *value*, or raise `ProviderResponseError` when it is not finite or
    not below ``10**MAX_BALANCE_DIGITS``.
    """
    if not value.is_finite():
        raise ProviderResponseError(
            "balance is not a finite number", provider=provider, status=status
        )
    if value and value.adjusted() >= MAX_BALANCE_DIGITS:
        raise ProviderResponseError(
            "balance is out of range", provider=provider, status=status
        )
    return value
