"""
Clickatell's legacy HTTP API: its paths and form fields, how its balance
answers read, the `Clickatell` provider, and the client-middleware rule for
``sendmsg``.

SMS parts are counted by `guard._sms`, which the emulator shares: it is
carrier knowledge (GSM 03.38), not Clickatell's wire format.

Wire details and sources: ``shared/providers.md``, section 2.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs

from guard._money import to_amount
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
    from collections.abc import Iterable

    import aiohttp

    from guard._aiohttp_client import SpendAmount, SpendRequest, SpendRule
    from guard._guard import Settle
    from guard.typing import AmountLike

__all__ = [
    "AUTH_CODES",
    "BALANCE_PATH",
    "Clickatell",
    "DEFAULT_BASE_URL",
    "NAME",
    "SENDMSG_PATH",
    "TRANSIENT_CODES",
    "clickatell_rules",
    "parse_balance",
    "parse_err",
]

NAME: Final = "clickatell"
"""
The provider name, in cache keys, events and errors.
"""

DEFAULT_BASE_URL: Final = "https://api.clickatell.com"
BALANCE_PATH: Final = "/http/getbalance"
SENDMSG_PATH: Final = "/http/sendmsg"

AUTH_CODES: Final = frozenset({1, 2, 4, 7, 108})
"""
Legacy ``ERR:`` codes that refuse the credentials or account.
"""

TRANSIENT_CODES: Final = frozenset({3, 130, 901})
"""
Legacy ``ERR:`` codes worth retrying: 003 session expired (guard sends its
credentials with every request, so a retry authenticates afresh), 130 MT
limit reached until a time, 901 internal error.
"""

_CREDIT = re.compile(
    r"^\s*Credits?\s*:\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$", re.ASCII | re.IGNORECASE
)
_ERR = re.compile(r"^\s*ERR\s*:\s*(.*)$", re.ASCII | re.IGNORECASE | re.DOTALL)
_CODE = re.compile(r"[0-9]{1,6}", re.ASCII)
_UNTIL = re.compile(r"\buntil\s+([0-9]{1,12})\b", re.ASCII | re.IGNORECASE)


# --- Parsing ------------------------------------------------------------------


def parse_err(line: str) -> tuple[int, str] | None:
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


def _wait(
    message: str, retry_after: str | None, now: dt.datetime | None
) -> float | None:
    # ERR 130 says "until <UNIX timestamp>"; the engine caps what it waits.
    until = _UNTIL.search(message)
    if until is None:
        return parse_retry_after(retry_after, now=now)
    now = now if now is not None else dt.datetime.now(dt.UTC)
    return max(0.0, float(until[1]) - now.timestamp())


def parse_balance(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    redact: Iterable[Secret] = (),
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
    provider = NAME
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
        return checked_balance(Decimal(match[1]), provider, status)

    err = parse_err(line)
    if err is None:
        raise ProviderResponseError(
            f"unexpected body: {clean_text(line, redact)!r}",
            provider=provider,
            status=status,
        )
    number, message = err
    code = f"{number:03d}"
    reason = f"{clean_text(message, redact) or 'no description'}"
    if number in AUTH_CODES:
        raise ProviderAuthError(reason, provider=provider, code=code, status=status)
    if number in TRANSIENT_CODES:
        raise BalanceUnavailable(
            f"ERR {code}: {reason}",
            provider=provider,
            status=status,
            retry_after=_wait(message, retry_after, now),
        )
    raise ProviderResponseError(reason, provider=provider, code=code, status=status)


# --- The provider -------------------------------------------------------------


@attrs.define(frozen=True)
class Clickatell:
    """
    A Clickatell account on the legacy HTTP API, counted in credits.

    Credentials go in a POST form body, never in the URL.

    Args:
        user: The Developers' Central user name.
        password: The account password, a str or a `Secret`; kept as a
            `Secret`, never shown.
        api_id: The HTTP API id, a str or a `Secret`; kept as a `Secret`,
            never shown.
        base_url: Where the API lives; point it at the emulator in tests.
        timeout: Seconds one balance request may take in total.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A credential is empty or malformed, *base_url* is not an
            http(s) URL, or *timeout* is not positive.
    """

    user: str = attrs.field(validator=check_credential)
    password: Secret = attrs.field(
        repr=False, converter=to_secret, validator=check_credential
    )
    api_id: Secret = attrs.field(
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
        ``"clickatell"``.
        """
        return NAME

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
        return account_digest(NAME, self.base_url, self.user, self.api_id)

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
        status, body, retry_after = await request(
            NAME,
            session,
            "POST",
            f"{self.base_url}{BALANCE_PATH}",
            limit=self.timeout,
            redact=redact,
            headers={"Accept": "text/plain"},
            # SECURITY: a form body, so credentials stay out of URLs and logs.
            data={"user": self.user, "password": self.password, "api_id": self.api_id},
        )
        return parse_balance(status, body, retry_after=retry_after, redact=redact)


# --- The client-middleware rule -----------------------------------------------


def _values(request: SpendRequest, name: str) -> list[str]:
    """
    Every value of parameter *name*, query and form, its name in any case.

    Erring on the guarded side: a server may read the name in any case and
    the first or the last of duplicates, so guard reads them all.
    """
    return [v for k, v in request.params().items() if k.casefold() == name]


def _one(request: SpendRequest, name: str) -> str | None:
    values = set(_values(request, name))
    if len(values) > 1:
        # SECURITY: which account the API charges is not ours to guess.
        msg = f"Clickatell sendmsg with several different {name!r} values: refused"
        raise ValueError(msg)
    return values.pop() if values else None


def _find(
    accounts: AccountIndex[Clickatell], request: SpendRequest
) -> Clickatell | None:
    user, api_id = _one(request, "user"), _one(request, "api_id")
    if user is None and api_id is None:
        # A session_id send names no account: the only one at this URL it is.
        return accounts.only(request.url)
    if user is None or api_id is None:
        return None
    return accounts.find(request.url, user, api_id)


_account = IndexedMatcher(Clickatell, lambda p: (p.user, p.api_id), _find)


def _amount(credits_per_part: Decimal) -> SpendAmount:
    def amount(request: SpendRequest) -> AmountLike:
        recipients = [
            n for to in _values(request, "to") for n in to.split(",") if n.strip()
        ]
        texts = _values(request, "text")
        if not recipients or not texts:
            return 0  # Refused by Clickatell without a charge.
        parts = max(sms_parts(text) for text in texts)
        return len(recipients) * parts * credits_per_part

    return amount


def clickatell_rules(
    *, credits_per_part: AmountLike = 1, settle: Settle | None = None
) -> tuple[SpendRule, ...]:
    """
    The rule for Clickatell legacy ``sendmsg`` (GET query or POST form):
    recipients x SMS parts of ``text`` x *credits_per_part*, on the
    `Clickatell` provider whose *base_url*, ``user`` and ``api_id`` the
    request uses.

    Parts are counted as carriers do: GSM-7 (160, or 153 per part) or UCS-2
    (70, or 67 per part). A ``unicode=1`` hex text is counted as sent, which
    overestimates it.
    """
    # Imported here: the middleware module imports this one for its defaults.
    from guard._aiohttp_client import SpendRule

    per_part = to_amount(credits_per_part, name="credits_per_part")
    return (
        SpendRule(
            ("GET", "POST"),
            SENDMSG_PATH,
            _account,
            _amount(per_part),
            settle=settle,
        ),
    )
