"""
What the provider modules share: the `Secret` credential type, argument
checks and the one spelling of a base URL, the bounded request with its
capped body read, ``Retry-After`` parsing, and cleaning provider text for
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
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast, final

import aiohttp
from yarl import URL

from guard.errors import BalanceUnavailable, ProviderResponseError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from decimal import Decimal

    import attrs

__all__ = [
    "BODY_LIMIT",
    "MAX_BALANCE_DIGITS",
    "Secret",
    "account_digest",
    "check_credential",
    "check_timeout",
    "checked_balance",
    "clean_text",
    "normalise_base_url",
    "parse_retry_after",
    "read_capped",
    "request",
    "to_secret",
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


# --- Secrets -------------------------------------------------------------------

_MASK: Final = "[secure]"
_JSON_SHORT: Final = {'"': '\\"', "\\": "\\\\", "/": "\\/"}
_HTML_NAMED: Final = {
    "&": ("&amp;",),
    "<": ("&lt;",),
    ">": ("&gt;",),
    '"': ("&quot;",),
    "'": ("&apos;",),
}


def _hex(digits: str) -> str:
    # Escapes may spell hex digits in either case.
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in digits)


def _spellings(char: str) -> str:
    """
    A regex for *char* in any of the escapes a body may give it.
    """
    utf8 = char.encode()
    forms = [
        re.escape(char),
        # Percent- and form-encoding, whatever set of characters the
        # encoder leaves alone (quote, quote_plus, encodeURIComponent...).
        "".join(f"%{_hex(f'{byte:02x}')}" for byte in utf8),
        # JSON: \uXXXX (a surrogate pair beyond the BMP).
        _json_units(char),
        # HTML: a decimal or hex character reference, or a named one.
        f"&#0*{ord(char)};",
        f"&#[xX]0*{_hex(f'{ord(char):x}')};",
    ]
    if char == " ":
        forms.append(r"\+")  # form-encoding
    if char in _JSON_SHORT:
        forms.append(re.escape(_JSON_SHORT[char]))
    forms.extend(_HTML_NAMED.get(char, ()))
    return f"(?:{'|'.join(forms)})"


def _json_units(char: str) -> str:
    encoded = char.encode("utf-16-be")
    units = [
        int.from_bytes(encoded[i : i + 2], "big") for i in range(0, len(encoded), 2)
    ]
    return "".join(f"\\\\u{_hex(f'{unit:04x}')}" for unit in units)


@final
class Secret:
    """
    A credential that shows as ``[secure]`` in every repr, str, format, log
    line and pickle attempt, so that error reporters capturing frame locals
    (Sentry, ``traceback.TracebackException(capture_locals=True)``) never
    ship it.

    guard unwraps it only where a request is built. Two secrets are equal
    when their values are (compared in constant time); a secret never equals
    a str, so ``==`` is no oracle for guessing one.

    Args:
        value: The credential.

    .. versionadded:: 0.2
    """

    __slots__ = ("_pattern", "_value")

    _value: str
    _pattern: re.Pattern[str] | None

    def __init__(self, value: str) -> None:
        if not isinstance(cast("object", value), str):
            msg = f"Secret takes a str, not {type(value).__name__}"
            raise TypeError(msg)
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_pattern", None)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        msg = "Secret is immutable"
        raise AttributeError(msg)

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> NoReturn:
        # SECURITY: a pickle is bytes anyone holding it can read.
        msg = "a guard Secret (and a provider holding one) cannot be pickled"
        raise TypeError(msg)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: object) -> Secret:
        return self

    def reveal(self) -> str:
        """
        The credential itself. Call it only where it goes on the wire.
        """
        return self._value

    def matches(self, given: str | None) -> bool:
        """
        Tell whether *given* is this credential, in constant time.
        """
        return given is not None and hmac.compare_digest(
            given.encode(), self._value.encode()
        )

    def mask(self, text: str) -> str:
        """
        Replace every spelling of this credential in *text* by ``[secure]``.

        A provider or proxy may echo what it was sent in any of the
        encodings a body uses: literal, form-encoded (``+`` or ``%20``),
        percent-encoded (either case of hex), JSON-escaped (with or without
        ``ensure_ascii``, ``/`` escaped or not) or HTML-escaped.
        """
        if not self._value:
            return text
        pattern = self._pattern
        if pattern is None:
            pattern = _pattern_of(self._value)
            object.__setattr__(self, "_pattern", pattern)
        return pattern.sub(_MASK, text)


def _pattern_of(value: str) -> re.Pattern[str]:
    # Each character in any of its spellings: this covers every encoder's
    # choice of what to leave unescaped, and either case of hex digits.
    return re.compile("".join(_spellings(char) for char in value))


def to_secret(value: str | Secret) -> Secret:
    """
    Wrap a str credential in a `Secret`; anything else is left for the
    field's validator to refuse by name.
    """
    return Secret(value) if isinstance(value, str) else value


# --- Construction checks -------------------------------------------------------


def check_credential(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    # SECURITY: messages name the parameter and never echo the value.
    name = attribute.name
    if isinstance(value, Secret):
        problem = _credential_problem(value)
    elif isinstance(value, str):
        problem = _text_problem(value)
    else:
        msg = f"{name} must be a str, not {type(value).__name__}"
        raise TypeError(msg)
    if problem is not None:
        msg = f"{name} must not {problem}"
        raise ValueError(msg)


def _credential_problem(secret: Secret) -> str | None:
    # Kept apart so that a traceback of the ValueError above shows no value.
    return _text_problem(secret.reveal())


def _text_problem(value: str) -> str | None:
    if not value:
        return "be empty"
    if value != value.strip():
        return "start or end with whitespace"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contain control characters"
    return None


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


def account_digest(*parts: str | Secret) -> str:
    """
    24 hex characters naming an account; not reversible.
    """
    # Domain-separated and NUL-joined, so ("ab", "c") and ("a", "bc") differ.
    digest = hashlib.sha256(b"guard.account.v1")
    for part in parts:
        text = part.reveal() if isinstance(part, Secret) else part
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:_ACCOUNT_ID_LENGTH]


# --- The request -------------------------------------------------------------


class _Sealed(str):
    """
    A revealed credential on its way to the wire: a real str for aiohttp,
    masked in the repr that error reporters capture from frame locals.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(_MASK)


def _sealed(fields: Mapping[str, str | Secret]) -> dict[str, str]:
    return {
        name: _Sealed(value.reveal()) if isinstance(value, Secret) else value
        for name, value in fields.items()
    }


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
    redact: tuple[Secret, ...],
    headers: Mapping[str, str | Secret],
    data: Mapping[str, str | Secret] | None = None,
) -> tuple[int, bytes, str | None]:
    """
    Make one request and return ``(status, body, Retry-After)``.

    *headers* and *data* (a form) may hold `Secret` values: they are
    unwrapped here, into strings whose repr stays masked in aiohttp's own
    frames too.

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
            # SECURITY: the one place credentials are unwrapped.
            headers=_sealed(headers),
            data=None if data is None else _sealed(data),
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


def clean_text(text: str, redact: Iterable[Secret] = ()) -> str:
    """
    Make provider-supplied *text* safe for one log line or exception message.

    Every spelling of every secret of *redact* is replaced by ``[secure]``
    (see `Secret.mask`), control characters and runs of whitespace become
    one space, and the result is cut to 200 characters.
    """
    for secret in redact:
        # SECURITY: a provider (or a proxy) may echo what it was sent.
        text = secret.mask(text)
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
