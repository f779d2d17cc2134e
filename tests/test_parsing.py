from __future__ import annotations

import contextlib
import datetime as dt
import json
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guard.errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError
from guard.providers._clickatell import parse_balance as parse_clickatell_balance
from guard.providers._clickatell import parse_err as parse_clickatell_err
from guard.providers._http import (
    Secret,
    checked_balance,
    clean_text,
    parse_retry_after,
)
from guard.providers._oneclickdz import parse_balance as parse_oneclickdz_balance

GUARD_ERRORS = (BalanceUnavailable, ProviderAuthError, ProviderResponseError)

# Balances a provider could plausibly report: exact, finite, below 10**24.
balances = st.decimals(
    min_value=Decimal("-1e20"),
    max_value=Decimal("1e20"),
    allow_nan=False,
    allow_infinity=False,
)
statuses = st.integers(min_value=100, max_value=599)
headers = st.none() | st.text(max_size=40)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.decimals(allow_nan=False, allow_infinity=False).map(str)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["success", "data", "balance", "error", "code", "x"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "success": st.booleans() | json_values,
        "data": st.fixed_dictionaries({}, optional={"balance": json_values})
        | json_values,
        "error": st.fixed_dictionaries(
            {},
            optional={
                "code": st.sampled_from(
                    [
                        "INVALID_ACCESS_TOKEN",
                        "IP_BLOCKED",
                        "RATE_LIMIT_EXCEEDED",
                        "AUTH_UNAVAILABLE",
                        "NOT_FOUND",
                    ]
                )
                | json_values,
                "message": st.text(max_size=20) | json_values,
            },
        )
        | json_values,
        "message": json_values,
    },
)


def envelope(balance: str) -> bytes:
    return f'{{"success":true,"data":{{"balance":{balance}}}}}'.encode()


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("5", 5.0),
            (" 120 ", 120.0),
            ("0", 0.0),
            ("1.5", 1.5),
            ("86400000", 86400000.0),
            (None, None),
            ("", None),
            ("soon", None),
            ("-5", None),
            ("5s", None),
            ("nan", None),
            ("9" * 40, None),
        ],
    )
    def test_seconds(self, value: str | None, expected: float | None) -> None:
        """Delay-seconds are read as floats and nonsense is ignored."""
        assert expected == parse_retry_after(value)

    def test_http_date(self) -> None:
        """An HTTP-date gives the seconds from now until then."""
        now = dt.datetime(2015, 10, 21, 7, 27, 0, tzinfo=dt.UTC)

        assert 60.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now)

    def test_past_http_date(self) -> None:
        """An HTTP-date in the past means no wait, never a negative one."""
        assert 0.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")

    def test_naive_http_date(self) -> None:
        """An HTTP-date without a zone is read as UTC."""
        now = dt.datetime(2015, 10, 21, 7, 28, 0, tzinfo=dt.UTC)

        assert 30.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:30 -0000", now=now)

    @given(st.text())
    def test_never_raises(self, value: str) -> None:
        """Any header value gives None or a finite, non-negative number."""
        seconds = parse_retry_after(value)

        assert seconds is None or 0 <= seconds < float("inf")


class TestCleanText:
    def test_redacts(self) -> None:
        """Secrets are replaced wherever they occur."""
        assert "bad key [secure] ([secure])" == clean_text(
            "bad key s3cret (s3cret)", [Secret("s3cret"), Secret("")]
        )

    def test_collapses_and_cuts(self) -> None:
        """Control characters collapse to spaces and long text is cut."""
        text = clean_text("a\r\n\tb\x00" + "x" * 500)

        assert text.startswith("a b x")
        assert 200 == len(text)
        assert text.endswith("…")


class TestChecked:
    @pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("-Infinity")])
    def test_not_finite(self, value: Decimal) -> None:
        """Non-finite balances are refused even if a decoder let one through."""
        with pytest.raises(ProviderResponseError, match="finite"):
            checked_balance(value, "x", 200)


class TestOneClickDZ:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (b'{"success":true,"data":{"balance":1326.13}}', Decimal("1326.13")),
            (b'{"success":true,"data":{"balance":123}}', Decimal(123)),
            (b'{"success":true,"data":{"balance":0}}', Decimal(0)),
            (b'{"success":true,"data":{"balance":-5.5}}', Decimal("-5.5")),
            (
                b'{"success":true,"data":{"balance":123456789012345678.99}}',
                Decimal("123456789012345678.99"),
            ),
            (
                b'{"success":true,"data":{"balance":50000,"currency":"DZD"},'
                b'"meta":{"timestamp":"2025-10-29T00:35:58.710Z"},"requestId":"r"}',
                Decimal(50000),
            ),
        ],
    )
    def test_balance(self, body: bytes, expected: Decimal) -> None:
        """The balance is read exactly, extra fields ignored."""
        balance = parse_oneclickdz_balance(200, body)

        assert expected == balance
        assert expected.as_tuple() == balance.as_tuple()

    @pytest.mark.parametrize(
        "body",
        [
            b'{"success":true,"data":{"balance":13',
            b'{"success":false,"data":{"balance":13}}',
            b'{"success":"true","data":{"balance":13}}',
            b"null",
            b"[1, 2]",
            b'{"success":true}',
            b'{"success":true,"data":[]}',
            b'{"success":true,"data":{}}',
            b'{"success":true,"data":{"balance":null}}',
            b'{"success":true,"data":{"balance":"13.00"}}',
            b'{"success":true,"data":{"balance":true}}',
            b'{"success":true,"data":{"balance":[13]}}',
            b'{"success":true,"data":{"balance":{"v":1}}}',
            b'{"success":true,"data":{"balance":NaN}}',
            b'{"success":true,"data":{"balance":Infinity}}',
            b'{"success":true,"data":{"balance":1e30}}',
            b"<html>ok</html>",
            b"\xff\xfe",
            b"[" * 70000,
            b'{"success":false,"error":{"code":"NOT_FOUND"}}',
        ],
    )
    def test_unreadable_success(self, body: bytes) -> None:
        """A 200 without a finite numeric balance is a ProviderResponseError."""
        with pytest.raises(ProviderResponseError) as ei:
            parse_oneclickdz_balance(200, body)

        assert 200 == ei.value.status

    @pytest.mark.parametrize(
        ("status", "code"),
        [
            (401, "MISSING_ACCESS_TOKEN"),
            (400, "MISSING_ACCESS_TOKEN"),
            (401, "INVALID_ACCESS_TOKEN"),
            (401, "ERR_AUTH"),
            (403, "IP_NOT_ALLOWED"),
            (403, "API_DISABLED"),
            (200, "INVALID_ACCESS_TOKEN"),
        ],
    )
    def test_auth_codes(self, status: int, code: str) -> None:
        """Key-layer codes are auth errors whatever the status."""
        body = json.dumps(
            {"success": False, "error": {"code": code, "message": "nope"}}
        ).encode()

        with pytest.raises(ProviderAuthError) as ei:
            parse_oneclickdz_balance(status, body)

        assert (code, status, None) == (
            ei.value.code,
            ei.value.status,
            ei.value.retry_after,
        )
        assert "nope" in str(ei.value)

    @pytest.mark.parametrize(
        ("retry_after", "expected"), [(None, 900.0), ("120", 120.0)]
    )
    def test_ip_blocked(self, retry_after: str | None, expected: float) -> None:
        """IP_BLOCKED carries a cooldown: the header's, else 15 minutes."""
        body = b'{"success":false,"error":{"code":"IP_BLOCKED","message":"m"}}'

        with pytest.raises(ProviderAuthError) as ei:
            parse_oneclickdz_balance(403, body, retry_after=retry_after)

        assert expected == ei.value.retry_after

    @pytest.mark.parametrize(
        ("status", "code"),
        [
            (429, "RATE_LIMIT_EXCEEDED"),
            (500, "INTERNAL_SERVER_ERROR"),
            (500, "INTERNAL_ERROR"),
            (503, "SERVICE_UNAVAILABLE"),
            (503, "AUTH_UNAVAILABLE"),
            (401, "AUTH_UNAVAILABLE"),
        ],
    )
    def test_transient_codes(self, status: int, code: str) -> None:
        """Transient codes are BalanceUnavailable, never an auth error."""
        body = json.dumps({"success": False, "error": {"code": code}}).encode()

        with pytest.raises(BalanceUnavailable) as ei:
            parse_oneclickdz_balance(status, body, retry_after="5")

        assert BalanceUnavailable is type(ei.value)
        assert (status, 5.0) == (ei.value.status, ei.value.retry_after)
        assert code in str(ei.value)

    @pytest.mark.parametrize(
        ("status", "body", "error"),
        [
            (502, b"<html><h1>502 Bad gateway</h1></html>", BalanceUnavailable),
            (503, b"", BalanceUnavailable),
            (504, b"upstream timeout", BalanceUnavailable),
            (429, b"Too Many Requests", BalanceUnavailable),
            (408, b"", BalanceUnavailable),
            (401, b'{"message":"Unauthorized"}', ProviderAuthError),
            (403, b"<html>Access denied | cloudflare</html>", ProviderAuthError),
            (
                404,
                b'{"message":"Route GET:/v3/x not found","error":"Not Found",'
                b'"statusCode":404}',
                ProviderResponseError,
            ),
            (
                400,
                b'{"success":false,"error":{"code":"ERR_VALIDATION"}}',
                ProviderResponseError,
            ),
            (
                403,
                b'{"success":false,"error":{"code":"INSUFFICIENT_BALANCE"}}',
                ProviderResponseError,
            ),
            (
                403,
                b'{"success":false,"error":{"code":"DUPLICATED_REF"}}',
                ProviderResponseError,
            ),
            (
                403,
                b'{"success":false,"error":{"code":"SOMETHING_NEW"}}',
                ProviderAuthError,
            ),
            (
                503,
                b'{"success":false,"error":{"code":"SOMETHING_NEW"}}',
                BalanceUnavailable,
            ),
            (302, b"", ProviderResponseError),
            (204, b"", ProviderResponseError),
        ],
    )
    def test_by_status(
        self, status: int, body: bytes, error: type[BalanceUnavailable]
    ) -> None:
        """Bodies without a known code are classified by status; 403 codes by code."""
        with pytest.raises(BalanceUnavailable) as ei:
            parse_oneclickdz_balance(status, body)

        assert error is type(ei.value)
        assert status == ei.value.status

    def test_router_miss_message(self) -> None:
        """A router miss keeps its message and has no code."""
        body = b'{"message":"Route GET:/v3/x not found","error":"Not Found"}'

        with pytest.raises(ProviderResponseError) as ei:
            parse_oneclickdz_balance(404, body)

        assert ei.value.code is None
        assert "Route GET:/v3/x not found" in ei.value.reason

    def test_redacts_echoed_key(self) -> None:
        """A key the provider echoes back never reaches the message."""
        body = b'{"success":false,"error":{"code":"INVALID_ACCESS_TOKEN",' + (
            b'"message":"key sk_live_123 is invalid"}}'
        )

        with pytest.raises(ProviderAuthError) as ei:
            parse_oneclickdz_balance(401, body, redact=[Secret("sk_live_123")])

        assert "sk_live_123" not in str(ei.value)
        assert "sk_live_123" not in repr(ei.value)

    @example(Decimal("1326.13"))
    @example(Decimal("-0"))
    @example(Decimal("1E+2"))
    @given(balances)
    def test_roundtrip(self, value: Decimal) -> None:
        """Any finite decimal the API writes is read back exactly."""
        for text in (str(value), format(value, "f")):
            assert value == parse_oneclickdz_balance(200, envelope(text))

    @given(statuses, st.binary(max_size=200), headers)
    def test_any_bytes(self, status: int, body: bytes, retry_after: str | None) -> None:
        """Arbitrary bytes raise only guard errors."""
        with contextlib.suppress(*GUARD_ERRORS):
            parse_oneclickdz_balance(status, body, retry_after=retry_after)

    @given(statuses, json_values | envelopes, headers)
    def test_any_json(self, status: int, doc: object, retry_after: str | None) -> None:
        """Arbitrary JSON raises only guard errors, or gives a finite balance."""
        body = json.dumps(doc).encode()
        try:
            balance = parse_oneclickdz_balance(status, body, retry_after=retry_after)
        except GUARD_ERRORS:
            return
        assert 200 == status
        assert balance.is_finite()


class TestClickatell:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (b"Credit: 12.5", Decimal("12.5")),
            (b"Credits: 123.00", Decimal("123.00")),
            (b"Credits: 123.00 ", Decimal("123.00")),
            (b"Credit: 100\r\n", Decimal(100)),
            (b"\r\n\r\n  credit :0.0\r\n", Decimal("0.0")),
            (b"CREDITS:-3.25\n", Decimal("-3.25")),
            (b"Credit: 0", Decimal(0)),
            (
                b"Credit: 99999999999999999999.12345",
                Decimal("99999999999999999999.12345"),
            ),
            (b"Credit: 5\nsomething else", Decimal(5)),
        ],
    )
    def test_balance(self, body: bytes, expected: Decimal) -> None:
        """Both labels, any case, decimals and whitespace are read exactly."""
        balance = parse_clickatell_balance(200, body)

        assert expected == balance
        assert expected.as_tuple() == balance.as_tuple()

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"ERR: 001, Authentication failed", "001"),
            (b"ERR: 0001, Authentication failed", "001"),
            (b"ERR: 1, Authentication failed", "001"),
            (b"ERR: 002, Unknown username or password", "002"),
            (b"ERR: 004, Account frozen", "004"),
            (b"ERR: 007, IP Lockdown violation", "007"),
            (b"err:108,Invalid or missing API ID\r\n", "108"),
        ],
    )
    def test_auth_errors(self, body: bytes, code: str) -> None:
        """Credential codes are auth errors, their codes normalised to 3 digits."""
        with pytest.raises(ProviderAuthError) as ei:
            parse_clickatell_balance(200, body)

        assert code == ei.value.code
        assert 200 == ei.value.status

    def test_internal_error(self) -> None:
        """ERR 901 is transient."""
        with pytest.raises(BalanceUnavailable) as ei:
            parse_clickatell_balance(
                200, b"ERR: 901, Internal error, please retry", retry_after="3"
            )

        assert BalanceUnavailable is type(ei.value)
        assert 3.0 == ei.value.retry_after
        assert "901" in str(ei.value)

    def test_session_expired_is_transient(self) -> None:
        """ERR 003 is retried: the next request authenticates afresh."""
        with pytest.raises(BalanceUnavailable) as ei:
            parse_clickatell_balance(200, b"ERR: 003, Session ID expired")

        assert BalanceUnavailable is type(ei.value)
        assert ei.value.retry_after is None

    @pytest.mark.parametrize(
        ("until", "expected"), [(1_700_000_060, 60.0), (1_699_999_000, 0.0)]
    )
    def test_mt_limit_waits_until_its_time(self, until: int, expected: float) -> None:
        """ERR 130 is transient, and waits until the time it names."""
        now = dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
        body = f"ERR: 130, Maximum MT limit exceeded until {until}".encode()

        with pytest.raises(BalanceUnavailable) as ei:
            parse_clickatell_balance(200, body, retry_after="5", now=now)

        assert BalanceUnavailable is type(ei.value)
        assert expected == ei.value.retry_after

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"ERR: 101, Invalid or missing parameters", "101"),
            (b"ERR: 301, No credit left", "301"),
            (b"ERR: 12345, Something new", "12345"),
            (b"ERR: 114", "114"),
        ],
    )
    def test_other_errors(self, body: bytes, code: str) -> None:
        """Other ERR codes are ProviderResponseError with the code."""
        with pytest.raises(ProviderResponseError) as ei:
            parse_clickatell_balance(200, body)

        assert code == ei.value.code

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"\r\n \n",
            b"Credit: abc",
            b"Credit: 12,5",
            b"Credit: 1e5",
            b"Credit 12",
            b"Credit: \xd9\xa3",
            b"OK: 0123456789abcdef0123456789abcdef",
            b"ERR: abc, not a number",
            b"ERR:",
            b"<html>hi</html>",
            b"Credit: 1" + b"0" * 30,
        ],
    )
    def test_unreadable(self, body: bytes) -> None:
        """Bodies that are neither a balance nor an ERR line are refused."""
        with pytest.raises(ProviderResponseError):
            parse_clickatell_balance(200, body)

    @pytest.mark.parametrize("status", [201, 301, 401, 404, 429, 500, 503])
    def test_non_200(self, status: int) -> None:
        """Any status but 200 is transport trouble, whatever the body."""
        with pytest.raises(BalanceUnavailable) as ei:
            parse_clickatell_balance(status, b"Credit: 5", retry_after="7")

        assert BalanceUnavailable is type(ei.value)
        assert (status, 7.0) == (ei.value.status, ei.value.retry_after)

    def test_redacts_echoed_secret(self) -> None:
        """A password the provider echoes back never reaches the message."""
        with pytest.raises(ProviderResponseError) as ei:
            parse_clickatell_balance(
                200, b"ERR: 101, bad password hunter2", redact=[Secret("hunter2")]
            )

        assert "hunter2" not in str(ei.value)

    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            ("ERR: 001, Authentication failed", (1, "Authentication failed")),
            (
                "ERR: 105, Invalid destination, really To: 2135",
                (105, "Invalid destination, really To: 2135"),
            ),
            ("ERR: 0301", (301, "")),
            ("Credit: 5", None),
            ("ERR: x1, y", None),
        ],
    )
    def test_split_err(self, line: str, expected: tuple[int, str] | None) -> None:
        """ERR lines split on the first comma, codes read as integers."""
        assert expected == parse_clickatell_err(line)

    @example(Decimal("123.00"), "Credits", "", "", "\r\n")
    @given(
        balances,
        st.sampled_from(["Credit", "Credits", "credit", "CREDITS", "CrEdIt"]),
        st.sampled_from(["", " ", "\t", "  "]),
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["", "\n", "\r\n", "\r\n\r\n"]),
    )
    def test_roundtrip(
        self, value: Decimal, label: str, before: str, after: str, end: str
    ) -> None:
        """Any decimal under either label and any spacing is read exactly."""
        body = f"{before}{label}{before}:{after}{format(value, 'f')}{after}{end}"

        assert value == parse_clickatell_balance(200, body.encode())

    @given(statuses, st.text(max_size=200), headers)
    def test_any_text(self, status: int, text: str, retry_after: str | None) -> None:
        """Arbitrary text raises only guard errors."""
        with contextlib.suppress(*GUARD_ERRORS):
            parse_clickatell_balance(status, text.encode(), retry_after=retry_after)

    @given(st.binary(max_size=200))
    def test_any_bytes(self, body: bytes) -> None:
        """Arbitrary bytes with HTTP 200 raise only guard errors."""
        with contextlib.suppress(*GUARD_ERRORS):
            parse_clickatell_balance(200, body)
