"""
Clickatell's current API (the Platform, "One API"): its paths and header,
how its balance answers read, the `ClickatellPlatform` provider, and the
client-middleware rule for ``POST /messages``.

Wire details and sources: ``shared/providers.md``, sections 2.3 and 6.1.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs

from guard._money import MONEY, to_amount
from guard._sms import sms_parts
from guard.errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError

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
from ._matching import AccountIndex, IndexedMatcher

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable

    import aiohttp

    from guard._aiohttp_client import SpendAmount, SpendRequest, SpendRule
    from guard._guard import Settle
    from guard.typing import AmountLike

__all__ = [
    "AUTH_CODES",
    "BALANCE_PATH",
    "ClickatellPlatform",
    "DEFAULT_BASE_URL",
    "MESSAGES_PATH",
    "NAME",
    "TRANSIENT_CODES",
    "clickatell_platform_rules",
    "parse_balance",
]

NAME: Final = "clickatell-platform"
"""
The provider name, in cache keys, events and errors.
"""

DEFAULT_BASE_URL: Final = "https://platform.clickatell.com"
BALANCE_PATH: Final = "/public-client/balance"
MESSAGES_PATH: Final = "/messages"

AUTH_CODES: Final = frozenset({1, 2, 3, 7, 46})
"""
One API error codes that refuse the key or the account: 1 invalid or
missing key, 2 account not active, 3 integration not active, 7 IP not
approved, 46 demo access expired.
"""

TRANSIENT_CODES: Final = frozenset({18, 19, 43})
"""
One API error codes worth retrying: 18 internal error, 19 "please retry",
43 rate limit.
"""

_STATUS_AUTH = frozenset({401, 403})
_STATUS_TRANSIENT = frozenset({408, 425, 429})
_REQUEST_ID_LIMIT = 100


# --- Parsing ------------------------------------------------------------------

_NOT_JSON = object()


def _reject_constant(name: str) -> NoReturn:
    msg = f"non-standard JSON constant {name}"
    raise ValueError(msg)


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _code_of(value: object) -> int | None:
    # The table's codes are numbers; some bodies write them as strings.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and value == value.to_integral()
    ):
        return int(value)
    return None


def _error_of(doc: object) -> tuple[bool, int | None, str | None]:
    """
    Return ``(is_error, code, text)``: whether the body carries an error
    (an ``error`` or ``errorCode`` member, at the top or in a ``data`` or
    ``messages[]`` member), its code and its text.
    """
    if not isinstance(doc, dict):
        return False, None, None
    places: list[dict[str, object]] = [doc]
    messages = doc.get("messages")
    if isinstance(messages, list):
        places.extend(m for m in messages if isinstance(m, dict))
    for place in places:
        error = place.get("error")
        code_field = place.get("errorCode")
        if error in (None, False, "") and code_field is None:
            continue
        text: object = place.get("errorDescription") or error
        code = _code_of(code_field)
        if isinstance(error, dict):
            code = code if code is not None else _code_of(error.get("code"))
            text = error.get("description") or error.get("message")
        elif code is None:
            code = _code_of(error)
        return True, code, text if isinstance(text, str) else None
    return False, None, None


def _request_id(doc: object, redact: Iterable[Secret]) -> str | None:
    if not isinstance(doc, dict):
        return None
    value = doc.get("requestId") or doc.get("apiMessageId")
    if not isinstance(value, str) or not value:
        return None
    return clean_text(value, redact)[:_REQUEST_ID_LIMIT] or None


def parse_balance(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[Secret] = (),
    now: dt.datetime | None = None,
) -> tuple[Decimal, str]:
    """
    Read the answer to Clickatell Platform ``GET /public-client/balance``.

    The status alone is never trusted: users report errors inside 200 and
    202 replies, so a body with an ``error`` or ``errorCode``, or without a
    finite numeric ``balance`` and a ``currency``, is an error on any
    status.

    Args:
        status: The HTTP status.
        body: The body, possibly cut short by the caller's size cap.
        retry_after: The ``Retry-After`` header, if any.
        redact: Secrets to mask should the provider echo them.
        now: The current time, for an HTTP-date ``Retry-After``.

    Returns:
        ``(balance, currency)``: the exact balance in the account's billing
        currency, and that currency as the provider wrote it.

    Raises:
        ProviderAuthError: Codes 1, 2, 3, 7, 46; 401 or 403 without a code.
        BalanceUnavailable: Codes 18, 19, 43; 429 or 5xx without a code.
        ProviderResponseError: Anything else that holds no balance.
    """
    provider = NAME
    doc = _load_json(body)
    is_error, code, message = _error_of(doc)
    wait = parse_retry_after(retry_after, now=now)
    text = clean_text(message or "", redact) or None
    rid = _request_id(doc, redact)
    code_text = None if code is None else str(code)

    if code in AUTH_CODES:
        raise ProviderAuthError(
            f"{text or 'key refused'} (HTTP {status})",
            provider=provider,
            code=code_text,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    if code in TRANSIENT_CODES:
        raise BalanceUnavailable(
            f"error {code}: {text or 'try again later'} (HTTP {status})",
            provider=provider,
            status=status,
            retry_after=wait,
            request_id=rid,
        )
    if 200 <= status < 300 and not is_error:
        return _balance_of(doc, status)

    detail = f"error {code}: " if code is not None else ""
    reason = f"{detail}{text or 'unexpected answer'} (HTTP {status})"
    if code is None and (status >= 500 or status in _STATUS_TRANSIENT):
        raise BalanceUnavailable(
            reason, provider=provider, status=status, retry_after=wait, request_id=rid
        )
    if code is None and status in _STATUS_AUTH:
        raise ProviderAuthError(
            reason, provider=provider, status=status, retry_after=wait, request_id=rid
        )
    raise ProviderResponseError(
        reason, provider=provider, code=code_text, status=status, request_id=rid
    )


def _balance_of(doc: object, status: int) -> tuple[Decimal, str]:
    provider = NAME
    if doc is _NOT_JSON or not isinstance(doc, dict):
        raise ProviderResponseError(
            "body is not a JSON object", provider=provider, status=status
        )
    balance = doc.get("balance")
    if isinstance(balance, bool) or not isinstance(balance, int | Decimal):
        raise ProviderResponseError(
            "body has no numeric balance", provider=provider, status=status
        )
    currency = doc.get("currency")
    if (
        not isinstance(currency, str)
        or not currency.strip()
        or len(currency) > 16
        or not currency.isprintable()
    ):
        raise ProviderResponseError(
            "body has no currency", provider=provider, status=status
        )
    return checked_balance(Decimal(balance), provider, status), currency.strip()


def _check_currency(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        msg = f"billing_currency must be a str, not {type(value).__name__}"
        raise TypeError(msg)
    if not value or value != value.strip() or not value.isprintable():
        msg = f"billing_currency must be a code such as 'ZAR', not {value!r}"
        raise ValueError(msg)


# --- The provider -------------------------------------------------------------


@attrs.define(frozen=True)
class ClickatellPlatform:
    """
    A Clickatell account on the Platform ("One API"), read with its API key;
    its balance is money in the account's billing currency.

    Args:
        api_key: The Platform API key, a str or a `Secret`; kept as a
            `Secret`, never shown. It goes in ``Authorization`` as is.
        billing_currency: The account's billing currency, such as
            ``"ZAR"``, if you want it checked: a balance answered in another
            one is then refused. None (the default): `currency` is whatever
            the provider answers.
        base_url: Where the API lives; point it at the emulator in tests.
        timeout: Seconds one balance request may take in total.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: *api_key* or *currency* is empty or malformed,
            *base_url* is not an http(s) URL, or *timeout* is not positive.

    .. versionadded:: 0.2
    """

    api_key: Secret = attrs.field(
        repr=False, converter=to_secret, validator=check_credential
    )
    billing_currency: str | None = attrs.field(
        default=None, kw_only=True, validator=_check_currency
    )
    base_url: str = attrs.field(
        default=DEFAULT_BASE_URL,
        kw_only=True,
        converter=normalise_base_url,
    )
    timeout: float = attrs.field(default=10.0, kw_only=True, validator=check_timeout)
    # The currency the last balance came in: not part of the account's
    # identity, so kept out of eq, hash and repr.
    _seen: list[str] = attrs.field(
        factory=list, init=False, eq=False, hash=False, repr=False
    )

    @property
    def name(self) -> str:
        """
        ``"clickatell-platform"``.
        """
        return NAME

    @property
    def currency(self) -> str:
        """
        The billing currency: *billing_currency*, else the one the last
        balance answered came in (``"unknown"`` before the first).
        """
        if self.billing_currency is not None:
            return self.billing_currency
        return self._seen[-1] if self._seen else "unknown"

    @property
    def account_id(self) -> str:
        """
        24 hex characters identifying the key at *base_url*; not reversible.
        """
        return account_digest(NAME, self.base_url, self.api_key)

    async def fetch_balance(self, session: aiohttp.ClientSession) -> Decimal:
        """
        Ask ``GET /public-client/balance`` for the balance, once.

        Raises:
            guard.ProviderAuthError: The key or account was refused.
            guard.ProviderResponseError: The answer holds no readable
                balance, or one in another currency than *currency*.
            guard.BalanceUnavailable: Network trouble, timeout, 429, 5xx or
                a code that says to retry.
        """
        amount, currency = await self.fetch_balance_and_currency(session)
        expected = self.billing_currency
        if expected is not None and currency.upper() != expected.upper():
            raise ProviderResponseError(
                f"balance is in {clean_text(currency)}, not {expected}",
                provider=NAME,
            )
        if not self._seen or self._seen[-1] != currency:
            self._seen[:] = [currency]
        return amount

    async def fetch_balance_and_currency(
        self, session: aiohttp.ClientSession
    ) -> tuple[Decimal, str]:
        """
        Ask for the balance and the currency it is in, once.
        """
        redact = (self.api_key,)
        status, body, retry_after = await request(
            NAME,
            session,
            "GET",
            f"{self.base_url}{BALANCE_PATH}",
            limit=self.timeout,
            redact=redact,
            # The raw key, no scheme: as the Platform documents it.
            headers={"Authorization": self.api_key, "Accept": "application/json"},
        )
        return parse_balance(status, body, retry_after=retry_after, redact=redact)


# --- The client-middleware rule -----------------------------------------------


def _find(
    accounts: AccountIndex[ClickatellPlatform], request: SpendRequest
) -> ClickatellPlatform | None:
    keys = {str(k).strip() for k in request.headers.getall("Authorization", ())}
    if len(keys) > 1:
        # SECURITY: which one the API reads is not ours to guess.
        msg = "Clickatell Platform send with several Authorization headers: refused"
        raise ValueError(msg)
    return accounts.find(request.url, keys.pop()) if keys else None


_account = IndexedMatcher(ClickatellPlatform, lambda p: (p.api_key,), _find)


def _amount(price_per_part: Decimal) -> SpendAmount:
    def amount(request: SpendRequest) -> AmountLike:
        try:
            doc = request.json()
        except (ValueError, RecursionError):
            raise ValueError(
                "Clickatell Platform send: the body is not JSON, so guard "
                "cannot read what it spends"
            ) from None
        messages = doc.get("messages") if isinstance(doc, dict) else None
        if not isinstance(messages, list):
            messages = [doc]
        total = 0
        for message in messages:
            if not isinstance(message, dict):
                raise ValueError(
                    "Clickatell Platform send: a message is not a JSON object"
                )
            to = message.get("to")
            recipients = [to] if isinstance(to, str) else to
            content = message.get("content", message.get("text"))
            if not isinstance(recipients, list) or not isinstance(content, str):
                # Refused by Clickatell without a charge.
                continue
            count = sum(1 for r in recipients if isinstance(r, str) and r.strip())
            total += count * sms_parts(content)
        return MONEY.multiply(Decimal(total), price_per_part)

    return amount


def clickatell_platform_rules(
    *, price_per_part: AmountLike = 1, settle: Settle | None = None
) -> tuple[SpendRule, ...]:
    """
    The rule for Clickatell Platform ``POST /messages``: recipients x SMS
    parts of ``content`` x *price_per_part* (in the account's billing
    currency), on the `ClickatellPlatform` whose *base_url* and
    ``Authorization`` key the request uses.

    A body is one message (``{"to": [...], "content": ...}``) or several
    (``{"messages": [...]}``); parts are counted as for the legacy API.

    .. versionadded:: 0.2
    """
    from guard._aiohttp_client import SpendRule

    per_part = to_amount(price_per_part, name="price_per_part")
    return (
        SpendRule("POST", MESSAGES_PATH, _account, _amount(per_part), settle=settle),
    )
