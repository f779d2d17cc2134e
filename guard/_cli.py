from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING

from . import __version__
from ._guard import BalanceGuard
from .errors import BalanceUnavailable, GuardError, ProviderAuthError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .typing import Provider

__all__ = ["main"]

# Exit codes: what a shell script branches on.
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNAVAILABLE = 4

ENV = {
    "oneclickdz": ("GUARD_ONECLICKDZ_API_KEY",),
    "clickatell": (
        "GUARD_CLICKATELL_USER",
        "GUARD_CLICKATELL_PASSWORD",
        "GUARD_CLICKATELL_API_ID",
    ),
}


class UsageError(Exception):
    """A command line or environment that cannot work."""


def _provider(name: str, base_url: str | None) -> Provider:
    from .providers import Clickatell, OneClickDZ

    missing = [var for var in ENV[name] if not os.environ.get(var)]
    if missing:
        raise UsageError(f"set {', '.join(missing)} to read the {name} balance")
    values = [os.environ[var] for var in ENV[name]]
    try:
        if name == "oneclickdz":
            if base_url is None:
                return OneClickDZ(values[0])
            return OneClickDZ(values[0], base_url=base_url)
        if base_url is None:
            return Clickatell(values[0], values[1], values[2])
        return Clickatell(values[0], values[1], values[2], base_url=base_url)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


async def _balance(args: argparse.Namespace) -> int:
    provider = _provider(args.provider, args.base_url)
    async with BalanceGuard(fetch_timeout=args.timeout) as guard:
        balance = await guard.balance(provider)
    if args.json:
        print(
            json.dumps(
                {
                    "provider": balance.provider,
                    "amount": str(balance.amount),
                    "currency": balance.currency,
                    "fetched_at": balance.fetched_at.isoformat(),
                }
            )
        )
    else:
        print(f"{balance.provider}: {balance.amount} {balance.currency}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m guard",
        description="Refuse provider-spending calls a prepaid balance can't cover.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run guarded top-ups and SMS against the bundled emulator"
    )
    demo.add_argument("--quiet", action="store_true", help="print only the summary")

    balance = commands.add_parser(
        "balance",
        help="print a provider balance (credentials from the environment)",
        description="Credentials come from the environment: "
        + "; ".join(f"{name}: {', '.join(env)}" for name, env in ENV.items()),
    )
    balance.add_argument("provider", choices=sorted(ENV))
    balance.add_argument("--base-url", help="API root, e.g. an emulator's URL")
    balance.add_argument("--json", action="store_true", help="print JSON")
    balance.add_argument(
        "--timeout", type=float, default=10.0, help="seconds (default: 10)"
    )

    emulator = commands.add_parser(
        "emulator", help="serve the OneClickDZ and Clickatell emulator"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line; return the exit code.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return asyncio.run(run_demo(quiet=args.quiet))
        if args.command == "emulator":
            from .testing._emulator import main as emulator_main

            return emulator_main(["--host", args.host, "--port", str(args.port)])
        return asyncio.run(_balance(args))
    except UsageError as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ProviderAuthError as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except BalanceUnavailable as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except GuardError as exc:  # pragma: no cover - every GuardError is above
        print(f"guard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
