"""
Prometheus metrics for a `guard.BalanceGuard` (the ``prometheus`` extra).

::

    from guard.prometheus import metrics_handler

    app.router.add_get("/metrics", metrics_handler(guard))

with the process's other metrics too: ``metrics_handler(guard,
registry=REGISTRY)``. `GuardCollector` is the collector itself, for a
registry served otherwise.

The collector reads `guard.BalanceGuard.accounts` when Prometheus scrapes:
the guarded call pays nothing for it. Every series is labelled by
``provider``, ``account`` (the non-secret account digest, as in cache keys)
and ``currency``; none carries a credential. A balance the guard never
learned is an absent sample, never 0 or ``+Inf``.

**Held and available.** With a store of this process (the default
`guard.stores.MemoryStore`), ``guard_balance_held`` is what this process's
running calls hold and ``guard_balance_available`` the balance less that.
With a shared store (`guard.stores.RedisStore`, or a
`guard.stores.FallbackStore` over one), both are Redis-wide: what the
running calls of *every* process sharing the account hold, read from
Redis (holds whose lease ended are not counted), and the last balance
seen less that: what the next check would find. `metrics_handler` reads
them before it answers; a collector registered elsewhere reads them at
most once a second, waiting up to a second on the guard's event loop when
scraped from another thread (on that loop it can't wait, and shows the
figures read at the scrape before, at most a minute old). While Redis
can't be reached, or with no fresh figure, both are absent, never 0.

**Several worker processes.** Each worker's collector exports its own
view. With a Redis store every worker exports the same Redis-wide
``guard_balance_held`` and ``guard_balance_available``, and about the same
``guard_balance`` (the last each saw): aggregate them with ``max by
(provider, account)`` (or ``avg``), never ``sum``, which counts one figure
once per worker. Counters and the histogram are per process: ``sum`` them.
With a store of this process, each worker has its own balance and holds:
don't share an account between such workers.

prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
``MultiProcessCollector``) merges only the metric objects that write its
files (``Counter``, ``Gauge`` with a ``multiprocess_mode`` such as
``liveall`` or ``max``, ``Histogram``); custom collectors such as this one
are not carried. Either serve each worker's ``/metrics`` (its own port,
or a per-worker ``instance`` label), or register a `GuardCollector`
beside the ``MultiProcessCollector`` in the registry that serves: then
whichever worker answers gives the Redis-wide held and available (right
from any worker), its own last balance, and only its own counters
(useless merged: drop them, or take them from per-worker scrapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ._everywhere import held_everywhere, refresh
from ._observe import alert_counts, held_and_available, thresholds

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler
    from prometheus_client.metrics_core import Metric

    from ._guard import BalanceGuard
    from .monitor import BalanceMonitor

__all__ = ["GuardCollector", "metrics_handler"]

_LABELS = ("provider", "account", "currency")


class GuardCollector:
    """
    A Prometheus collector of one guard's balances and counters.

    Args:
        guard: The guard to read.
        monitor: A low-balance monitor (`guard.BalanceMonitor`): adds
            ``guard_balance_threshold{level}`` for the accounts it watches
            and ``guard_alerts_total{level,outcome}``.

    Series (labels ``provider``, ``account``, ``currency``, and those named):
        - ``guard_balance``: the last balance seen (debited since it was
          fetched with ``settle="debit"``);
        - ``guard_balance_held``: what running calls hold: this process's,
          or every process's with a Redis store (absent while unknown);
        - ``guard_balance_available``: the balance less that;
        - ``guard_balance_fetched_timestamp_seconds``: when the provider
          reported the balance;
        - ``guard_balance_threshold{level}``: the alert thresholds;
        - ``guard_calls_total{outcome}``: ``allowed``, ``refused``,
          ``unavailable``, ``failed_open``;
        - ``guard_fetches_total{outcome}``: ``ok``, ``unavailable``,
          ``auth``, ``bad_response``;
        - ``guard_spend_total``: amounts of calls settled as spent (its
          ``rate()`` is the burn rate, refills don't move it);
        - ``guard_fetch_duration_seconds``: a histogram of balance fetches;
        - ``guard_alerts_total{level,outcome}`` (no account labels):
          ``delivered``, ``failed``, ``dropped``.

    .. versionadded:: 0.2
    """

    def __init__(
        self, guard: BalanceGuard, *, monitor: BalanceMonitor | None = None
    ) -> None:
        self.guard = guard
        self.monitor = monitor

    def __repr__(self) -> str:
        return f"<GuardCollector {self.guard!r}>"

    def describe(self) -> list[Metric]:
        """
        The metric families, without samples: lets a registry refuse a
        second collector exporting the same names.
        """
        return _Families(monitored=self.monitor is not None).all()

    def collect(self) -> list[Metric]:
        """
        The guard's figures now.
        """
        f = _Families(monitored=self.monitor is not None)
        levels = thresholds(self.monitor)
        everywhere = held_everywhere(self.guard)
        for state in self.guard.accounts():
            labels = [state.provider, state.account, state.currency]
            # Unknown stays absent: a 0 would page, a +Inf would hide.
            held, left = held_and_available(state, everywhere)
            if held is not None:
                f.held.add_metric(labels, float(held))
            if left is not None:
                f.available.add_metric(labels, float(left))
            known = state.balance
            if known is not None:
                f.balance.add_metric(labels, float(known.amount))
                f.fetched.add_metric(labels, known.fetched_at.timestamp())
            for below, level in levels.get((state.provider, state.account), ()):
                f.threshold.add_metric([*labels, level], float(below))
            for outcome, count in state.calls.items():
                f.calls.add_metric([*labels, outcome], count)
            for outcome, count in state.fetches.items():
                f.fetches.add_metric([*labels, outcome], count)
            f.spend.add_metric(labels, float(state.spent))
            buckets = [
                (repr(bound), float(n)) for bound, n in state.fetch_seconds_buckets
            ]
            buckets.append(("+Inf", float(state.fetch_seconds_count)))
            f.duration.add_metric(labels, buckets, state.fetch_seconds_sum)
        for (level, outcome), count in sorted(alert_counts(self.monitor).items()):
            f.alerts.add_metric([level, outcome], count)
        return f.all()


class _Families:
    """
    One scrape's metric families, empty.
    """

    def __init__(self, *, monitored: bool) -> None:
        self.monitored = monitored
        self.balance = GaugeMetricFamily(
            "guard_balance", "Last balance seen by the guard.", labels=_LABELS
        )
        self.held = GaugeMetricFamily(
            "guard_balance_held",
            "Amount held by running guarded calls (every process's with Redis).",
            labels=_LABELS,
        )
        self.available = GaugeMetricFamily(
            "guard_balance_available",
            "Balance less what running calls hold (every process's with Redis).",
            labels=_LABELS,
        )
        self.fetched = GaugeMetricFamily(
            "guard_balance_fetched_timestamp_seconds",
            "When the provider reported the balance (Unix time).",
            labels=_LABELS,
        )
        self.threshold = GaugeMetricFamily(
            "guard_balance_threshold",
            "Low-balance alert threshold of a watched account.",
            labels=[*_LABELS, "level"],
        )
        self.calls = CounterMetricFamily(
            "guard_calls", "Guarded calls by outcome.", labels=[*_LABELS, "outcome"]
        )
        self.fetches = CounterMetricFamily(
            "guard_fetches",
            "Balance fetches by outcome.",
            labels=[*_LABELS, "outcome"],
        )
        self.spend = CounterMetricFamily(
            "guard_spend",
            "Amounts of guarded calls settled as spent.",
            labels=_LABELS,
        )
        self.duration = HistogramMetricFamily(
            "guard_fetch_duration_seconds",
            "Duration of balance fetches, retries included.",
            labels=_LABELS,
        )
        self.alerts = CounterMetricFamily(
            "guard_alerts",
            "Low-balance alerts by level and outcome.",
            labels=["level", "outcome"],
        )

    def all(self) -> list[Metric]:
        families: list[Metric] = [
            self.balance,
            self.held,
            self.available,
            self.fetched,
            self.calls,
            self.fetches,
            self.spend,
            self.duration,
        ]
        if self.monitored:
            families += [self.threshold, self.alerts]
        return families


def metrics_handler(
    guard: BalanceGuard,
    *,
    monitor: BalanceMonitor | None = None,
    registry: CollectorRegistry | None = None,
) -> Handler:
    """
    Return an aiohttp handler serving *guard*'s metrics::

        app.router.add_get("/metrics", metrics_handler(guard))

    Args:
        guard: The guard to export.
        monitor: Its low-balance monitor, if any (see `GuardCollector`).
        registry: A registry to add a `GuardCollector` to and serve whole
            (say, prometheus-client's ``REGISTRY`` with the process
            metrics). Default: a new one holding only guard's series.

    With a Redis store, each scrape first reads from Redis what the running
    calls of every process hold (at most a second; absent if Redis doesn't
    answer), so that ``guard_balance_held`` and ``guard_balance_available``
    are current.

    .. versionadded:: 0.2
    """
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
    registry.register(GuardCollector(guard, monitor=monitor))
    generate = make_aiohttp_handler(registry)

    async def handler(request: web.Request) -> web.StreamResponse:
        # The Redis-wide figures, read now: the collector can't await.
        await refresh(guard)
        return await generate(request)

    return handler
