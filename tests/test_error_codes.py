"""
The documented provider error codes, transcribed by hand from
``shared/providers.md`` (OneClickDZ: section 1.3; Clickatell legacy HTTP:
section 2.2; Clickatell Platform: sections 2.3 and 6.1), walked against the
parsers.

SECURITY/correctness: this table is deliberately *not* built from guard's own
code sets, nor from the emulator: a wrong entry there must fail here, not be
copied into the expectation.
"""

from __future__ import annotations

import json

import pytest

from guard.errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError
from guard.providers._clickatell import parse_balance as parse_clickatell_balance
from guard.providers._clickatell_platform import (
    parse_balance as parse_platform_balance,
)
from guard.providers._oneclickdz import parse_balance as parse_oneclickdz_balance

AUTH = ProviderAuthError
TRANSIENT = BalanceUnavailable  # exactly this class, not a subclass
OTHER = ProviderResponseError

# (code, HTTP status as documented, guard class)
ONECLICKDZ_CODES = [
    # Key layer: "auth failure", never retried.
    ("MISSING_ACCESS_TOKEN", 401, AUTH),
    ("MISSING_ACCESS_TOKEN", 400, AUTH),  # [conflict]: 400 per validate-token
    ("INVALID_ACCESS_TOKEN", 401, AUTH),
    ("ERR_AUTH", 401, AUTH),
    ("IP_BLOCKED", 403, AUTH),
    ("IP_NOT_ALLOWED", 403, AUTH),
    ("API_DISABLED", 403, AUTH),
    # 403 is overloaded: "branch on error.code, never on status alone".
    # Insufficient funds and a duplicate ref are neither auth nor transient.
    ("NO_BALANCE", 403, OTHER),
    ("INSUFFICIENT_BALANCE", 403, OTHER),
    ("DUPLICATED_REF", 403, OTHER),
    ("ERR_VALIDATION", 400, OTHER),
    ("NOT_FOUND", 404, OTHER),
    # Transient: retried, honouring Retry-After.
    ("RATE_LIMIT_EXCEEDED", 429, TRANSIENT),
    ("INTERNAL_SERVER_ERROR", 500, TRANSIENT),
    ("INTERNAL_ERROR", 500, TRANSIENT),
    ("SERVICE_UNAVAILABLE", 503, TRANSIENT),
    # "must not be read as auth failure"
    ("AUTH_UNAVAILABLE", 503, TRANSIENT),
]

# (code, HTTP status: ERR replies come with 200, guard class)
CLICKATELL_CODES = [
    ("001", 200, AUTH),  # Authentication failed
    ("002", 200, AUTH),  # Unknown username or password
    # Session ID expired: "re-authenticate once, then retry (transient)";
    # guard sends credentials with every request, so a retry re-authenticates.
    ("003", 200, TRANSIENT),
    ("004", 200, AUTH),  # Account frozen
    # Missing session ID: "client bug / auth, permanent". guard never sends
    # a session id, so on getbalance it is a client bug, not a refused key.
    ("005", 200, OTHER),
    ("007", 200, AUTH),  # IP lockdown violation
    ("101", 200, OTHER),
    ("102", 200, OTHER),
    ("103", 200, OTHER),
    ("104", 200, OTHER),
    ("105", 200, OTHER),
    ("106", 200, OTHER),
    ("107", 200, OTHER),
    ("108", 200, AUTH),  # Invalid or missing API ID
    ("109", 200, OTHER),
    ("113", 200, OTHER),
    ("114", 200, OTHER),
    ("115", 200, OTHER),
    ("116", 200, OTHER),
    ("120", 200, OTHER),
    ("121", 200, OTHER),
    ("122", 200, OTHER),
    ("123", 200, OTHER),
    ("128", 200, OTHER),
    ("130", 200, TRANSIENT),  # MT limit: "transient until the timestamp"
    ("201", 200, OTHER),
    ("202", 200, OTHER),
    ("301", 200, OTHER),  # No credit left: funds, on a balance call no answer
    ("302", 200, OTHER),
    ("901", 200, TRANSIENT),  # Internal error, "please retry"
]


@pytest.mark.parametrize(("code", "status", "expected"), ONECLICKDZ_CODES)
def test_oneclickdz_documented_codes(
    code: str, status: int, expected: type[BalanceUnavailable]
) -> None:
    """Each documented OneClickDZ error code gets its documented guard class."""
    body = json.dumps(
        {
            "success": False,
            "error": {"code": code, "message": "documented"},
            "requestId": "req_1",
        }
    ).encode()

    with pytest.raises(BalanceUnavailable) as ei:
        parse_oneclickdz_balance(status, body)

    assert expected is type(ei.value)
    assert status == ei.value.status


@pytest.mark.parametrize(("code", "status", "expected"), CLICKATELL_CODES)
def test_clickatell_documented_codes(
    code: str, status: int, expected: type[BalanceUnavailable]
) -> None:
    """Each documented Clickatell legacy ERR code gets its documented guard class."""
    body = f"ERR: {code}, documented\n".encode()

    with pytest.raises(BalanceUnavailable) as ei:
        parse_clickatell_balance(status, body)

    assert expected is type(ei.value)


# Clickatell Platform ("One API") error table, section 6.1 / 2.3:
# (code, HTTP status as documented, guard class). Errors arrive in 2xx
# replies too, so each is also walked with 200 and 202.
PLATFORM_CODES = [
    (1, 401, AUTH),  # invalid or missing key
    (2, 400, AUTH),  # account not active
    (3, 400, AUTH),  # integration not active
    (7, 401, AUTH),  # IP not approved
    (46, 400, AUTH),  # demo access expired
    (18, 500, TRANSIENT),
    (19, 503, TRANSIENT),  # "please retry"
    (43, 400, TRANSIENT),  # rate limit
    # Not auth, not transient: on a balance call, no answer.
    (20, 402, OTHER),  # insufficient balance
    (41, 400, OTHER),  # resource does not exist
    (42, 400, OTHER),  # method not supported
]

# "401 and 403 are auth without a body"; 429 and 5xx transient.
PLATFORM_BARE_STATUSES = [
    (401, AUTH),
    (403, AUTH),
    (429, TRANSIENT),
    (500, TRANSIENT),
    (502, TRANSIENT),
    (503, TRANSIENT),
]


@pytest.mark.parametrize(("code", "status", "expected"), PLATFORM_CODES)
@pytest.mark.parametrize("sent_with", ["documented", 200, 202])
def test_platform_documented_codes(
    code: int,
    status: int,
    expected: type[BalanceUnavailable],
    sent_with: int | str,
) -> None:
    """Each One API error code gets its guard class, on any status."""
    body = json.dumps(
        {"errorCode": code, "error": "documented", "errorDescription": "documented"}
    ).encode()
    answered = status if sent_with == "documented" else int(sent_with)

    with pytest.raises(BalanceUnavailable) as ei:
        parse_platform_balance(answered, body)

    assert expected is type(ei.value)
    assert answered == ei.value.status


@pytest.mark.parametrize(("status", "expected"), PLATFORM_BARE_STATUSES)
def test_platform_bare_statuses(
    status: int, expected: type[BalanceUnavailable]
) -> None:
    """A Platform error without a body is classified by its status."""
    with pytest.raises(BalanceUnavailable) as ei:
        parse_platform_balance(status, b"")

    assert expected is type(ei.value)
