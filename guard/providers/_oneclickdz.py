"""
OneClickDZ (Flexy API v3): its paths and header, how its balance answers
read, and the `OneClickDZ` provider. What its spends cost, and the
client-middleware rules, are in ``_oneclickdz_spends.py``.

Wire details and sources: ``shared/providers.md``, section 1.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs

from guard._balance import Reported
from guard.errors import (
    BalanceUnavailable,
    ProviderAuthError,
    ProviderResponseError,
)

from ._http import (
    Secret,
    account_digest,
    check_credential,
    check_timeout,
    checked_balance,
    clean_text,
    normalise_base_url,
    parse_retry_after,
    request,
    to_secret,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    import aiohttp


__all__ = [
    "AUTH_CODES",
    "BALANCE_PATH",
    "DEFAULT_BASE_URL",
    "GIFT_ORDER_PATH",
    "GIFT_PRODUCT_PATH",
    "INTERNET_PRODUCTS_PATH",
    "INTERNET_SEND_PATH",
    "IP_BLOCK_SECONDS",
    "NAME",
    "OTHER_CODES",
    "OneClickDZ",
    "PLANS_PATH",
    "SEND_PATH",
    "TOKEN_HEADER",
    "TRANSIENT_CODES",
    "VALIDATE_PATH",
    "parse_balance",
    "get_json",
    "parse_envelope",
]

NAME: Final = "oneclickdz"
"""
The provider name, in cache keys, events and errors.
"""

DEFAULT_BASE_URL: Final = "https://api.oneclickdz.com"
BALANCE_PATH: Final = "/v3/account/balance"
SEND_PATH: Final = "/v3/mobile/send"
PLANS_PATH: Final = "/v3/mobile/plans"
INTERNET_SEND_PATH: Final = "/v3/internet/send"
INTERNET_PRODUCTS_PATH: Final = "/v3/internet/products"
GIFT_ORDER_PATH: Final = "/v3/gift-cards/placeOrder"
GIFT_PRODUCT_PATH: Final = "/v3/gift-cards/checkProduct"
VALIDATE_PATH: Final = "/v3/validate"
TOKEN_HEADER: Final = "X-Access-Token"  # noqa: S105 - a header name
"""
The header that carries the key (the docs stress: not ``Authorization``).
"""

AUTH_CODES: Final = frozenset(
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
Error codes that mean the key (or the caller's IP) is refused.
"""

TRANSIENT_CODES: Final = frozenset(
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
Error codes worth retrying.
"""

OTHER_CODES: Final = frozenset(
    {
        "NO_BALANCE",
        "INSUFFICIENT_BALANCE",
        "DUPLICATED_REF",
        "ERR_VALIDATION",
        "NOT_FOUND",
    }
)
"""
Documented error codes that are neither auth nor transient. 403 carries some
of them too, so their code, not the status, decides: a low balance or a
reused ref must not start an auth cooldown.
"""

IP_BLOCK_SECONDS: Final = 900.0
"""
How long OneClickDZ blocks an IP after too many bad keys (documented: 15 min).
"""

_STATUS_TRANSIENT = frozenset({408, 425, 429})
_REQUEST_ID_LIMIT = 100
_STATUS_AUTH = frozenset({401, 403})


# --- Parsing ------------------------------------------------------------------

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


def _balance_of(data: object, meta: object, status: int, rid: str | None) -> Decimal:
    provider = NAME
    if not isinstance(data, dict) or "balance" not in data:
        raise ProviderResponseError(
            "success envelope without data.balance",
            provider=provider,
            status=status,
            request_id=rid,
        )
    balance = data["balance"]
    # bool is an int subclass, and "123" is not a JSON number.
    if isinstance(balance, bool) or not isinstance(balance, int | Decimal):
        raise ProviderResponseError(
            f"data.balance is a JSON {_json_type(balance)}, not a number",
            provider=provider,
            status=status,
            request_id=rid,
        )
    amount = checked_balance(Decimal(balance), provider, status)
    reported_at = _timestamp(meta)
    return amount if reported_at is None else Reported(amount, reported_at)


def _timestamp(meta: object) -> dt.datetime | None:
    # ``meta.timestamp`` is optional, and only recorded: never fail on it.
    stamp = meta.get("timestamp") if isinstance(meta, dict) else None
    if not isinstance(stamp, str):
        return None
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


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


def _request_id(doc: object, redact: Iterable[Secret]) -> str | None:
    # Top level, as the error envelope documents it.
    value = doc.get("requestId") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        return None
    return clean_text(value, redact)[:_REQUEST_ID_LIMIT] or None


def parse_envelope(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[Secret] = (),
    now: dt.datetime | None = None,
) -> tuple[Any, str | None, object]:
    """
    Read any OneClickDZ answer: the ``data`` of a success envelope (an
    object, or a list as one guide shows for products), the ``requestId``
    and the ``meta``, or the error it carries.

    The error code decides first (403 means many things on this API); bodies
    without one (router misses, proxy HTML pages) are classified by status.

    Raises:
        ProviderAuthError: The key or the caller's IP was refused.
        ProviderResponseError: An error code that is neither auth nor
            transient, or an unreadable answer.
        BalanceUnavailable: A transient failure (429, 5xx...).
    """
    provider = NAME
    doc = _load_json(body)
    code, message = _error_of(doc)
    wait = parse_retry_after(retry_after, now=now)
    text = clean_text(message or "", redact) or None
    rid = _request_id(doc, redact)

    if code in AUTH_CODES:
        if code == "IP_BLOCKED" and wait is None:
            wait = IP_BLOCK_SECONDS
        raise ProviderAuthError(
            f"{text or 'key refused'} (HTTP {status})",
            provider=provider,
            code=code,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    if code in TRANSIENT_CODES:
        raise BalanceUnavailable(
            f"{code}: {text or 'try again later'} (HTTP {status})",
            provider=provider,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    if code in OTHER_CODES:
        raise ProviderResponseError(
            f"{code}: {text or 'unexpected answer'} (HTTP {status})",
            provider=provider,
            code=code,
            status=status,
            request_id=rid,
        )
    if status == 200 and code is None:
        if doc is _NOT_JSON:
            raise ProviderResponseError(
                "body is not valid JSON", provider=provider, status=status
            )
        if not isinstance(doc, dict) or doc.get("success") is not True:
            raise ProviderResponseError(
                "not a success envelope",
                provider=provider,
                status=status,
                request_id=rid,
            )
        data = doc.get("data")
        if not isinstance(data, dict | list):
            raise ProviderResponseError(
                "success envelope without data",
                provider=provider,
                status=status,
                request_id=rid,
            )
        return data, rid, doc.get("meta")

    if code is not None:
        # SECURITY: an unknown code is provider text too; it may echo a key.
        code = clean_text(code, redact)
    detail = f"{code}: " if code else ""
    reason = f"{detail}{text or 'unexpected answer'} (HTTP {status})"
    if status >= 500 or status in _STATUS_TRANSIENT:
        raise BalanceUnavailable(
            reason, provider=provider, status=status, retry_after=wait, request_id=rid
        )
    if status in _STATUS_AUTH:
        raise ProviderAuthError(
            reason,
            provider=provider,
            code=code,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    raise ProviderResponseError(
        reason, provider=provider, code=code, status=status, request_id=rid
    )


def parse_balance(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[Secret] = (),
    now: dt.datetime | None = None,
) -> Decimal:
    """
    Read the answer to OneClickDZ ``GET /v3/account/balance``.

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
    data, rid, meta = parse_envelope(
        status, body, retry_after=retry_after, redact=redact, now=now
    )
    return _balance_of(data, meta, status, rid)


# --- The provider -------------------------------------------------------------


@attrs.define(frozen=True)
class OneClickDZ:
    """
    A OneClickDZ (Flexy API v3) account, billed in Algerian dinars.

    Args:
        api_key: The ``X-Access-Token`` key (sandbox or production), a str
            or a `Secret`; kept as a `Secret` (``api_key.reveal()`` gives it
            back), never shown in a repr or message.
        base_url: Where the API lives; point it at the emulator in tests.
        timeout: Seconds one balance request may take in total.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: *api_key* is empty or malformed, *base_url* is not an
            http(s) URL, or *timeout* is not positive.
    """

    api_key: Secret = attrs.field(
        repr=False, converter=to_secret, validator=check_credential
    )
    base_url: str = attrs.field(
        default=DEFAULT_BASE_URL,
        kw_only=True,
        converter=normalise_base_url,
    )
    timeout: float = attrs.field(default=10.0, kw_only=True, validator=check_timeout)

    @property
    def name(self) -> str:
        """
        ``"oneclickdz"``.
        """
        return NAME

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
        return account_digest(NAME, self.base_url, self.api_key)

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
        status, body, retry_after = await request(
            NAME,
            session,
            "GET",
            f"{self.base_url}{BALANCE_PATH}",
            limit=self.timeout,
            redact=redact,
            headers={TOKEN_HEADER: self.api_key, "Accept": "application/json"},
        )
        return parse_balance(status, body, retry_after=retry_after, redact=redact)

    async def key_type(self, session: aiohttp.ClientSession) -> str:
        """
        Ask ``GET /v3/validate`` whether the key is a ``"SANDBOX"`` key (its
        sends never move money) or a ``"PRODUCTION"`` one.

        Raises:
            guard.ProviderAuthError: The key or the caller's IP was refused.
            guard.ProviderResponseError: The answer does not say.
            guard.BalanceUnavailable: Network trouble, timeout, 429 or 5xx.

        .. versionadded:: 0.2
        """
        data = await get_json(self, session, VALIDATE_PATH)
        key = data.get("apiKey") if isinstance(data, dict) else None
        kind = key.get("type") if isinstance(key, dict) else None
        if kind not in ("SANDBOX", "PRODUCTION"):
            raise ProviderResponseError(
                "data.apiKey.type is not SANDBOX or PRODUCTION",
                provider=NAME,
                status=200,
            )
        return str(kind)


# --- Catalogues -----------------------------------------------------------------


async def get_json(
    provider: OneClickDZ, session: aiohttp.ClientSession, path: str
) -> Any:
    """
    ``GET`` *path* from the provider and return the envelope's ``data``.
    """
    redact = (provider.api_key,)
    status, body, retry_after = await request(
        NAME,
        session,
        "GET",
        f"{provider.base_url}{path}",
        limit=provider.timeout,
        redact=redact,
        headers={TOKEN_HEADER: provider.api_key, "Accept": "application/json"},
    )
    data, _, _ = parse_envelope(status, body, retry_after=retry_after, redact=redact)
    return data
