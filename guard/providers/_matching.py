"""
Finding the account an outgoing spend request names: the accounts of one
kind indexed by where they live and the credentials they send, so that a
request is matched in a few dict lookups however many accounts there are.

The client middleware indexes its providers once, when it is built; each
provider module says how a request names its account.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast, final

from yarl import URL

from ._http import Secret

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from guard._aiohttp_client import SpendRequest
    from guard.typing import Provider

__all__ = ["AccountIndex", "IndexedMatcher"]


class _Located(Protocol):
    @property
    def base_url(self) -> str: ...


A = TypeVar("A", bound=_Located)

# Scheme, host, port and the casefolded path, ending in "/", that a request
# path starts with: the request is on the API whose base URL this is.
_Base = tuple[str, str | None, int | None, str]


def _base_of(base_url: str) -> _Base:
    base = URL(base_url)
    return (base.scheme, base.host, base.port, base.path.rstrip("/").casefold() + "/")


def _bases_above(url: URL) -> list[_Base]:
    """
    Every base a request to *url* is under: one per "/" of its path.
    """
    scheme, host, port = url.scheme, url.host, url.port
    path = url.path.casefold()
    bases = []
    end = path.find("/")
    while end >= 0:
        bases.append((scheme, host, port, path[: end + 1]))
        end = path.find("/", end + 1)
    return bases


@final
class AccountIndex(Generic[A]):
    """
    Accounts by base URL and credentials; the first listed wins a tie, as
    a scan of the list would.

    SECURITY: credentials are kept only as digests keyed with a random key
    of this index, so a printed or dumped index gives nothing to guess
    against.
    """

    __slots__ = ("_accounts", "_at", "_key")

    def __init__(
        self,
        accounts: Iterable[A],
        credentials: Callable[[A], tuple[str | Secret, ...]],
    ) -> None:
        self._key = secrets.token_bytes(32)
        self._accounts = tuple(accounts)
        # base -> (positions of its accounts, digest -> first position)
        self._at: dict[_Base, tuple[list[int], dict[bytes, int]]] = {}
        for position, account in enumerate(self._accounts):
            positions, by_digest = self._at.setdefault(
                _base_of(account.base_url), ([], {})
            )
            positions.append(position)
            by_digest.setdefault(self._digest(credentials(account)), position)

    def __repr__(self) -> str:
        return f"<AccountIndex of {len(self._accounts)} accounts>"

    def _digest(self, parts: tuple[str | Secret, ...]) -> bytes:
        digest = hashlib.blake2b(key=self._key, digest_size=32)
        for part in parts:
            text = part.reveal() if isinstance(part, Secret) else part
            data = text.encode("utf-8", "surrogatepass")
            # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            digest.update(len(data).to_bytes(8, "big") + data)
        return digest.digest()

    def find(self, url: URL, *credentials: str) -> A | None:
        """
        The first account at or above *url*'s path whose credentials are
        *credentials*, if any.
        """
        digest = self._digest(credentials)
        found: int | None = None
        for base in _bases_above(url):
            here = self._at.get(base)
            position = None if here is None else here[1].get(digest)
            if position is not None and (found is None or position < found):
                found = position
        return None if found is None else self._accounts[found]

    def only(self, url: URL) -> A | None:
        """
        The account at or above *url*'s path when it is the only one there.
        """
        positions: list[int] = []
        for base in _bases_above(url):
            here = self._at.get(base)
            if here is not None:
                positions.extend(here[0])
        return self._accounts[positions[0]] if len(positions) == 1 else None


@final
class IndexedMatcher(Generic[A]):
    """
    A `ProviderMatcher` for the accounts of one provider class that indexes
    them, once per middleware (`bind`), rather than scan them per request.

    Args:
        kind: The provider class.
        credentials: An account's credentials, as a request sends them.
        find: Reads a request's credentials and looks them up in the
            index it is given first.
    """

    __slots__ = ("_credentials", "_find", "_kind")

    def __init__(
        self,
        kind: type[A],
        credentials: Callable[[A], tuple[str | Secret, ...]],
        find: Callable[[AccountIndex[A], SpendRequest], A | None],
    ) -> None:
        self._kind = kind
        self._credentials = credentials
        self._find = find

    def __repr__(self) -> str:
        return f"<IndexedMatcher of {self._kind.__name__} accounts>"

    def bind(self, providers: Sequence[Provider]) -> Callable[[SpendRequest], A | None]:
        """
        Index *providers* and return the lookup of a request's account.
        """
        # Widened: mypy cannot narrow a Provider to the type variable.
        kind: type[object] = self._kind
        mine = cast("list[A]", [p for p in providers if isinstance(p, kind)])
        index = AccountIndex(mine, self._credentials)
        return functools.partial(self._find, index)

    def __call__(
        self, request: SpendRequest, providers: Sequence[Provider]
    ) -> A | None:
        return self.bind(providers)(request)
