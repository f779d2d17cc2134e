from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__
from ._guard import BalanceGuard
from .errors import BalanceUnavailable, GuardError, ProviderAuthError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._watch import Mode
    from .history import BaseHistory
    from .monitor import BalanceMonitor, Threshold
    from .testing import Emulator
    from .typing import Provider

__all__ = ["main"]

# Exit codes: what a shell script branches on.
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNAVAILABLE = 4
EXIT_FLAGGED = 5  # import: some transactions' balances don't add up

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


def _when(text: str) -> dt.datetime:
    # A date (midnight UTC) or an ISO-8601 time (UTC unless it says).
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        msg = f"must be a date (YYYY-MM-DD) or an ISO-8601 time, not {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        msg = f"must be a date (YYYY-MM-DD), not {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _below(text: str) -> tuple[str | None, Threshold]:
    # [PROVIDER:]LEVEL=AMOUNT: a threshold for one provider, or for all.
    from .monitor import Threshold

    where, _, rest = text.rpartition(":")
    level, sep, amount = rest.partition("=")
    try:
        if not sep:
            raise ValueError
        threshold = Threshold(amount.strip(), level=level)
    except ValueError:  # AmountError, ConfigurationError
        msg = f"must be [PROVIDER:]LEVEL=AMOUNT, such as warning=5000, not {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if where and where not in ENV:
        known = ", ".join(sorted(ENV))
        msg = f"names an unknown provider {where!r} (choose from {known})"
        raise argparse.ArgumentTypeError(msg)
    return where or None, threshold


def _history(db: str) -> BaseHistory:
    from .history import PostgresHistory, SQLiteHistory

    if db.startswith(("postgresql://", "postgres://")):
        return PostgresHistory(db)
    return SQLiteHistory(db)


async def _import(args: argparse.Namespace) -> int:
    from .history import import_oneclickdz
    from .providers import OneClickDZ

    provider = _provider("oneclickdz", args.base_url)
    assert isinstance(provider, OneClickDZ)
    async with _history(args.db) as history:
        result = await import_oneclickdz(
            history, provider, since=args.since, until=args.until
        )
    print(
        f"{result.added} new of {result.seen} transactions "
        f"({result.pages} pages) into {args.db}"
    )
    for t in result.flagged:
        print(
            f"guard: transaction {t.id} ({t.type} {t.amount}) does not add up: "
            f"{t.old_balance} -> {t.new_balance}",
            file=sys.stderr,
        )
    return EXIT_FLAGGED if result.flagged else 0


async def _report(args: argparse.Namespace) -> str:
    from .history import build_report, render

    if args.until < args.since:
        raise UsageError("--to is before --from")
    async with _history(args.db) as history:
        account = args.account
        if account is None:
            accounts = [a for _, a in await history.accounts(args.provider)]
            if len(accounts) > 1:
                raise UsageError(
                    f"{args.db} holds {len(accounts)} {args.provider} accounts; "
                    f"choose one with --account: {', '.join(accounts)}"
                )
            account = accounts[0] if accounts else None
        report = await build_report(
            history, args.since, args.until, provider=args.provider, account=account
        )
    return render(report, args.format)


def _write_report(args: argparse.Namespace) -> int:
    text = asyncio.run(_report(args))
    if args.output is None:
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"report written to {args.output}", file=sys.stderr)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from ._dashboard_demo import serve_dashboard

    if not args.emulator:
        raise UsageError(
            "only --emulator can be served from here; mount "
            "guard.aiohttp.dashboard() in your application"
        )
    try:
        return asyncio.run(
            serve_dashboard(host=args.host, port=args.port, token=args.token)
        )
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"guard: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


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


async def _watch(args: argparse.Namespace) -> int:
    from ._watch import emulated_traffic

    unknown = [name for name in args.providers if name not in ENV]
    if unknown:
        raise UsageError(
            f"watch: unknown provider {unknown[0]!r} (choose from "
            f"{', '.join(sorted(ENV))})"
        )
    names = list(dict.fromkeys(args.providers))
    mode = _mode(args)
    options = {"fetch_timeout": args.timeout, "outage_backoff": 0}
    if args.emulator:
        from .testing import (
            DEMO_CLICKATELL_API_ID,
            DEMO_CLICKATELL_PASSWORD,
            DEMO_CLICKATELL_PLATFORM_KEY,
            DEMO_CLICKATELL_USER,
            DEMO_ONECLICKDZ_KEY,
            Emulator,
        )

        async with Emulator.with_demo_accounts() as emu:
            emulated: dict[str, Provider] = {
                "oneclickdz": emu.oneclickdz(DEMO_ONECLICKDZ_KEY),
                "clickatell": emu.clickatell(
                    DEMO_CLICKATELL_USER,
                    DEMO_CLICKATELL_PASSWORD,
                    DEMO_CLICKATELL_API_ID,
                ),
                "clickatell-platform": emu.clickatell_platform(
                    DEMO_CLICKATELL_PLATFORM_KEY
                ),
            }
            providers = [emulated[n] for n in names or ENV]
            async with (
                BalanceGuard(**options) as guard,
                emulated_traffic(emu, guard, providers),
            ):
                await _watch_with(guard, providers, names or list(ENV), args, mode)
        return 0  # pragma: no cover - watch only ends by an exception
    if not names:
        names = [n for n in ENV if all(os.environ.get(v) for v in ENV[n])]
        if not names:
            raise UsageError(
                "watch: name a provider and set its credentials ("
                + "; ".join(f"{n}: {', '.join(env)}" for n, env in ENV.items())
                + "), or try --emulator"
            )
    providers = [_provider(name, args.base_url) for name in names]
    async with BalanceGuard(**options) as guard:
        await _watch_with(guard, providers, names, args, mode)
    return 0  # pragma: no cover - watch only ends by an exception


async def _watch_with(
    guard: BalanceGuard,
    providers: list[Provider],
    names: list[str],
    args: argparse.Namespace,
    mode: Mode,
) -> None:
    from ._watch import watch

    monitor = _monitor(guard, zip(names, providers, strict=True), args.below)
    async with contextlib.AsyncExitStack() as stack:
        if monitor is not None:
            await stack.enter_async_context(monitor)
        await watch(
            guard, providers, interval=args.interval, mode=mode, monitor=monitor
        )


def _monitor(
    guard: BalanceGuard,
    providers: Iterable[tuple[str, Provider]],
    below: list[tuple[str | None, Threshold]],
) -> BalanceMonitor | None:
    """
    A monitor of the thresholds given with --below, for the alert level:
    a provider's own replace those given for every provider. It alerts
    no one; watch's own polls give it the balances.
    """
    if not below:
        return None
    from .monitor import BalanceMonitor

    monitor = BalanceMonitor(guard=guard, interval=3600)
    for name, provider in providers:
        own = [t for where, t in below if where == name]
        thresholds = own or [t for where, t in below if where is None]
        if thresholds:
            monitor.watch(provider, thresholds)
    return monitor


def _mode(args: argparse.Namespace) -> Mode:
    if args.json:
        return "json"
    if not sys.stdout.isatty():
        return "plain"
    try:
        import rich  # noqa: F401
    except ImportError:  # pragma: no cover - the test extra has rich
        return "plain"
    return "rich"


def _banner(emu: Emulator) -> str:
    from .testing import (
        DEMO_CLICKATELL_API_ID,
        DEMO_CLICKATELL_PASSWORD,
        DEMO_CLICKATELL_PLATFORM_KEY,
        DEMO_CLICKATELL_USER,
        DEMO_ONECLICKDZ_KEY,
        PlatformAccount,
    )

    oneclick = emu.balance(DEMO_ONECLICKDZ_KEY)
    platform = emu.account(DEMO_CLICKATELL_PLATFORM_KEY)
    assert isinstance(platform, PlatformAccount)
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
            f"  Clickatell Platform  Authorization: {DEMO_CLICKATELL_PLATFORM_KEY}  "
            f"balance: {platform.balance} {platform.currency}",
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

    watch = commands.add_parser(
        "watch",
        help="a live view of provider balances (credentials as for balance)",
        description="Polls each balance and shows it with what is held, what "
        "is available, its age, the spend per hour, the time to empty and the "
        "alert level of the thresholds given with --below. A table on a "
        "terminal (the cli extra), a line per poll otherwise, JSON lines "
        "with --json. Credentials as for balance; with no provider named, "
        "every one whose credentials are set.",
    )
    watch.add_argument(
        "providers",
        nargs="*",
        metavar="provider",
        help=f"{' or '.join(sorted(ENV))} (default: all with credentials)",
    )
    watch.add_argument(
        "--interval", type=_seconds, default=5.0, help="seconds (default: 5)"
    )
    watch.add_argument("--json", action="store_true", help="print JSON lines")
    watch.add_argument(
        "--emulator",
        action="store_true",
        help="watch the bundled emulator's demo accounts, with traffic",
    )
    watch.add_argument("--base-url", help="API root, e.g. an emulator's URL")
    watch.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds (default: 10)"
    )
    watch.add_argument(
        "--below",
        type=_below,
        action="append",
        default=[],
        metavar="[PROVIDER:]LEVEL=AMOUNT",
        help="an alert threshold, shown as the level once the balance is at "
        "or below AMOUNT (repeat it: warning=5000 --below critical=1000); "
        "with PROVIDER, for that provider only, in its currency",
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

    imports = commands.add_parser(
        "import",
        help="copy a provider's own transactions into a history database",
        description="The key comes from GUARD_ONECLICKDZ_API_KEY. Exit code 5: "
        "some transactions' balances don't add up (listed on stderr).",
    )
    imports.add_argument("provider", choices=["oneclickdz"])
    imports.add_argument(
        "--db", required=True, help="an SQLite file, or a postgresql:// URL"
    )
    imports.add_argument("--from", dest="since", type=_when, help="date or time")
    imports.add_argument("--to", dest="until", type=_when, help="date or time")
    imports.add_argument("--base-url", help="API root, e.g. an emulator's URL")

    report = commands.add_parser(
        "report", help="daily balances, deposits, spend and refunds from a history"
    )
    report.add_argument(
        "--db", required=True, help="an SQLite file, or a postgresql:// URL"
    )
    report.add_argument("--from", dest="since", type=_day, required=True)
    report.add_argument("--to", dest="until", type=_day, required=True)
    report.add_argument("--format", choices=["csv", "json", "html"], default="csv")
    report.add_argument("--output", "-o", help="write here instead of stdout")
    report.add_argument("--provider", default="oneclickdz")
    report.add_argument("--account", help="the account digest, if several")

    board = commands.add_parser(
        "dashboard", help="serve the operator dashboard against the emulator"
    )
    board.add_argument(
        "--emulator",
        action="store_true",
        help="run the bundled emulator with live guarded traffic",
    )
    board.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    board.add_argument("--port", type=_port, default=8080, help="default: %(default)s")
    board.add_argument("--token", help="the bearer token (default: a random one)")
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
        if args.command == "import":
            return asyncio.run(_import(args))
        if args.command == "report":
            return _write_report(args)
        if args.command == "dashboard":
            return _dashboard(args)
        if args.command == "watch":
            try:
                return asyncio.run(_watch(args))
            except KeyboardInterrupt:
                return 0
            except BrokenPipeError:  # `| head`: the reader has seen enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
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
    except GuardError as exc:
        # A history that cannot be opened, an unreadable transaction list...
        print(f"guard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
