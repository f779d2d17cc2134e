"""
Pure parsers for provider balance answers: bytes in, a `Decimal` or a guard
error out, no I/O.

Both parsers take whatever the provider sent (status, a bounded body, the
``Retry-After`` header) and either return the exact balance or raise one of
`BalanceUnavailable`, `ProviderAuthError` or `ProviderResponseError`; no
other exception escapes them, whatever the input.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Final, NoReturn

from .errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "CLICKATELL",
    "CLICKATELL_AUTH_CODES",
    "CLICKATELL_TRANSIENT_CODES",
    "MAX_BALANCE_DIGITS",
    "ONECLICKDZ",
    "ONECLICKDZ_AUTH_CODES",
    "ONECLICKDZ_IP_BLOCK_SECONDS",
    "ONECLICKDZ_TRANSIENT_CODES",
    "clean_text",
    "parse_clickatell_balance",
    "parse_clickatell_err",
    "parse_oneclickdz_balance",
    "parse_retry_after",
]

ONECLICKDZ: Final = "oneclickdz"
CLICKATELL: Final = "clickatell"

ONECLICKDZ_AUTH_CODES: Final = frozenset(
    {
        "MISSING_ACCESS_TOKEN",
        "INVALID_ACCESS_TOKEN",
        "ERR_AUTH",
        "IP_BLOCKED",
        "IP_NOT_ALLOWED",
        "API_DISABLED",
    }
)
"""
OneClickDZ error codes that mean the key (or the caller's IP) is refused.
"""

ONECLICKDZ_TRANSIENT_CODES: Final = frozenset(
    {
        "RATE_LIMIT_EXCEEDED",
        "INTERNAL_SERVER_ERROR",
        "INTERNAL_ERROR",
        "SERVICE_UNAVAILABLE",
        # 503 when the API cannot reach its auth service: says nothing about
        # the key, so it must not stop guard from trying again.
        "AUTH_UNAVAILABLE",
    }
)
"""
OneClickDZ error codes worth retrying.
"""

ONECLICKDZ_IP_BLOCK_SECONDS: Final = 900.0
"""
How long OneClickDZ blocks an IP after too many bad keys (documented: 15 min).
"""

CLICKATELL_AUTH_CODES: Final = frozenset({1, 2, 4, 7, 108})
"""
Clickatell legacy ``ERR:`` codes that refuse the credentials or account.
"""

CLICKATELL_TRANSIENT_CODES: Final = frozenset({901})
"""
Clickatell legacy ``ERR:`` codes worth retrying.
"""

MAX_BALANCE_DIGITS: Final = 24
"""
Balances at or above ``10**MAX_BALANCE_DIGITS`` are refused as nonsense; they
would also overflow the default `decimal` context in later arithmetic.
"""

_MESSAGE_LIMIT = 200
_STATUS_TRANSIENT = frozenset({408, 425, 429})
_STATUS_AUTH = frozenset({401, 403})

_RETRY_SECONDS = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?", re.ASCII)
_CREDIT = re.compile(
    r"^\s*Credits?\s*:\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$", re.ASCII | re.IGNORECASE
)
_ERR = re.compile(r"^\s*ERR\s*:\s*(.*)$", re.ASCII | re.IGNORECASE | re.DOTALL)
_CODE = re.compile(r"[0-9]{1,6}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")


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


def _checked(value: Decimal, provider: str, status: int) -> Decimal:
    if not value.is_finite():
        raise ProviderResponseError(
            "balance is not a finite number", provider=provider, status=status
        )
    if value and value.adjusted() >= MAX_BALANCE_DIGITS:
        raise ProviderResponseError(
            "balance is out of range", provider=provider, status=status
        )
    return value


# --- OneClickDZ ---------------------------------------------------------------


_NOT_JSON = object()


def _reject_constant(name: str) -> NoReturn:
    # JSON has no NaN/Infinity; Python's decoder accepts them unless told off.
    msg = f"non-standard JSON constant {name}"
    raise ValueError(msg)


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    # RecursionError: deeply nested arrays still fit in the body cap.
    except (ValueError, RecursionError):
        return _NOT_JSON


def _error_of(doc: object) -> tuple[str | None, str | None]:
    """
    Return the ``(code, message)`` of an error envelope, or of a bare router
    or proxy body; ``(None, None)`` when there is neither.
    """
    if not isinstance(doc, dict):
        return None, None
    error = doc.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) else None,
        )
    # Router misses answer {"message", "error": "Not Found", "statusCode"}.
    message = doc.get("message", error)
    return None, message if isinstance(message, str) else None


def _balance_of(doc: object, status: int) -> Decimal:
    provider = ONECLICKDZ
    if not isinstance(doc, dict) or doc.get("success") is not True:
        raise ProviderResponseError(
            "not a success envelope", provider=provider, status=status
        )
    data = doc.get("data")
    if not isinstance(data, dict) or "balance" not in data:
        raise ProviderResponseError(
            "success envelope without data.balance",
            provider=provider,
            status=status,
        )
    balance = data["balance"]
    # bool is an int subclass, and "123" is not a JSON number.
    if isinstance(balance, bool) or not isinstance(balance, int | Decimal):
        raise ProviderResponseError(
            f"data.balance is a JSON {_json_type(balance)}, not a number",
            provider=provider,
            status=status,
        )
    return _checked(Decimal(balance), provider, status)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_oneclickdz_balance(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> Decimal:
    """
    Read the answer to OneClickDZ ``GET /v3/account/balance``.

    The error code decides first (403 means many things on this API); bodies
    without one (router misses, proxy HTML pages) are classified by status.

    Args:
        status: The HTTP status.
        body: The body, possibly cut short by the caller's size cap.
        retry_after: The ``Retry-After`` header, if any.
        redact: Secrets to mask should the provider echo them.
        now: The current time, for an HTTP-date ``Retry-After``.

    Returns:
        The exact balance in DZD.

    Raises:
        ProviderAuthError: The key or the caller's IP was refused.
        ProviderResponseError: An answer that holds no readable balance.
        BalanceUnavailable: A transient failure (429, 5xx...).
    """
    provider = ONECLICKDZ
    doc = _load_json(body)
    code, message = _error_of(doc)
    wait = parse_retry_after(retry_after, now=now)
    text = clean_text(message or "", redact) or None

    if code in ONECLICKDZ_AUTH_CODES:
        if code == "IP_BLOCKED" and wait is None:
            wait = ONECLICKDZ_IP_BLOCK_SECONDS
        raise ProviderAuthError(
            f"{text or 'key refused'} (HTTP {status})",
            provider=provider,
            code=code,
            status=status,
            retry_after=wait,
        )
    if code in ONECLICKDZ_TRANSIENT_CODES:
        raise BalanceUnavailable(
            f"{code}: {text or 'try again later'} (HTTP {status})",
            provider=provider,
            status=status,
            retry_after=wait,
        )
    if status == 200 and code is None:
        if doc is _NOT_JSON:
            raise ProviderResponseError(
                "body is not valid JSON", provider=provider, status=status
            )
        return _balance_of(doc, status)

    detail = f"{code}: " if code else ""
    reason = f"{detail}{text or 'unexpected answer'} (HTTP {status})"
    if status >= 500 or status in _STATUS_TRANSIENT:
        raise BalanceUnavailable(
            reason, provider=provider, status=status, retry_after=wait
        )
    if status in _STATUS_AUTH:
        raise ProviderAuthError(
            reason, provider=provider, code=code, status=status, retry_after=wait
        )
    raise ProviderResponseError(reason, provider=provider, code=code, status=status)


# --- Clickatell ---------------------------------------------------------------


def parse_clickatell_err(line: str) -> tuple[int, str] | None:
    """
    Split a Clickatell ``ERR: <code>, <text>`` line.

    The first comma separates the code from the text; a trailing
    ``To: <msisdn>`` stays in the text.

    Returns:
        ``(code, text)`` with the code as an `int` (``001`` and ``0001`` are
        both 1), or `None` when *line* is not an ``ERR:`` line with a numeric
        code.
    """
    match = _ERR.match(line)
    if match is None:
        return None
    code, _, text = match[1].partition(",")
    code = code.strip()
    if not _CODE.fullmatch(code):
        return None
    return int(code), text.strip()


def parse_clickatell_balance(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> Decimal:
    """
    Read the answer to Clickatell legacy ``/http/getbalance``.

    Clickatell answers HTTP 200 for both balances and ``ERR:`` lines, so any
    other status is transport trouble. The first non-empty line is either
    ``Credit: <n>`` or ``Credits: <n>`` (any case, any decimals, surrounding
    whitespace) or an ``ERR:`` line.

    Args:
        status: The HTTP status.
        body: The body, possibly cut short by the caller's size cap.
        retry_after: The ``Retry-After`` header, if any.
        redact: Secrets to mask should the provider echo them.
        now: The current time, for an HTTP-date ``Retry-After``.

    Returns:
        The exact balance in credits.

    Raises:
        ProviderAuthError: ``ERR`` 001, 002, 004, 007 or 108.
        ProviderResponseError: Any other ``ERR`` code, or an unreadable body.
        BalanceUnavailable: A non-200 status or ``ERR: 901``.
    """
    provider = CLICKATELL
    if status != 200:
        raise BalanceUnavailable(
            f"unexpected HTTP {status}",
            provider=provider,
            status=status,
            retry_after=parse_retry_after(retry_after, now=now),
        )
    text = body.decode("utf-8", errors="replace")
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise ProviderResponseError("empty body", provider=provider, status=status)

    match = _CREDIT.match(line)
    if match is not None:
        return _checked(Decimal(match[1]), provider, status)

    err = parse_clickatell_err(line)
    if err is None:
        raise ProviderResponseError(
            f"unexpected body: {clean_text(line, redact)!r}",
            provider=provider,
            status=status,
        )
    number, message = err
    code = f"{number:03d}"
    reason = f"{clean_text(message, redact) or 'no description'}"
    if number in CLICKATELL_AUTH_CODES:
        raise ProviderAuthError(reason, provider=provider, code=code, status=status)
    if number in CLICKATELL_TRANSIENT_CODES:
        raise BalanceUnavailable(
            f"ERR {code}: {reason}",
            provider=provider,
            status=status,
            retry_after=parse_retry_after(retry_after, now=now),
        )
    raise ProviderResponseError(reason, provider=provider, code=code, status=status)
