"""
The providers guard ships: OneClickDZ (DZD), Clickatell legacy HTTP
(credits) and the Clickatell Platform (money in the billing currency).

Each is a frozen value object that satisfies `guard.typing.Provider`: it
knows its credentials and endpoint, and makes one balance request per
`fetch_balance` call (the engine retries). Credentials never appear in a
repr, a URL or an exception message: they are kept as `Secret` values,
unwrapped only where a request is built.

Each provider's wire knowledge (paths, headers, parser, spend rule) lives in
its own private module: ``_oneclickdz``, ``_clickatell``,
``_clickatell_platform``; ``_http`` holds
what they share, and ``_matching`` the index in which the client
middleware finds the account a spend request names.
"""

from __future__ import annotations

from ._clickatell import Clickatell
from ._clickatell_platform import ClickatellPlatform
from ._http import Secret
from ._oneclickdz import OneClickDZ

__all__ = ["Clickatell", "ClickatellPlatform", "OneClickDZ", "Secret"]
