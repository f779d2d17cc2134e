"""
``python -m guard watch``: a live view of provider accounts.

Each poll fetches every balance afresh and shows, per account, the balance,
what running calls hold (this process's, or every process's with a Redis
store), what is available, the age of the reading, the spend per hour and
the time to empty (from the balance's falls over the last hour: refills
don't count), and the alert level when a `guard.BalanceMonitor` is given
(the command line makes one of its ``--below`` thresholds). A provider
that stops answering is shown "unavailable since ..." with its last known
balance, and polled on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import decimal
import json
import random
import sys
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, TextIO

import attrs

from ._everywhere import held_everywhere, refresh
from ._money import MONEY, ZERO
from ._observe import held_and_available
from .errors import BalanceUnavailable, ProviderAuthError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from rich.table import Table

    from ._guard import BalanceGuard
    from .monitor import BalanceMonitor
    from .testing import Emulator
    from .typing import Provider

__all__ = ["Reading", "Watcher", "watch"]

Mode = Literal["rich", "plain", "json"]

WINDOW = 3600.0
"""Seconds of balance readings the spend rate is computed over."""

# A rate is an estimate: rounded, where MONEY traps anything inexact.
RATES = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
CENTS = Decimal("0.01")


@attrs.frozen
class Reading:
    """
    One account at one poll.

    Attributes:
        provider: The provider's name.
        account: The non-secret account digest.
        currency: The unit of the amounts.
        at: When the poll ended (UTC).
        balance: The last balance seen; None if never learned.
        held: What running calls hold: this process's, or every
            process's with a Redis store (None while Redis can't tell).
        available: The balance less that; None if either is unknown.
        fetched_at: When the provider reported the balance.
        spend_per_hour: The balance's falls over the last hour, per hour;
            None until two readings span some time.
        time_to_empty: Seconds until *available* runs out at that rate; None
            while nothing is spent.
        level: The level of the lowest threshold fired, from the monitor,
            as of this poll's balance; None when none is (or no monitor).
        unavailable_since: When the provider stopped answering; None while
            it answers.
        error: Why the last poll failed, one line.
        sandbox: The account's key is a sandbox key: its balance is no money.
    """

    provider: str
    account: str
    currency: str
    at: dt.datetime
    balance: Decimal | None
    held: Decimal | None
    available: Decimal | None
    fetched_at: dt.datetime | None
    spend_per_hour: Decimal | None
    time_to_empty: float | None
    level: str | None
    unavailable_since: dt.datetime | None
    error: str | None
    sandbox: bool = False

    @property
    def age(self) -> float | None:
        """Seconds since the provider reported the balance."""
        if self.fetched_at is None:
            return None
        return max((self.at - self.fetched_at).total_seconds(), 0.0)

    def to_json(self) -> dict[str, object]:
        """The reading as JSON: amounts as decimal strings, times in ISO 8601."""
        return {
            "at": self.at.isoformat(),
            "provider": self.provider,
            "account": self.account,
            "currency": self.currency,
            "balance": _str(self.balance),
            "held": _str(self.held),
            "available": _str(self.available),
            "fetched_at": _iso(self.fetched_at),
            "age_seconds": None if self.age is None else round(self.age, 3),
            "spend_per_hour": _str(self.spend_per_hour),
            "time_to_empty_seconds": (
                None if self.time_to_empty is None else round(self.time_to_empty)
            ),
            "level": self.level,
            "unavailable_since": _iso(self.unavailable_since),
            "error": self.error,
            "sandbox": self.sandbox,
        }

    def line(self) -> str:
        """The reading as a short plain text."""
        if self.balance is None:
            figures = "balance unknown"
        else:
            figures = (
                f"{money(self.balance, self.currency)} "
                f"held {money(self.held)} "
                f"available {money(self.available)} "
                f"age {duration(self.age)}"
            )
        rate = "-" if self.spend_per_hour is None else money(self.spend_per_hour)
        # A sandbox key's balance is no money: say so wherever it is shown.
        name = f"{self.provider} (SANDBOX)" if self.sandbox else self.provider
        text = (
            f"{name} {figures} spend/h {rate} "
            f"empty in {duration(self.time_to_empty)} level {self.level or '-'}"
        )
        if self.unavailable_since is not None:
            text += f" UNAVAILABLE since {self.unavailable_since:%H:%M:%S}"
        return text


class Watcher:
    """
    Polls a guard's accounts and keeps what the rates need.

    Args:
        guard: Fetches the balances (and holds, when calls run through it).
        providers: The accounts to watch.
        monitor: A low-balance monitor, for the alert levels.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        guard: BalanceGuard,
        providers: Sequence[Provider],
        *,
        monitor: BalanceMonitor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self.providers = tuple(providers)
        self.monitor = monitor
        self.clock = clock
        self._errors: dict[int, str | None] = {}
        # Per account: (monotonic time, balance) readings of the last hour.
        self._history: dict[str, collections.deque[tuple[float, Decimal]]] = {}

    async def poll(self) -> list[Reading]:
        """
        Fetch every balance afresh and return the readings.

        Raises:
            ProviderAuthError: Credentials were refused (asking again would
                only lock the account out).
        """
        for i, provider in enumerate(self.providers):
            try:
                await self.guard.balance(provider, fresh=True)
            except ProviderAuthError:
                raise
            except BalanceUnavailable as exc:
                self._errors[i] = str(exc)
            else:
                self._errors[i] = None
        if self.monitor is not None:
            # The levels of this poll's balances, not of the last one's.
            await self.monitor.flush()
        await refresh(self.guard)
        everywhere = held_everywhere(self.guard)
        states = {(s.provider, s.account): s for s in self.guard.accounts()}
        now, at = self.clock(), dt.datetime.now(dt.UTC)
        readings = []
        for i, provider in enumerate(self.providers):
            digest = self.guard._track(provider).digest
            state = states[provider.name, digest]
            balance = None if state.balance is None else state.balance.amount
            rate = None
            if balance is not None:
                rate = self._rate(digest, now, balance)
            held, available = held_and_available(state, everywhere)
            left = None
            if rate and available is not None:
                left = float(RATES.divide(max(available, ZERO), rate)) * 3600
            readings.append(
                Reading(
                    provider=state.provider,
                    account=state.account,
                    currency=state.currency,
                    at=at,
                    balance=balance,
                    held=held,
                    available=available,
                    fetched_at=None
                    if state.balance is None
                    else state.balance.fetched_at,
                    spend_per_hour=rate,
                    time_to_empty=left,
                    level=(
                        None
                        if self.monitor is None
                        else self.monitor.level(state.provider, state.account)
                    ),
                    unavailable_since=state.unavailable_since,
                    error=self._errors.get(i),
                    sandbox=state.sandbox,
                )
            )
        return readings

    def _rate(self, account: str, now: float, balance: Decimal) -> Decimal | None:
        history = self._history.setdefault(account, collections.deque())
        history.append((now, balance))
        while history and history[0][0] < now - WINDOW:
            history.popleft()
        elapsed = now - history[0][0]
        if elapsed <= 0:
            return None
        spent = ZERO
        for (_, before), (_, after) in zip(
            list(history), list(history)[1:], strict=False
        ):
            if after < before:  # a rise is a refill, not negative spending
                spent = MONEY.add(spent, MONEY.subtract(before, after))
        per_hour = RATES.divide(RATES.multiply(spent, 3600), Decimal(elapsed))
        return per_hour.quantize(CENTS, context=RATES)


async def watch(
    guard: BalanceGuard,
    providers: Sequence[Provider],
    *,
    interval: float,
    mode: Mode,
    out: TextIO | None = None,
    monitor: BalanceMonitor | None = None,
    polls: int | None = None,
) -> None:
    """
    Poll every *interval* seconds and show the readings, until cancelled
    (or after *polls* polls).

    Raises:
        ProviderAuthError: Credentials were refused.
    """
    out = out or sys.stdout
    watcher = Watcher(guard, providers, monitor=monitor)
    if mode == "rich":
        await _live(watcher, interval, polls, out)
        return
    async for readings in _polls(watcher, interval, polls):
        if mode == "json":
            for reading in readings:
                print(json.dumps(reading.to_json()), file=out, flush=True)
        else:
            line = " | ".join(r.line() for r in readings)
            print(f"{readings[0].at:%H:%M:%S} {line}", file=out, flush=True)


async def _polls(
    watcher: Watcher, interval: float, polls: int | None
) -> AsyncIterator[list[Reading]]:
    done = 0
    while polls is None or done < polls:
        started = time.monotonic()
        yield await watcher.poll()
        done += 1
        if polls is None or done < polls:
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.0))


async def _live(
    watcher: Watcher, interval: float, polls: int | None, out: TextIO
) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    with Live(console=console, auto_refresh=False) as live:
        async for readings in _polls(watcher, interval, polls):
            live.update(_table(readings), refresh=True)


def _table(readings: list[Reading]) -> Table:
    from rich.table import Table

    table = Table(
        title=f"guard watch  {readings[0].at:%Y-%m-%d %H:%M:%S} UTC",
        title_justify="left",
    )
    for name in (
        "Provider",
        "Balance",
        "Held",
        "Available",
        "Age",
        "Spend/h",
        "Time to empty",
        "Level",
        "Status",
    ):
        table.add_column(
            name, justify="left" if name in ("Provider", "Status") else "right"
        )
    for r in readings:
        status = (
            "ok"
            if r.unavailable_since is None
            else f"[red]unavailable since {r.unavailable_since:%H:%M:%S}[/red]"
        )
        table.add_row(
            r.provider,
            money(r.balance, r.currency),
            money(r.held),
            money(r.available),
            duration(r.age),
            "-" if r.spend_per_hour is None else money(r.spend_per_hour),
            duration(r.time_to_empty),
            r.level or "-",
            status,
        )
    return table


def money(amount: Decimal | None, unit: str = "") -> str:
    """An amount as people read it: ``2,500.00 DZD``; ``-`` if unknown."""
    if amount is None:
        return "-"
    return f"{amount:,.2f} {unit}".rstrip()


def duration(seconds: float | None) -> str:
    """Seconds as ``42s``, ``7m05s``, ``3h20m`` or ``2d04h``; ``-`` if unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@contextlib.asynccontextmanager
async def emulated_traffic(
    emu: Emulator, guard: BalanceGuard, providers: Sequence[Provider]
) -> AsyncIterator[None]:
    """
    Guarded spends against the emulator's demo accounts while the block
    runs, refilled when they run low: something for ``watch --emulator`` to
    show.
    """

    async def spend(provider: Provider) -> None:
        amount = Decimal(random.choice((50, 100, 200, 500)))
        if provider.currency != "DZD":
            amount = Decimal(random.randint(1, 3))
        account = emu.account(provider)
        async with guard.reserve(provider, amount):
            await asyncio.sleep(random.uniform(0.2, 1.0))
            emu.set_balance(account, emu.balance(account) - amount)
        if emu.balance(account) < amount * 10:
            emu.set_balance(account, 10000 if provider.currency == "DZD" else 100)

    async def traffic() -> None:
        while True:
            for provider in providers:
                with contextlib.suppress(Exception):
                    await spend(provider)
            await asyncio.sleep(random.uniform(0.5, 2.0))

    task = asyncio.get_running_loop().create_task(traffic())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()
