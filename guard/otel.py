"""
OpenTelemetry metrics and traces for a `guard.BalanceGuard` (the ``otel``
extra: the OpenTelemetry API only, as libraries should).

::

    from guard.otel import instrument

    instrument(guard)        # the global meter and tracer providers

guard records through whatever SDK the application configured; with none,
the API's no-op providers make every call here do nothing. Figures are read
from `guard.BalanceGuard.accounts` when the SDK collects, so the guarded
call pays nothing for them; each provider request made to learn a balance
is a span.

Instruments (attributes ``guard.provider``, ``guard.account`` (the
non-secret account digest), ``guard.currency``, and those named):

- gauges ``guard.balance``, ``guard.balance.held``,
  ``guard.balance.available``, ``guard.balance.fetch_time`` (Unix seconds)
  and ``guard.balance.threshold`` (``guard.alert.level``), absent while the
  balance is unknown (the threshold: while not watched);
- counters ``guard.calls`` and ``guard.fetches`` (``guard.outcome``),
  ``guard.spend``, and ``guard.alerts`` (``guard.alert.level``,
  ``guard.outcome``; no account attributes);
- histogram ``guard.fetch.duration`` (s).

Spans ``guard.balance.fetch`` (kind client) carry ``guard.provider``,
``guard.account`` and ``guard.outcome`` (``ok``, ``unavailable``, ``auth``,
``bad_response``, ``cancelled``); any outcome but ``ok`` sets an error
status. What `guard.prometheus` says of held and available with each
store, and of several worker processes, holds here too: with a Redis store
``guard.balance.held`` and ``guard.balance.available`` are Redis-wide (take
the max over workers, never the sum), read when the SDK collects (from its
reader's thread, waiting at most a second on the guard's event loop), and
absent while Redis can't be reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__
from ._everywhere import held_everywhere
from ._observe import alert_counts, held_and_available, thresholds
from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from decimal import Decimal

    from opentelemetry.metrics import CallbackOptions, MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._accounts import AccountState, Tracked
    from ._guard import BalanceGuard
    from .monitor import BalanceMonitor

    Attributes = dict[str, str]

__all__ = ["Instrumentation", "instrument"]


class Instrumentation:
    """
    What `instrument` returns: stops reporting a guard with `uninstrument`.

    Attributes:
        guard: The guard reported.
        monitor: Its low-balance monitor, if any.
    """

    def __init__(
        self,
        guard: BalanceGuard,
        monitor: BalanceMonitor | None,
        meter: metrics.Meter,
        tracer: trace.Tracer,
    ) -> None:
        self.guard = guard
        self.monitor = monitor
        self.active = True
        self._tracer = tracer
        self._duration = meter.create_histogram(
            "guard.fetch.duration",
            unit="s",
            description="Duration of balance fetches, retries included.",
        )
        gauges: list[tuple[str, str, str, Callable[..., Iterable[Observation]]]] = [
            ("guard.balance", "", "Last balance seen by the guard.", self._balance),
            (
                "guard.balance.held",
                "",
                "Amount held by running guarded calls (every process's with Redis).",
                self._held,
            ),
            (
                "guard.balance.available",
                "",
                "Balance less what running calls hold (every process's with Redis).",
                self._available,
            ),
            (
                "guard.balance.fetch_time",
                "s",
                "When the provider reported the balance (Unix time).",
                self._fetch_time,
            ),
            (
                "guard.balance.threshold",
                "",
                "Low-balance alert threshold of a watched account.",
                self._threshold,
            ),
        ]
        for name, unit, description, callback in gauges:
            meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )
        counters: list[tuple[str, str, str, Callable[..., Iterable[Observation]]]] = [
            ("guard.calls", "{call}", "Guarded calls by outcome.", self._calls),
            ("guard.fetches", "{fetch}", "Balance fetches by outcome.", self._fetches),
            (
                "guard.spend",
                "",
                "Amounts of guarded calls settled as spent.",
                self._spend,
            ),
            (
                "guard.alerts",
                "{alert}",
                "Low-balance alerts by level and outcome.",
                self._alerts,
            ),
        ]
        for name, unit, description, callback in counters:
            meter.create_observable_counter(
                name, callbacks=[callback], unit=unit, description=description
            )

    def __repr__(self) -> str:
        return f"<Instrumentation active={self.active} {self.guard!r}>"

    def uninstrument(self) -> None:
        """
        Stop: no more spans, and the instruments observe nothing.
        """
        self.active = False
        fetcher = self.guard._fetcher
        if fetcher.trace == self._trace:
            fetcher.trace = None

    # -- spans --------------------------------------------------------------

    def _trace(
        self, tracked: Tracked
    ) -> Callable[[str, float, BaseException | None], None]:
        attributes = {
            "guard.provider": tracked.provider.name,
            "guard.account": tracked.digest,
            "guard.currency": tracked.provider.currency,
        }
        span = self._tracer.start_span(
            "guard.balance.fetch",
            kind=SpanKind.CLIENT,
            attributes={
                "guard.provider": attributes["guard.provider"],
                "guard.account": attributes["guard.account"],
            },
        )
        # The provider's HTTP request (if aiohttp is instrumented) nests in it.
        token = context.attach(trace.set_span_in_context(span))

        def end(outcome: str, seconds: float, error: BaseException | None) -> None:
            span.set_attribute("guard.outcome", outcome)
            if outcome != "ok":
                # SECURITY: the type only; the error's text stays in the app.
                span.set_status(
                    Status(StatusCode.ERROR, type(error).__name__ if error else outcome)
                )
            context.detach(token)
            span.end()
            self._duration.record(
                seconds, attributes={**attributes, "guard.outcome": outcome}
            )

        return end

    # -- observations ---------------------------------------------------------

    def _states(self) -> tuple[AccountState, ...]:
        return self.guard.accounts() if self.active else ()

    def _balance(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in self._states():
            if state.balance is not None:
                yield Observation(float(state.balance.amount), _attributes(state))

    def _held(self, options: CallbackOptions) -> Iterable[Observation]:
        for state, held, _ in self._holds():
            if held is not None:
                yield Observation(float(held), _attributes(state))

    def _available(self, options: CallbackOptions) -> Iterable[Observation]:
        for state, _, available in self._holds():
            if available is not None:
                yield Observation(float(available), _attributes(state))

    def _holds(
        self,
    ) -> Iterable[tuple[AccountState, Decimal | None, Decimal | None]]:
        states = self._states()
        everywhere = held_everywhere(self.guard) if states else None
        for state in states:
            yield (state, *held_and_available(state, everywhere))

    def _fetch_time(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in self._states():
            if state.balance is not None:
                timestamp = state.balance.fetched_at.timestamp()
                yield Observation(timestamp, _attributes(state))

    def _threshold(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return
        levels = thresholds(self.monitor)
        for state in self._states():
            for below, level in levels.get((state.provider, state.account), ()):
                attributes = {**_attributes(state), "guard.alert.level": level}
                yield Observation(float(below), attributes)

    def _calls(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in self._states():
            for outcome, count in state.calls.items():
                yield Observation(
                    count, {**_attributes(state), "guard.outcome": outcome}
                )

    def _fetches(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in self._states():
            for outcome, count in state.fetches.items():
                yield Observation(
                    count, {**_attributes(state), "guard.outcome": outcome}
                )

    def _spend(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in self._states():
            yield Observation(float(state.spent), _attributes(state))

    def _alerts(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return
        for (level, outcome), count in sorted(alert_counts(self.monitor).items()):
            yield Observation(
                count, {"guard.alert.level": level, "guard.outcome": outcome}
            )


def instrument(
    guard: BalanceGuard,
    *,
    monitor: BalanceMonitor | None = None,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """
    Report *guard*'s figures as OpenTelemetry instruments, and its balance
    fetches as spans.

    Args:
        guard: The guard to report.
        monitor: Its low-balance monitor (`guard.BalanceMonitor`), for
            ``guard.balance.threshold`` and ``guard.alerts``.
        meter_provider: Default: the global one.
        tracer_provider: Default: the global one.

    Raises:
        ConfigurationError: *guard* is instrumented already (`uninstrument` first).

    .. versionadded:: 0.2
    """
    fetcher = guard._fetcher
    if fetcher.trace is not None:
        raise ConfigurationError(
            "this guard is instrumented already: uninstrument() first"
        )
    meter = metrics.get_meter("guard", __version__, meter_provider=meter_provider)
    tracer = trace.get_tracer("guard", __version__, tracer_provider=tracer_provider)
    instrumentation = Instrumentation(guard, monitor, meter, tracer)
    fetcher.trace = instrumentation._trace
    return instrumentation


def _attributes(state: AccountState) -> Attributes:
    return {
        "guard.provider": state.provider,
        "guard.account": state.account,
        "guard.currency": state.currency,
    }
