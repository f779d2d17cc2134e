"""
`BalanceMonitor`: low-balance alerts, once per crossing, fleet-wide.

Readings come from the guard: every balance it fetches (a ``fetched``
event), the cached balance once calls settled as spent (debited, with
``settle="debit"``), and a poll every *interval* through
`BalanceGuard.balance` (so a poll is served by the cache, joins a fetch in
flight, and respects the auth cooldown). The guard's hook only queues a
reading: the state machine runs on the monitor's own task, and each
notifier has its own queue and task (``_delivery.py``).

Spending is not followed call by call (a hook on every guarded call would
cost each call an event): a tick samples the guard's count of what calls
spent, ``AccountState.spent``, a few times a second. A change means a
look at the cached balance, and the samples give the forecast its rate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .. import _sync
from .._logs import digest, fields, log
from .._money import MONEY, ZERO
from ..errors import ConfigurationError, GuardError
from ._delivery import Channel, Counts, Notifier, Outcome
from ._redis_state import RedisAlertState, redis_of
from ._state import AlertState, Applied, MemoryAlertState, Wish
from ._values import BalanceAlert, Forecast, Threshold
from ._watch import Watched, _Watch, count, now_us, positive

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Mapping
    from types import TracebackType

    from .._events import GuardEvent
    from .._guard import BalanceGuard
    from ..typing import Provider

__all__ = ["BalanceMonitor", "Watched", "capture"]


T = TypeVar("T")

# Alerts also go to these lists while they are registered (guard.testing's
# capture_alerts and the guard_alerts fixture).
capture: list[list[BalanceAlert]] = []

# Readings waiting for the state machine, per monitor; past this many the
# oldest are dropped (a stalled Redis must not grow memory without bound).
_MAX_READINGS = 10_000
# A forecast's rate is measured over at least this many seconds of watching,
# so that the first spend after start does not look like a stampede.
_MIN_SPAN = 60.0
_FORECAST_REARM = 1.05
# Seconds between samples of what calls spent.
_TICK = 0.25
Limit = (Threshold, Forecast)


class BalanceMonitor:
    """
    Alert when a watched account's balance falls below a threshold: once
    per crossing, with one ``"recovered"`` alert when a refill lifts it
    back, and once between all the processes of a fleet whose guard shares
    a Redis store.

    ::

        monitor = BalanceMonitor(guard=g, interval=300)
        monitor.watch(oneclick, [Threshold(5000), Threshold(1000, level="critical")],
                      notify=[on_alert, Webhook("https://ops.example/hooks/guard")])
        async with monitor:      # or `with monitor:` from threaded code
            ...

    Every balance the guard learns counts: those fetched for guarded calls
    and `BalanceGuard.balance`, the cached balance a successful call was
    debited from, and a poll every *interval* seconds made through the
    guard (a cached balance serves it; never more often than the guard's
    ``ttl``). Delivery runs on the monitor's own tasks: a slow or failing
    notifier never slows a guarded call.

    Args:
        guard: The guard to watch; default: the process-wide default
            guard (`guard.get_default_guard`), looked up on start.
        interval: Seconds between polls of each watched account (at least
            the guard's ``ttl``).
        queue_size: Alerts waiting per notifier; more are dropped (with a
            WARNING, counted in `alert_counts`).
        retries: Further attempts after a notifier failed.
        backoff: Seconds before the first retry, doubled for each next.
        max_backoff: Cap on a retry's wait.
        timeout: Seconds one delivery attempt may take.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        guard: BalanceGuard | None = None,
        *,
        interval: float = 300.0,
        queue_size: int = 100,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self._guard = guard
        self.interval = positive("interval", interval)
        self.queue_size = count("queue_size", queue_size, least=1)
        self.retries = count("retries", retries, least=0)
        self.backoff = positive("backoff", backoff, zero_ok=True)
        self.max_backoff = positive("max_backoff", max_backoff, zero_ok=True)
        self.timeout = positive("timeout", timeout)
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._pending: list[
            tuple[Provider, list[Threshold], list[Forecast], list[Notifier]]
        ] = []
        self._counts: Counts = collections.Counter()
        self._readings: collections.deque[tuple[_Watch, Decimal, int]] = (
            collections.deque(maxlen=_MAX_READINGS)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._state: AlertState = MemoryAlertState()
        self._started = 0.0
        self._sync = False

    def __repr__(self) -> str:
        return (
            f"<BalanceMonitor interval={self.interval:g} "
            f"accounts={len(self._watches) + len(self._pending)} "
            f"running={self._loop is not None}>"
        )

    @property
    def guard(self) -> BalanceGuard:
        """The guard watched (the default guard if none was given)."""
        if self._guard is None:
            from .._require import get_default_guard

            self._guard = get_default_guard()
        return self._guard

    # -- configuration ----------------------------------------------------

    def watch(
        self,
        provider: Provider,
        thresholds: Iterable[Threshold | Forecast],
        *,
        notify: Iterable[Notifier] = (),
    ) -> None:
        """
        Watch *provider*'s account: alert *notify* (plain or async
        callables taking a `BalanceAlert`) when its balance crosses one of
        *thresholds*, or a `Forecast` says it runs out soon.

        Call it before the monitor starts, or from its event loop.

        Raises:
            ConfigurationError: No thresholds, one that is not a
                `Threshold` or `Forecast`, two of the same amount and
                level, a notifier that is not callable, or an account
                already watched.
        """
        limits = list(thresholds)
        if not limits:
            raise ConfigurationError("watch() needs at least one Threshold")
        found = [t for t in limits if not isinstance(cast("object", t), Limit)]
        if found:
            raise ConfigurationError(
                f"thresholds must be Threshold or Forecast values, got {found[0]!r}"
            )
        if len({t.key for t in limits}) != len(limits):
            raise ConfigurationError("watch() got the same threshold twice")
        notifiers = list(notify)
        for notifier in notifiers:
            if not callable(notifier):
                raise ConfigurationError(
                    f"notify takes callables taking a BalanceAlert, got {notifier!r}"
                )
        plain = [t for t in limits if isinstance(t, Threshold)]
        forecasts = [t for t in limits if isinstance(t, Forecast)]
        if self._loop is None:
            if any(p[0] is provider for p in self._pending):
                raise ConfigurationError(f"{provider.name}: account already watched")
            self._pending.append((provider, plain, forecasts, notifiers))
        else:
            self._add(provider, plain, forecasts, notifiers)

    def _add(
        self,
        provider: Provider,
        thresholds: list[Threshold],
        forecasts: list[Forecast],
        notifiers: list[Notifier],
    ) -> None:
        tracked = self.guard._track(provider)
        key = (tracked.provider.name, tracked.digest)
        if key in self._watches:
            raise ConfigurationError(f"{provider.name}: account already watched")
        watch = _Watch(provider, tracked, thresholds, forecasts)
        for notifier in notifiers:
            channel = Channel(
                notifier,
                self._counts,
                size=self.queue_size,
                retries=self.retries,
                backoff=self.backoff,
                max_backoff=self.max_backoff,
                timeout=self.timeout,
            )
            channel.start()
            watch.channels.append(channel)
        self._watches[key] = watch
        if self._wake is not None:
            self._wake.set()  # let the poller see it

    # -- reads (metrics, dashboards) ---------------------------------------

    def watched(self) -> tuple[Watched, ...]:
        """
        Return the accounts watched, with their thresholds.
        """
        return tuple(
            Watched(
                provider=w.tracked.provider.name,
                account=w.tracked.digest,
                currency=w.tracked.provider.currency,
                thresholds=tuple((t.below, t.level) for t in w.thresholds),
            )
            for w in list(self._watches.values())
        )

    def level(self, provider: str, account: str) -> str | None:
        """
        Return the level of the lowest threshold now fired on the account
        (*provider* name, *account* digest), or None when none is (or it
        is not watched). With a shared state, as of this process's last
        reading.
        """
        watch = self._watches.get((provider, account))
        if watch is None:
            return None
        for threshold in reversed(watch.thresholds):
            if threshold.key in watch.fired:
                return threshold.level
        return None

    def alert_counts(self) -> Mapping[tuple[str, Outcome], int]:
        """
        Return deliveries so far by ``(level, outcome)``: one per alert and
        notifier; *outcome* is ``"delivered"``, ``"failed"`` (retries
        spent) or ``"dropped"`` (its queue was full, or the monitor stopped
        first).
        """
        return dict(self._counts)

    # -- running ----------------------------------------------------------

    async def __aenter__(self) -> BalanceMonitor:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> BalanceMonitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """
        Start watching from synchronous code: the monitor runs on guard's
        private event loop, as the synchronous `require_balance` does.

        Raises:
            RuntimeError: Called from a running event loop (use
                ``async with monitor``).
        """
        _sync.run(self.start_async, guard=self.guard)
        self._sync = True

    def stop(self) -> None:
        """
        Stop a monitor started with `start`, delivering what is queued
        (each notifier for at most *timeout* seconds).
        """
        if self._sync:
            self._sync = False
            _sync.run(self.aclose)

    def flush_sync(self) -> None:
        """
        `flush`, from synchronous code, for a monitor started with `start`.
        """
        _sync.run(self.flush)

    async def start_async(self) -> None:
        """
        Start watching on the running event loop (``async with monitor``
        does it).

        Raises:
            RuntimeError: The monitor is running already.
        """
        if self._loop is not None:
            raise RuntimeError("the BalanceMonitor is running already")
        guard = self.guard
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._started = time.monotonic()
        shared = redis_of(guard.store)
        self._state = MemoryAlertState() if shared is None else RedisAlertState(*shared)
        pending, self._pending = self._pending, []
        for provider, thresholds, forecasts, notifiers in pending:
            self._add(provider, thresholds, forecasts, notifiers)
        guard.add_hook(self._hook, kinds=("fetched",))
        self._tasks = [
            self._loop.create_task(self._evaluate()),
            self._loop.create_task(self._poll()),
            self._loop.create_task(self._tick()),
        ]

    async def aclose(self) -> None:
        """
        Stop watching: apply the readings already taken, deliver what is
        queued (each notifier for at most *timeout* seconds), then stop.
        Idempotent.
        """
        if self._loop is None:
            return
        self.guard.remove_hook(self._hook)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._look()
        with contextlib.suppress(Exception):
            await self._drain()
        for watch in self._watches.values():
            for channel in watch.channels:
                await channel.stop(self.timeout)
        await self._state.close()
        # Watch again after a restart: back to pending, channels anew.
        self._pending = [
            (
                w.provider,
                w.thresholds,
                w.forecasts,
                [c.notifier for c in w.channels],
            )
            for w in self._watches.values()
        ]
        self._watches = {}
        self._loop = None

    async def flush(self) -> None:
        """
        Wait until every reading taken so far went through the state
        machine and every alert queued was delivered (or given up).
        """
        if self._loop is None:
            return
        if asyncio.get_running_loop() is not self._loop:
            future = asyncio.run_coroutine_threadsafe(self.flush(), self._loop)
            await asyncio.wrap_future(future)
            return
        self._look()
        await self._drain()
        for watch in list(self._watches.values()):
            for channel in watch.channels:
                await channel.queue.join()

    # -- the guard's hook: cheap, never blocks ------------------------------

    def _hook(self, event: GuardEvent) -> None:
        # Subscribed to "fetched" only: a balance the guard just fetched.
        watch = self._watches.get((event.provider, event.account))
        loop = self._loop
        if watch is None or loop is None:
            return
        # The entry just stored, which counts calls that settled during
        # the fetch; the event has the amount as the provider said it.
        entry = watch.tracked.seen()
        amount = event.amount if entry is None else entry.amount
        assert amount is not None  # a fetched event carries the balance
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - guards emit from their loop
            running = None
        if running is loop:
            self._take(watch, amount, now_us())
        else:
            loop.call_soon_threadsafe(self._take, watch, amount, now_us())

    def _take(self, watch: _Watch, amount: Decimal, at_us: int) -> None:
        self._readings.append((watch, amount, at_us))
        assert self._wake is not None
        self._wake.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            self._look()

    def _look(self) -> None:
        """
        Sample what calls spent on each account; where it changed, the
        cached balance (debited, or gone) gets a look.
        """
        now = time.monotonic()
        changed = False
        for watch in self._watches.values():
            spent = watch.tracked.stats.spent
            if spent != watch.spent:
                watch.spent = spent
                watch.samples.append((now, spent))
                watch.peek = changed = True
        if changed:
            assert self._wake is not None
            self._wake.set()

    # -- the state machine --------------------------------------------------

    async def _evaluate(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        assert self._lock is not None
        async with self._lock:
            while True:
                if self._readings:
                    watch, amount, at_us = self._readings.popleft()
                    await self._apply(watch, amount, at_us)
                    continue
                peeks = [w for w in self._watches.values() if w.peek]
                if not peeks:
                    return
                for watch in peeks:
                    watch.peek = False
                    await self._peek(watch)

    async def _peek(self, watch: _Watch) -> None:
        account = watch.tracked.account
        try:
            entry = await self._at_home(lambda: self.guard.store.read(account))
        except GuardError as exc:
            log.info(
                "%s: no cached balance to check: %s",
                account.provider,
                exc,
                extra=fields(
                    "monitor_read_failed",
                    provider=account.provider,
                    account=digest(account.key),
                ),
            )
            return
        # An inexact entry may count a spend twice: wait for a fetch.
        if entry is not None and entry.exact:
            await self._apply(watch, entry.amount, now_us())

    async def _apply(self, watch: _Watch, amount: Decimal, at_us: int) -> None:
        wishes: list[Wish] = []
        for threshold in watch.thresholds:
            if amount <= threshold.below:
                wishes.append(Wish(threshold.key, fire=True))
            elif amount > threshold.rearm_above:
                wishes.append(Wish(threshold.key, fire=False))
        hours: dict[str, tuple[float, Decimal] | None] = {}
        for forecast in watch.forecasts:
            left = hours[forecast.key] = self._hours_left(watch, amount, forecast)
            if left is not None and left[0] < forecast.hours:
                wishes.append(Wish(forecast.key, fire=True))
            elif left is None or left[0] > forecast.hours * _FORECAST_REARM:
                wishes.append(Wish(forecast.key, fire=False))
        if not wishes:
            return
        account = watch.tracked.account
        try:
            applied = await self._at_home(
                lambda: self._state.apply(account.key, at_us, wishes)
            )
        except GuardError as exc:
            log.warning(
                "%s: alert state not updated: %s",
                account.provider,
                exc,
                extra=fields(
                    "alert_state_failed",
                    provider=account.provider,
                    account=digest(account.key),
                ),
            )
            return
        if applied.now_fired is not None:
            watch.fired = applied.now_fired
        self._alert(watch, amount, applied, hours)

    def _alert(
        self,
        watch: _Watch,
        amount: Decimal,
        applied: Applied,
        hours: dict[str, tuple[float, Decimal] | None],
    ) -> None:
        provider = watch.tracked.provider
        at = dt.datetime.now(dt.UTC)

        def alert(kind: Any, limit: Threshold | Forecast) -> BalanceAlert:
            left = hours.get(limit.key) if isinstance(limit, Forecast) else None
            return BalanceAlert(
                kind=kind,
                level=limit.level,
                threshold=left[1] if left else getattr(limit, "below", ZERO),
                balance=amount,
                provider=provider.name,
                account=watch.tracked.digest,
                currency=provider.currency,
                at=at,
                hours_left=left[0] if left else None,
            )

        alerts: list[BalanceAlert] = []
        recovered = [
            watch.by_key[k]
            for k in applied.armed
            if isinstance(watch.by_key[k], Threshold)
        ]
        if recovered:
            # One for the refill, naming the highest threshold recovered.
            alerts.append(alert("recovered", recovered[0]))
        alerts.extend(alert("low", watch.by_key[k]) for k in applied.fired)
        for item in alerts:
            for captured in capture:
                captured.append(item)
            log.info(
                "guard alert: %s",
                item,
                extra=fields(
                    "alert",
                    provider=item.provider,
                    account=item.account,
                    kind=item.kind,
                    level=item.level,
                    balance=item.balance,
                    threshold=item.threshold,
                ),
            )
            for channel in watch.channels:
                channel.put(item)

    def _hours_left(
        self, watch: _Watch, amount: Decimal, forecast: Forecast
    ) -> tuple[float, Decimal] | None:
        """
        Hours *amount* lasts at the rate calls spent over the forecast's
        window, and what that rate spends in the forecast's hours; None
        when nothing was spent.
        """
        now = time.monotonic()
        samples = watch.samples
        # Keep one sample older than the longest window: its base.
        horizon = now - max(f.window for f in watch.forecasts)
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        since = now - forecast.window
        base = samples[0][1]
        for when, spent in samples:
            if when > since:
                break
            base = spent
        spent = MONEY.subtract(samples[-1][1], base)
        if not spent:
            return None
        span = min(forecast.window, max(_MIN_SPAN, now - self._started))
        per_hour = float(spent) * 3600.0 / span
        # An estimate, not money that moves: rounded to cents.
        return float(amount) / per_hour, Decimal(f"{per_hour * forecast.hours:.2f}")

    async def _at_home(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        # The store (and its Redis client) belongs to the guard's loop.
        loops = self.guard._loops
        if loops.at_home():
            return await make()
        return await loops.call(make())

    # -- polling ------------------------------------------------------------

    async def _poll(self) -> None:
        guard = self.guard
        while True:
            for watch in list(self._watches.values()):
                try:
                    balance = await guard.balance(watch.provider)
                except GuardError as exc:
                    log.info(
                        "%s: balance poll failed: %s",
                        watch.provider.name,
                        exc,
                        extra=fields(
                            "monitor_poll_failed",
                            provider=watch.provider.name,
                            account=watch.tracked.digest,
                        ),
                    )
                    continue
                # As of its fetch: a cached balance is no news against a
                # newer reading (and its debits are looked at anyway).
                at_us = int(balance.fetched_at.timestamp() * 1_000_000)
                self._readings.append((watch, balance.amount, at_us))
                assert self._wake is not None
                self._wake.set()
            # Never faster than the guard trusts a balance: a poll sooner
            # would be served by the cache anyway.
            await asyncio.sleep(max(self.interval, guard.ttl))
