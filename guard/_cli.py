from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__
from ._guard import BalanceGuard
from .errors import BalanceUnavailable, GuardError, ProviderAuthError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .testing import Emulator
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
    "clickatell-platform": ("GUARD_CLICKATELL_API_KEY",),
}


class UsageError(Exception):
    """A command line or environment that cannot work."""


class _Parser(argparse.ArgumentParser):
    # One line on stderr for every usage error, as for the others.
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        msg = f"must be a number of seconds above 0, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        msg = f"must be a port number from 0 to 65535, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _provider(name: str, base_url: str | None) -> Provider:
    from .providers import Clickatell, ClickatellPlatform, OneClickDZ

    missing = [var for var in ENV[name] if not os.environ.get(var)]
    if missing:
        raise UsageError(f"set {', '.join(missing)} to read the {name} balance")
    values = [os.environ[var] for var in ENV[name]]
    where: dict[str, Any] = {} if base_url is None else {"base_url": base_url}
    try:
        if name == "oneclickdz":
            return OneClickDZ(values[0], **where)
        if name == "clickatell-platform":
            return ClickatellPlatform(values[0], **where)
        return Clickatell(values[0], values[1], values[2], **where)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


async def _balance(args: argparse.Namespace) -> int:
    provider = _provider(args.provider, args.base_url)
    async with BalanceGuard(fetch_timeout=args.timeout) as guard:
        balance = await guard.balance(provider)
        (state,) = guard.accounts()
    if args.json:
        print(
            json.dumps(
                {
                    "provider": balance.provider,
                    "amount": str(balance.amount),
                    "currency": balance.currency,
                    "fetched_at": balance.fetched_at.isoformat(),
                    "key_type": state.key_type,
                    "sandbox": balance.sandbox,
                }
            )
        )
    else:
        # A sandbox key's balance is no money: say so where it is shown.
        kind = "" if state.key_type is None else f" ({state.key_type} key)"
        print(f"{balance.provider}: {balance.amount} {balance.currency}{kind}")
    return 0


def _banner(emu: Emulator) -> str:
    from .testing import (
        DEMO_CLICKATELL_API_ID,
        DEMO_CLICKATELL_PASSWORD,
        DEMO_CLICKATELL_USER,
        DEMO_ONECLICKDZ_KEY,
    )

    oneclick = emu.balance(DEMO_ONECLICKDZ_KEY)
    credits = emu.balance(DEMO_CLICKATELL_USER)
    minutes = emu.ip_block_seconds / 60
    return "\n".join(
        [
            f"guard provider emulator listening on {emu.url}",
            f"  OneClickDZ  X-Access-Token: {DEMO_ONECLICKDZ_KEY}  "
            f"balance: {oneclick} DZD",
            f"  Clickatell  user: {DEMO_CLICKATELL_USER}  "
            f"password: {DEMO_CLICKATELL_PASSWORD}  "
            f"api_id: {DEMO_CLICKATELL_API_ID}  credits: {credits}",
            # The real API does this too; a client that retries bad keys
            # locks itself out here first.
            f"  As the real OneClickDZ does, {emu.auth_failure_limit} bad "
            f"X-Access-Token values lock the caller's address out for "
            f"{minutes:g} minutes (403 IP_BLOCKED); restart to lift it.",
            "Press Ctrl+C to stop.",
        ]
    )


async def _serve(
    emu: Emulator, *, until: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    async with emu:
        print(_banner(emu), file=out or sys.stdout, flush=True)
        await (until or asyncio.Event()).wait()


def _emulator(args: argparse.Namespace) -> int:
    from .testing import Emulator

    emu = Emulator.with_demo_accounts(host=args.host, port=args.port)
    try:
        asyncio.run(_serve(emu))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"guard: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0  # pragma: no cover - _serve only ends by an exception


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m guard",
        description="Refuse provider-spending calls a prepaid balance can't cover.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run guarded top-ups and SMS against the bundled emulator"
    )
    demo.add_argument(
        "--quiet", action="store_true", help="print nothing unless a check fails"
    )

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
        "--timeout", type=_seconds, default=10.0, help="seconds (default: 10)"
    )

    emulator = commands.add_parser(
        "emulator",
        help="serve the OneClickDZ and Clickatell emulator with demo accounts",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    emulator.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="default: %(default)s; 0 picks a free port (printed)",
    )
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
            return _emulator(args)
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
