"""
Every error guard raises.

The tree::

    GuardError
    ├── ConfigurationError (also a ValueError)
    ├── AmountError (also a ValueError)
    ├── InsufficientBalance
    └── BalanceUnavailable
        ├── ProviderAuthError
        └── ProviderResponseError

Errors carry their data as keyword-only attributes; callers branch on those,
never on the message. ``str()`` is one readable line and never contains a
credential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = [
    "AmountError",
    "BalanceUnavailable",
    "ConfigurationError",
    "GuardError",
    "InsufficientBalance",
    "ProviderAuthError",
    "ProviderResponseError",
]


class GuardError(Exception):
    """
    Root of every error guard raises.
    """

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Keyword-only constructors defeat Exception's default pickling.
        fields = self._fields()
        if fields is None:
            return super().__reduce__()
        return (_rebuild, (type(self), fields))

    def _fields(self) -> dict[str, Any] | None:
        return None


class ConfigurationError(GuardError, ValueError):
    """
    guard was set up with options that cannot work together.
    """


class AmountError(GuardError, ValueError):
    """
    An amount is not a non-negative, finite number guard can hold exactly,
    or could not be computed from a guarded call's arguments (its function
    raised; the original error is the ``__cause__``).

    Raised before anything is held or sent. The message names the parameter
    (``amount``) and what was wrong with it.
    """


class InsufficientBalance(GuardError):
    """
    The provider balance, less what running calls hold, does not cover
    *required*.

    Raised before the guarded call runs: nothing was sent to the provider.
    """

    provider: str
    required: Decimal
    available: Decimal
    currency: str

    def __init__(
        self,
        *,
        provider: str,
        required: Decimal,
        available: Decimal,
        currency: str,
    ) -> None:
        self.provider = provider
        self.required = required
        self.available = available
        self.currency = currency
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.provider}: insufficient balance: {self.required} "
            f"{self.currency} required, {self.available} {self.currency} "
            "available"
        )

    def __repr__(self) -> str:
        return (
            f"InsufficientBalance(provider={self.provider!r}, "
            f"required={self.required!r}, available={self.available!r}, "
            f"currency={self.currency!r})"
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "required": self.required,
            "available": self.available,
            "currency": self.currency,
        }


class BalanceUnavailable(GuardError):
    """
    The balance of *provider* could not be learned: the provider was
    unreachable, slow, overloaded (5xx, 429), or the shared cache was down.

    *retry_after* is the provider's hint in seconds, if it gave one; *status*
    the HTTP status, if a response arrived; *request_id* the provider's id
    of the request (OneClickDZ's ``requestId``, which its support asks
    for), if it sent one; ``str()`` shows it.

    .. versionchanged:: 0.2 *request_id*.
    """

    provider: str
    reason: str
    status: int | None
    retry_after: float | None
    request_id: str | None

    def __init__(
        self,
        reason: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        self.provider = provider
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.provider}: balance unavailable: {self.reason}{self._rid()}"

    def _rid(self) -> str:
        return f" (request id {self.request_id})" if self.request_id else ""

    def __repr__(self) -> str:
        rid = f", request_id={self.request_id!r}" if self.request_id else ""
        return (
            f"{type(self).__name__}({self.reason!r}, provider={self.provider!r}, "
            f"status={self.status!r}, retry_after={self.retry_after!r}{rid})"
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "provider": self.provider,
            "status": self.status,
            "retry_after": self.retry_after,
            "request_id": self.request_id,
        }


class ProviderAuthError(BalanceUnavailable):
    """
    The provider refused the credentials (wrong or disabled key, IP blocked or
    not allowed, frozen account).

    Never retried: OneClickDZ blocks an IP after a few bad keys. *code* is the
    provider's error code (``"INVALID_ACCESS_TOKEN"``, ``"001"``...).
    """

    code: str | None

    def __init__(
        self,
        reason: str,
        *,
        provider: str,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        self.code = code
        super().__init__(
            reason,
            provider=provider,
            status=status,
            retry_after=retry_after,
            request_id=request_id,
        )

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.provider}: credentials refused{code}: {self.reason}{self._rid()}"

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "code": self.code}


class ProviderResponseError(BalanceUnavailable):
    """
    The provider answered, but not with anything guard can read as a
    balance (a truncated body, ``success: false``, a balance that is not a
    finite number, an unknown error code).
    """

    code: str | None

    def __init__(
        self,
        reason: str,
        *,
        provider: str,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.code = code
        super().__init__(
            reason, provider=provider, status=status, request_id=request_id
        )

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.provider}: unreadable answer{code}: {self.reason}{self._rid()}"

    def _fields(self) -> dict[str, Any]:
        fields = super()._fields()
        del fields["retry_after"]
        return {**fields, "code": self.code}


def _rebuild(cls: type[GuardError], fields: dict[str, Any]) -> GuardError:
    if "reason" in fields:
        reason = fields.pop("reason")
        return cls(reason, **fields)
    return cls(**fields)
