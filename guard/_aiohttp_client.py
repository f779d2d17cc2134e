"""
The aiohttp client middleware: guard spend requests before they leave.

Public through `guard.aiohttp`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import parse_qsl

import attrs
from aiohttp import payload as aiohttp_payload
from multidict import MultiDict, MultiDictProxy

from guard._logs import fields
from guard._money import to_amount
from guard._require import get_default_guard
from guard.errors import BalanceUnavailable, ConfigurationError
from guard.providers._clickatell import clickatell_rules
from guard.providers._clickatell_platform import clickatell_platform_rules
from guard.providers._matching import IndexedMatcher
from guard.providers._oneclickdz_spends import oneclickdz_rules
from guard.typing import Provider

if TYPE_CHECKING:
    import contextlib

    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType
    from yarl import URL

    from guard._guard import BalanceGuard, Settle
    from guard._reservation import Reservation
    from guard.typing import AmountLike

__all__ = [
    "ProviderMatcher",
    "ReportedBalance",
    "SpendAmount",
    "SpendRequest",
    "SpendRule",
    "clickatell_platform_rules",
    "clickatell_rules",
    "default_rules",
    "guard_client_middleware",
    "oneclickdz_rules",
]

log = logging.getLogger("guard")

_FORM = "application/x-www-form-urlencoded"


@attrs.define(frozen=True)
class SpendRequest:
    """
    An outgoing request a `SpendRule` matched, as its functions see it.

    Attributes:
        method: The HTTP method, upper case.
        url: The full URL, query included (its repr leaves out the query
            and any user info: a GET may carry a password).
        headers: The request headers.
        body: The body, or None when it is streamed and cannot be read
            without consuming it.
        provider: The account the request spends, once the rule found it
            (what a `SpendAmount` sees); None before.
        guard: The guard that will hold the amount, for a `SpendAmount`
            that prices the request from a catalogue
            (`BalanceGuard.catalogue`); None before.
    """

    method: str
    url: URL = attrs.field(repr=lambda url: _masked(url))
    headers: Any = attrs.field(repr=False)
    body: bytes | None = attrs.field(repr=False)
    provider: Provider | None = attrs.field(default=None, kw_only=True)
    guard: BalanceGuard | None = attrs.field(default=None, kw_only=True, repr=False)

    @classmethod
    async def of(cls, request: ClientRequest) -> SpendRequest:
        """
        Read *request* without consuming its body.
        """
        body = request.body
        raw: bytes | None
        if isinstance(body, bytes):
            raw = body
        elif isinstance(body, aiohttp_payload.BytesPayload):
            raw = await body.as_bytes()
        else:
            raw = None
        return cls(request.method.upper(), request.url, request.headers, raw)

    def json(self) -> Any:
        """
        Decode the body as JSON, numbers with a fraction as `Decimal`.

        Raises:
            ValueError: The body is not JSON or cannot be read.
        """
        if self.body is None:
            raise ValueError("the request body is streamed: guard cannot read it")
        return json.loads(self.body, parse_float=Decimal)

    def media_type(self) -> str:
        """
        The body's media type, lower case, without parameters: media types
        are case-insensitive (RFC 9110, 8.3.1), as servers read them.
        """
        content_type = self.headers.get("Content-Type", "")
        return str(content_type).partition(";")[0].strip().lower()

    def form(self) -> MultiDictProxy[str]:
        """
        Decode a form-encoded body (empty for any other body).

        Raises:
            ValueError: The body is ``multipart/form-data``, which servers
                read as a form but guard cannot.
        """
        fields: MultiDict[str] = MultiDict()
        media_type = self.media_type()
        if self.body is not None and media_type == _FORM:
            fields.extend(
                parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            )
        elif self.body and media_type == "multipart/form-data":
            # SECURITY: the server would read these fields; guard would see
            # none and let a spend through as free.
            raise ValueError(
                "the body is multipart/form-data, which guard cannot read; "
                "send the form url-encoded (data= a dict)"
            )
        return MultiDictProxy(fields)

    def params(self) -> MultiDictProxy[str]:
        """
        The query parameters, then the form fields: what a Clickatell-style
        API reads whether it was called by GET or POST.
        """
        fields: MultiDict[str] = MultiDict(self.url.query)
        fields.extend(self.form())
        return MultiDictProxy(fields)


def _masked(url: URL) -> str:
    # SECURITY: a query (Clickatell's password=) or user info may be secret.
    shown = url.with_user(None).with_fragment(None)
    return repr(str(shown.with_query(None)) + ("?..." if url.query_string else ""))


ProviderMatcher: TypeAlias = Callable[
    [SpendRequest, Sequence[Provider]], "Provider | None"
]
"""
Picks, among the providers given to `guard_client_middleware`, the account a
request spends; None when it is none of them.
"""

SpendAmount: TypeAlias = Callable[[SpendRequest], "AmountLike | Awaitable[AmountLike]"]
"""
Reads what a request spends, sync or async.
"""


ReportedBalance: TypeAlias = Callable[["ClientResponse"], Awaitable["Decimal | None"]]
"""
Reads the balance a provider reports in a spend's 2xx reply, or None.
"""


def _methods(value: str | Iterable[str]) -> frozenset[str]:
    names: tuple[object, ...] = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError("method must be an HTTP method or several")
    return frozenset(str(n).upper() for n in names)


def _check_path(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, str):
        if not value.startswith("/"):
            raise ValueError(f"path must start with '/', got {value!r}")
    elif not isinstance(value, re.Pattern):
        raise TypeError(
            f"path must be a str or a compiled re, not {type(value).__name__}"
        )


def _check_callable(
    instance: object, attribute: attrs.Attribute[Any], value: Any
) -> None:
    if not callable(value) and not (
        attribute.name == "provider" and isinstance(value, Provider)
    ):
        raise TypeError(
            f"{attribute.name} must be callable, not {type(value).__name__}"
        )


@attrs.define(frozen=True)
class SpendRule:
    """
    An outgoing request that spends a provider balance, and how much.

    Attributes:
        method: The HTTP method, or several (``("GET", "POST")``).
        path: A ``str`` the URL path ends with (``"/v3/mobile/send"``;
            case and trailing slashes ignored), or a
            compiled regular expression searched in it.
        provider: The `guard.typing.Provider` it spends, or a
            `ProviderMatcher` choosing among the middleware's providers.
        amount: A `SpendAmount` reading the cost from the request.
        settle: ``"invalidate"`` or ``"debit"``; None: the guard's default.
        reported: Reads, from a 2xx reply, the balance the provider says
            is left after the spend (`ReportedBalance`); the guard keeps it
            (`guard.Reservation.report_balance`). None: nothing is read.
    """

    method: frozenset[str] = attrs.field(converter=_methods)
    path: str | re.Pattern[str] = attrs.field(validator=_check_path)
    provider: Provider | ProviderMatcher = attrs.field(validator=_check_callable)
    amount: SpendAmount = attrs.field(validator=_check_callable)
    settle: Settle | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.in_((None, "refresh", "invalidate", "debit")),
    )
    reported: ReportedBalance | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.is_callable()),
    )

    def matches(self, method: str, url: URL) -> bool:
        """
        Tell whether a request with *method* to *url* is one of these.
        """
        if method.upper() not in self.method:
            return False
        if isinstance(self.path, str):
            # Erring on the guarded side: many servers ignore a trailing
            # slash or the path's case, and an unmatched spend goes unguarded.
            path = url.path.rstrip("/").casefold() or "/"
            return path.endswith(self.path.rstrip("/").casefold() or "/")
        return self.path.search(url.path) is not None

    def account(
        self, request: SpendRequest, providers: Sequence[Provider]
    ) -> Provider | None:
        """
        Return the provider account *request* spends, if it is known.
        """
        if isinstance(self.provider, Provider):
            return self.provider
        return self.provider(request, providers)

    async def required(self, request: SpendRequest) -> Decimal:
        """
        Return what *request* spends.

        Raises:
            ValueError, TypeError: It cannot be read as a non-negative finite
                amount.
        """
        value = self.amount(request)
        if inspect.isawaitable(value):
            value = await value
        return to_amount(value)


def default_rules(
    *,
    credits_per_part: AmountLike = 1,
    price_per_part: AmountLike = 1,
    settle: Settle | None = None,
) -> tuple[SpendRule, ...]:
    """
    `oneclickdz_rules`, `clickatell_rules` and `clickatell_platform_rules`
    together: *credits_per_part* is what a legacy SMS part costs in
    credits, *price_per_part* what a Platform SMS part costs in the
    account's billing currency.
    """
    return (
        oneclickdz_rules(settle=settle)
        + clickatell_rules(credits_per_part=credits_per_part, settle=settle)
        + clickatell_platform_rules(price_per_part=price_per_part, settle=settle)
    )


def _account_finders(
    rules: Sequence[SpendRule], providers: tuple[Provider, ...]
) -> tuple[Callable[[SpendRequest], Provider | None], ...]:
    """
    For each rule, what finds the account a request it matches spends.

    The bundled rules index *providers* here, once (shared by rules with one
    matcher), so a request is matched in constant time however many
    accounts there are; other matchers are called as `SpendRule.account`.
    """
    bound: dict[IndexedMatcher[Any], Callable[[SpendRequest], Provider | None]] = {}
    finders: list[Callable[[SpendRequest], Provider | None]] = []
    for rule in rules:
        matcher = rule.provider
        if isinstance(matcher, IndexedMatcher):
            if matcher not in bound:
                bound[matcher] = matcher.bind(providers)
            finders.append(bound[matcher])
        else:
            finders.append(functools.partial(rule.account, providers=providers))
    return tuple(finders)


def guard_client_middleware(
    guard: BalanceGuard | None = None,
    *,
    providers: Iterable[Provider] = (),
    rules: Iterable[SpendRule] | None = None,
    unknown: Literal["refuse", "allow"] = "refuse",
) -> ClientMiddlewareType:
    """
    Build an aiohttp client middleware that guards spend requests.

    ::

        async with aiohttp.ClientSession(
            middlewares=(guard_client_middleware(providers=[oneclick]),)
        ) as session:
            await session.post(f"{base}/v3/mobile/send", json=..., headers=...)

    A request a rule matches is checked and its amount held before it is
    sent; `InsufficientBalance` (or `BalanceUnavailable`) is raised from the
    session call and the request never leaves. After the response the hold
    is released and the cached balance invalidated, or debited when the rule
    or guard settles by ``"debit"`` and the status is 2xx (a Clickatell
    ``ERR:`` answer comes with 200: it is debited too, which errs on the safe
    side until the next fetch); when the rule reads a balance the 2xx reply
    reports (OneClickDZ's ``data.newBalance``), that is kept instead. Balance
    and catalogue reads go through the guard's own session, never through
    this one. A spend whose price list cannot be read follows the guard's
    *on_unavailable*.

    The bundled rules index *providers* when the middleware is built, by
    base URL and credentials (kept as digests), so a request's account is
    found in constant time however many accounts are given; among accounts
    a request fits equally, the first listed is the one.

    A request a rule matches is refused, never sent, with `ValueError` when
    its body is streamed (multipart `aiohttp.FormData`, a file, a generator:
    guard cannot read it without consuming it) and with
    `guard.errors.ConfigurationError` when it spends an account not among
    *providers* (unless *unknown* is ``"allow"``). Send spend bodies as
    ``json=``, a ``dict`` form, ``str`` or ``bytes``.

    Args:
        guard: The guard; default `guard.get_default_guard()`, looked up per
            request.
        providers: The accounts to guard, such as ``[oneclick, clickatell]``.
        rules: What spends, and how much; default `default_rules()`. Add
            `SpendRule` values for other endpoints.
        unknown: What to do with a spend for an account not among
            *providers*: ``"refuse"`` it (the default), or ``"allow"`` it:
            send it unguarded, with a warning.

    Raises:
        TypeError: A provider or rule of the wrong type.
        ValueError: An *unknown* other than ``"refuse"`` or ``"allow"``.
    """
    if unknown not in ("refuse", "allow"):
        raise ValueError(f"unknown must be 'refuse' or 'allow', got {unknown!r}")
    known = tuple(providers)
    for provider in known:
        if not isinstance(provider, Provider):
            raise TypeError(
                f"providers must implement guard.typing.Provider, not "
                f"{type(provider).__name__}"
            )
    spend_rules = default_rules() if rules is None else tuple(rules)
    for rule in spend_rules:
        if not isinstance(rule, SpendRule):
            raise TypeError(
                f"rules must be SpendRule values, not {type(rule).__name__}"
            )
    accounts = _account_finders(spend_rules, known)

    async def guard_spend(
        request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        found = next(
            (
                (r, account)
                for r, account in zip(spend_rules, accounts, strict=True)
                if r.matches(request.method, request.url)
            ),
            None,
        )
        if found is None:
            return await handler(request)
        rule, account_of = found
        spend = await SpendRequest.of(request)
        # SECURITY: the path only in messages; a GET query may carry a
        # password.
        if spend.body is None:
            raise ValueError(
                f"{spend.method} {request.url.path}: the body is streamed "
                f"({type(request.body).__name__}), so guard cannot read what it "
                "spends; refused, not sent. Send it as json=, a dict form, "
                "str or bytes"
            )
        provider = account_of(spend)
        if provider is None:
            if unknown == "refuse":
                raise ConfigurationError(
                    f"{spend.method} {request.url.path} spends an account not "
                    "among the providers given to guard_client_middleware: "
                    "refused, not sent; pass its provider, or unknown='allow' "
                    "to send such requests unguarded"
                )
            log.warning(
                "%s %s spends an account the guard middleware was not given; "
                "sent unguarded",
                request.method,
                request.url.path,
                extra=fields(
                    "sent_unguarded",
                    provider="",
                    account="",
                    method=request.method,
                    path=request.url.path,
                ),
            )
            return await handler(request)
        active = guard or get_default_guard()
        spend = attrs.evolve(spend, provider=provider, guard=active)
        reserving: contextlib.AbstractAsyncContextManager[Reservation]
        try:
            required = await rule.required(spend)
        except BalanceUnavailable as exc:
            # Its price list could not be read: the guard's policy decides.
            reserving = active.reserve_unavailable(provider, exc, settle=rule.settle)
        else:
            reserving = active.reserve(
                provider,
                required,
                settle=rule.settle,
                reports=rule.reported is not None,
            )
        async with reserving as spent:
            response = await handler(request)
            if not 200 <= response.status < 300:
                spent.failed()
            elif rule.reported is not None and spent._report is not None:
                reported = await rule.reported(response)
                if reported is not None:
                    spent.report_balance(reported)
        return response

    return guard_spend
