"""
Fetching balances: one fetch per account at a time, bounded retries that
honour a capped ``Retry-After``, the auth cooldown, and the HTTP session.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import time
from decimal import Decimal
from typing import TYPE_CHECKING, TypeAlias

import aiohttp

from ._logs import fields
from ._money import bounded_balance
from .errors import BalanceUnavailable, ProviderAuthError, ProviderResponseError
from .stores import Entry

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._accounts import Tracked
    from .typing import Provider, Store

    FetchEnd: TypeAlias = Callable[[str, float, BaseException | None], None]
    FetchTrace: TypeAlias = Callable[[Tracked], FetchEnd]

__all__ = ["Fetcher"]

log = logging.getLogger("guard")

MAX_OUTAGE_BACKOFF = 30.0
"""Cap, in seconds, on the outage back-off (unless the first is longer)."""


class Fetcher:
    """
    Fetches balances into a store for a guard.

    Args:
        store: Where fetched balances go.
        emit: The guard's event callback: ``emit(kind, tracked, **fields)``.
        timeout: Seconds one fetch may take, retries included.
        retries: Transient failures retried per fetch.
        max_retry_after: Cap in seconds on a provider's ``Retry-After``.
        auth_cooldown: Seconds an account whose credentials were refused is
            not asked again.
        outage_backoff: Seconds a new fetch fails fast, after a fetch failed
            for good, before the provider is asked again; doubled while the
            outage lasts, up to 30 s (or this, if longer). 0: no back-off.
        refresh_interval: The least number of seconds between two
            background refreshes of one account (`refresh_soon`).
        session: A session of the user's, not closed here; None: the
            fetcher's own, made per event loop.
    """

    def __init__(
        self,
        store: Store,
        emit: Callable[..., None],
        *,
        timeout: float,
        retries: int,
        max_retry_after: float,
        auth_cooldown: float,
        outage_backoff: float,
        refresh_interval: float,
        session: aiohttp.ClientSession | None,
    ) -> None:
        self.store = store
        self.emit = emit
        self.timeout = timeout
        self.retries = retries
        self.max_retry_after = max_retry_after
        self.auth_cooldown = auth_cooldown
        self.outage_backoff = outage_backoff
        self.max_outage_backoff = max(MAX_OUTAGE_BACKOFF, outage_backoff)
        self.refresh_interval = refresh_interval
        self.closed = False
        self._session = session
        self._own_session = session is None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._tracked: list[Tracked] = []
        # Called as each provider request begins; what it returns, as it
        # ends, with the outcome (as counted), the seconds and the error.
        # None (the default) costs a fetch one test.
        self.trace: FetchTrace | None = None

    async def aclose(self) -> None:
        """
        Cancel this loop's fetches in flight and close the own session.
        """
        self.closed = True
        loop = asyncio.get_running_loop()
        fetches = [
            task
            for t in self._tracked
            for task in (t.inflight, t.refreshing)
            if task is not None and task.get_loop() is loop
        ]
        for task in fetches:
            task.cancel()
        # Let the fetches finish cancelling before their session goes away.
        await asyncio.gather(*fetches, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def track(self, tracked: Tracked) -> None:
        self._tracked.append(tracked)

    def refresh_soon(self, tracked: Tracked) -> None:
        """
        Have *tracked*'s balance fetched again in the background: at once, or
        once *refresh_interval* has passed since the last such fetch began.
        One at a time per account; nobody waits for it.
        """
        if tracked.refreshing is not None or self.closed:
            return
        delay = tracked.refreshed_at + self.refresh_interval - time.monotonic()
        task = asyncio.get_running_loop().create_task(
            self._refresh_later(tracked, delay)
        )
        tracked.refreshing = task

    async def _refresh_later(self, tracked: Tracked, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            tracked.refreshed_at = time.monotonic()
            await self.refresh(tracked, tracked.refreshed_at + self.timeout)
        except BalanceUnavailable as exc:
            # The estimate stays until it expires; calls that find it short
            # fetch at once, and an outage is backed off.
            log.debug(
                "%s: background refresh failed: %s",
                tracked.provider.name,
                exc.reason,
                extra=fields(
                    "refresh_failed",
                    provider=tracked.provider.name,
                    account=tracked.digest,
                    reason=exc.reason,
                ),
            )
        finally:
            tracked.refreshing = None

    async def refresh(
        self, tracked: Tracked, deadline: float, *, since: float | None = None
    ) -> Entry:
        """
        Fetch and store *tracked*'s balance, one fetch at a time per
        account; fetch again if it was invalidated meanwhile, until
        *deadline* (``time.monotonic()``). With *since*, only a fetch begun
        at or after that time will do: one in flight from before is waited
        for, then another made (a recheck must see a refill made meanwhile).
        """
        while True:
            if time.monotonic() >= deadline:
                raise BalanceUnavailable(
                    "the balance was invalidated faster than it could be fetched",
                    provider=tracked.provider.name,
                )
            loop = asyncio.get_running_loop()
            task = tracked.inflight
            # A finished task whose done-callback has not run yet would be
            # awaited again without yielding; one of another (dead) event loop
            # would never finish here.
            if task is None or task.done() or task.get_loop() is not loop:
                task = loop.create_task(self._fetch_and_put(tracked))
                tracked.inflight = task
                tracked.inflight_at = time.monotonic()
                task.add_done_callback(functools.partial(_done, tracked))
            elif since is not None and tracked.inflight_at < since:
                # Its answer may predate what this caller needs to see.
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
                continue
            try:
                entry = await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # The fetch was cancelled, not this call: the guard closed.
                raise BalanceUnavailable(
                    "the guard was closed", provider=tracked.provider.name
                ) from None
            if entry is not None:
                return entry

    async def _fetch_and_put(self, tracked: Tracked) -> Entry | None:
        # A shared store bounds its own wait for another process's fetch,
        # then lets this one fetch (its lock may belong to a dead process).
        ticket = await self.store.begin_fetch(tracked.account)
        deadline = asyncio.get_running_loop().time() + self.timeout
        if isinstance(ticket, Entry):  # another process fetched it meanwhile
            tracked.last = ticket
            tracked.fetches += 1
            return ticket
        try:
            amount = await self._fetch(tracked, deadline)
        except BaseException:
            await self.store.abort_fetch(tracked.account, ticket)
            raise
        entry = await self.store.put(tracked.account, amount, ticket)
        if entry is not None:
            tracked.last = entry
            tracked.fetches += 1
            self.emit(
                "fetched", tracked, amount=amount, reported_at=tracked.reported_at
            )
        return entry

    async def _fetch(self, tracked: Tracked, deadline: float) -> Decimal:
        now = time.monotonic()
        if tracked.auth_error is not None and tracked.auth_until > now:
            raise _cooled(tracked.auth_error, tracked.auth_until - now)
        if tracked.down_error is not None and tracked.down_until > now:
            # An outage: don't pile a new request on it for every caller.
            raise _still_down(tracked.down_error, tracked.down_until - now)
        stats = tracked.stats
        end = None if self.trace is None else self.trace(tracked)
        outcome = "cancelled"
        error: BaseException | None = None
        try:
            amount = await self._ask(tracked, deadline)
            outcome = "ok"
        except ProviderAuthError as exc:
            stats.fetches_auth += 1
            outcome, error = "auth", exc
            raise
        except ProviderResponseError as exc:
            stats.fetches_bad_response += 1
            outcome, error = "bad_response", exc
            raise
        except BalanceUnavailable as exc:
            stats.fetches_unavailable += 1
            outcome, error = "unavailable", exc
            if stats.unavailable_since is None:
                stats.unavailable_since = dt.datetime.now(dt.UTC)
            if self.outage_backoff:
                tracked.backoff = min(
                    max(tracked.backoff * 2, self.outage_backoff),
                    self.max_outage_backoff,
                )
                wait = max(tracked.backoff, min(exc.retry_after or 0.0, 3600.0))
                tracked.down_until = time.monotonic() + wait
                tracked.down_error = exc
            raise
        finally:
            seconds = time.monotonic() - now
            stats.fetched(seconds)
            if end is not None:
                end(outcome, seconds, error)
        stats.fetches_ok += 1
        stats.unavailable_since = None
        tracked.backoff = 0.0
        tracked.down_error = None
        if not tracked.typed:
            await self._learn_key_type(tracked, deadline)
        return amount

    async def _learn_key_type(self, tracked: Tracked, deadline: float) -> None:
        """
        Ask a provider that can tell (a ``key_type`` method, as
        `guard.providers.OneClickDZ` has) whether its key is a sandbox key,
        once per account: only after a balance was read, so that a bad key
        is never tried twice. If it cannot say, the account is taken for a
        real one.
        """
        tracked.typed = True
        ask = getattr(tracked.provider, "key_type", None)
        if ask is None:
            return
        try:
            async with asyncio.timeout_at(deadline):
                kind = await ask(self.session())
        # An optional extra: whatever it raises must not fail the read.
        except Exception as exc:
            log.info(
                "%s: could not learn the key type: %s",
                tracked.provider.name,
                type(exc).__name__,
                extra=fields(
                    "key_type_unknown",
                    provider=tracked.provider.name,
                    account=tracked.digest,
                    reason=type(exc).__name__,
                ),
            )
            return
        tracked.key_type = kind if kind in ("SANDBOX", "PRODUCTION") else None

    async def _ask(self, tracked: Tracked, deadline: float) -> Decimal:
        provider = tracked.provider
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        amount = await provider.fetch_balance(self.session())
                    except ProviderAuthError as exc:
                        tracked.auth_until = time.monotonic() + self.auth_cooldown
                        tracked.auth_error = exc
                        self.emit("auth_cooldown", tracked, error=exc)
                        raise
                    except ProviderResponseError:
                        raise
                    except BalanceUnavailable as exc:
                        error = exc
                    except (aiohttp.ClientError, OSError) as exc:
                        # A provider of the user's own that let one through.
                        error = BalanceUnavailable(
                            f"{type(exc).__name__} while fetching the balance",
                            provider=provider.name,
                        )
                        error.__cause__ = exc
                    else:
                        tracked.reported_at = getattr(amount, "reported_at", None)
                        return _as_balance(amount, provider)
                    attempt += 1
                    delay = self._delay(attempt, error.retry_after)
                    if attempt > self.retries or loop.time() + delay >= deadline:
                        self.emit("unavailable", tracked, error=error)
                        raise error
                    await asyncio.sleep(delay)
        except TimeoutError:
            timed_out = BalanceUnavailable(
                f"no balance within {self.timeout:g} s", provider=provider.name
            )
            self.emit("unavailable", tracked, error=timed_out)
            raise timed_out from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        # Exponential backoff with full jitter, kept well inside the timeout.
        base: float = min(0.1 * 2 ** (attempt - 1), self.max_retry_after)
        return float(random.uniform(base / 2, base))

    def session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise RuntimeError("this BalanceGuard is closed")
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or (
            self._own_session and (session.closed or self._session_loop is not loop)
        ):
            if session is not None and self._session_loop is not None:
                _abandon(session, self._session_loop)
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                raise_for_status=False,
            )
            self._session = session
            self._session_loop = loop
        return session


def _abandon(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    # A session left by an event loop that has ended (asyncio.run called
    # again): its connections died with the loop; mark it closed so that it
    # doesn't warn. One on a loop still running elsewhere closes there.
    if session.closed:
        return
    if loop.is_closed():
        connector = session.connector
        session.detach()
        # With its loop closed, closing a connector only marks it closed;
        # the public close() is a coroutine that no loop can run any more.
        close = getattr(connector, "_close", None)
        if close is not None:
            close()
    else:
        asyncio.run_coroutine_threadsafe(session.close(), loop)


def _done(tracked: Tracked, task: asyncio.Task[Entry | None]) -> None:
    if tracked.inflight is task:
        tracked.inflight = None
    # Every waiter may be gone; don't let asyncio log the error as unretrieved.
    if not task.cancelled():
        task.exception()


def _as_balance(value: object, provider: Provider) -> Decimal:
    # A provider of the user's own may hand back an int or a str.
    if isinstance(value, int | str) and not isinstance(value, bool):
        with contextlib.suppress(ArithmeticError, ValueError):
            value = Decimal(value)
    if isinstance(value, Decimal):
        # A `Reported` balance is stored as the plain number.
        bounded = bounded_balance(Decimal(value))
        if bounded is not None:
            return bounded
    raise ProviderResponseError(
        f"fetch_balance returned {type(value).__name__}, not a finite Decimal "
        "below 1e18",
        provider=provider.name,
    )


def _still_down(error: BalanceUnavailable, remaining: float) -> BalanceUnavailable:
    return BalanceUnavailable(
        f"not asked again for {remaining:.1f} s after: {error.reason}",
        provider=error.provider,
        status=error.status,
        retry_after=remaining,
        request_id=error.request_id,
    )


def _cooled(error: ProviderAuthError, remaining: float) -> ProviderAuthError:
    return ProviderAuthError(
        f"not retried during the auth cooldown after: {error.reason}",
        provider=error.provider,
        code=error.code,
        status=error.status,
        retry_after=remaining,
        request_id=error.request_id,
    )
