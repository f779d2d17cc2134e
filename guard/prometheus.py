"""
Prometheus metrics for a `guard.BalanceGuard` (the ``prometheus`` extra).

::

    from guard.prometheus import metrics_handler

    app.router.add_get("/metrics", metrics_handler(guard))

or, with the process's other metrics, ``REGISTRY.register(GuardCollector(guard))``
and prometheus-client's own ``make_aiohttp_handler()``.

The collector reads `guard.BalanceGuard.accounts` when Prometheus scrapes:
the guarded call pays nothing for it. Every series is labelled by
``provider``, ``account`` (the non-secret account digest, as in cache keys)
and ``currency``; none carries a credential. A balance the guard never
learned is an absent sample, never 0 or ``+Inf``.

``guard_balance_held`` is what *this process's* running calls hold, and
``guard_balance_available`` is the balance less that. With several worker
processes sharing one account (a Redis store), every worker exports the same
``guard_balance`` and its own held and available: aggregate with
``max by (provider, account) (guard_balance)`` and
``sum by (provider, account) (guard_balance_held)``; summing ``guard_balance``
counts the one balance once per worker. Counters are per process: sum them.
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) does not
carry custom collectors such as this one: serve ``/metrics`` from each
worker (its own port, or a per-worker ``instance`` label) instead.
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

from ._observe import MonitorLike, alert_counts, thresholds

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler
    from prometheus_client.metrics_core import Metric

    from ._guard import BalanceGuard

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
        - ``guard_balance_held``: what running calls of this process hold;
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
        self, guard: BalanceGuard, *, monitor: MonitorLike | None = None
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
        for state in self.guard.accounts():
            labels = [state.provider, state.account, state.currency]
            f.held.add_metric(labels, float(state.held))
            known, left = state.balance, state.available
            if known is not None and left is not None:
                # Unknown stays absent: a 0 would page, a +Inf would hide.
                f.balance.add_metric(labels, float(known.amount))
                f.available.add_metric(labels, float(left))
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
            "Amount held by this process's running guarded calls.",
            labels=_LABELS,
        )
        self.available = GaugeMetricFamily(
            "guard_balance_available",
            "Balance less what this process's running calls hold.",
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
    monitor: MonitorLike | None = None,
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

    .. versionadded:: 0.2
    """
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
    registry.register(GuardCollector(guard, monitor=monitor))
    return make_aiohttp_handler(registry)
