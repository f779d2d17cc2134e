from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import math
import random
import threading
import time
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, cast

import aiohttp
from aiocache import SimpleMemoryCache

from ._balance import Balance
from ._events import EventKind, GuardEvent
from ._store import Account, Entry, Hold, LocalStore, Short, Store, UncheckedHold
from .errors import (
    BalanceUnavailable,
    ConfigurationError,
    InsufficientBalance,
    ProviderAuthError,
    ProviderResponseError,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable
    from types import TracebackType

    from aiocache.base import BaseCache

    from .typing import EventHook, Provider

__all__ = ["BalanceGuard", "Policy", "Settle"]

log = logging.getLogger("guard")

R = TypeVar("R")

Settle: TypeAlias = Literal["invalidate", "debit"]
Policy: TypeAlias = Literal["closed", "open"]


def _positive(name: str, value: object, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        kind = "a finite non-negative" if zero_ok else "a finite positive"
        raise ConfigurationError(f"{name} must be {kind} number, got {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _name(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> object:
    if value not in allowed:
        raise ConfigurationError(
            f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        )
    return value


class BalanceGuard:
    """
    Checks, holds and settles provider balances for guarded calls.

    One guard serves any number of providers and accounts. It owns an aiohttp
    session for balance requests and the cache it is given: close it with
    ``async with`` or `aclose`.

    Args:
        cache: Where balances are cached. Default: a process-local
            ``SimpleMemoryCache``. A ``RedisCache`` shares balances and holds
            between processes. The guard closes it when it closes.
        ttl: Seconds a fetched balance is trusted.
        settle: After a guarded call, ``"invalidate"`` forgets the cached
            balance (the next call fetches it); ``"debit"`` subtracts the
            amount from it when the call succeeded (fewer fetches; a failed
            call still invalidates).
        on_unavailable: ``"closed"`` raises `BalanceUnavailable` when the
            balance cannot be learned; ``"open"`` logs a warning and lets the
            call go ahead. Refused credentials and unreadable answers raise
            either way.
        fetch_timeout: Seconds one balance fetch may take, retries included.
        retries: Transient failures retried per fetch.
        max_retry_after: Cap in seconds on a provider's ``Retry-After``.
        recheck_after: A cached balance older than this many seconds is
            fetched once more before a call is refused, so that a refill is
            seen at once.
        auth_cooldown: Seconds an account whose credentials were refused is
            not asked again (OneClickDZ blocks an IP for 15 minutes after five
            bad keys); its calls raise `ProviderAuthError` at once.
        hooks: Callables given every `GuardEvent`.
        session: An aiohttp session to fetch balances with, instead of the
            guard's own. The guard does not close it.
        namespace: Prefix of the guard's cache keys.
        lease: With a ``RedisCache``, seconds a hold outlives a process that
            died holding it (or could not reach Redis to release it). Holds
            of running calls are renewed every ``lease / 3`` seconds, so a
            call may run longer than this.
    """

    def __init__(
        self,
        cache: BaseCache | None = None,
        *,
        ttl: float = 30.0,
        settle: Settle = "invalidate",
        on_unavailable: Policy = "closed",
        fetch_timeout: float = 10.0,
        retries: int = 2,
        max_retry_after: float = 5.0,
        recheck_after: float = 2.0,
        auth_cooldown: float = 900.0,
        hooks: Iterable[EventHook] = (),
        session: aiohttp.ClientSession | None = None,
        namespace: str = "guard",
        lease: float = 60.0,
    ) -> None:
        self.ttl = _positive("ttl", ttl)
        _choice("settle", settle, ("invalidate", "debit"))
        _choice("on_unavailable", on_unavailable, ("closed", "open"))
        self.settle_mode: Settle = settle
        self.on_unavailable: Policy = on_unavailable
        self.fetch_timeout = _positive("fetch_timeout", fetch_timeout)
        self.retries = _count("retries", retries)
        self.max_retry_after = _positive(
            "max_retry_after", max_retry_after, zero_ok=True
        )
        self.recheck_after = _positive("recheck_after", recheck_after, zero_ok=True)
        self.auth_cooldown = _positive("auth_cooldown", auth_cooldown, zero_ok=True)
        self.namespace = _name("namespace", namespace)
        self.lease = _positive("lease", lease)
        self._hooks = tuple(hooks)
        for hook in cast("tuple[object, ...]", self._hooks):
            if not callable(hook) or _is_async(hook):
                raise ConfigurationError(
                    f"hooks must be plain (not async) callables, got {hook!r}"
                )
        self._store: Store = self._make_store(
            SimpleMemoryCache(timeout=None) if cache is None else cache
        )
        self._accounts: dict[tuple[str, str], Account] = {}
        self._by_id: dict[int, tuple[weakref.ref[Provider], Account]] = {}
        self._session = session
        self._own_session = session is None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        """Whether `aclose` was called."""
        # The event loop whose thread alone touches this guard's state;
        # calls from another running loop are forwarded to it.
        self._home: asyncio.AbstractEventLoop | None = None
        self._home_lock = threading.Lock()
        # Set once a call came from another loop: until then every settle
        # runs at home, and needn't ask which loop runs it.
        self._forwarding = False
        self._handoffs: dict[_Token, Hold] = {}
        self._abandoned: weakref.WeakSet[_Token] = weakref.WeakSet()

    def _make_store(self, cache: BaseCache) -> Store:
        if type(cache).__module__.startswith("aiocache.backends.redis"):
            try:
                from ._redis import RedisStore
            except ImportError as exc:
                raise ConfigurationError(
                    "a RedisCache needs redis-py: pip install guard[redis]"
                ) from exc
            return RedisStore(
                cache, ttl=self.ttl, lease=self.lease, fetch_timeout=self.fetch_timeout
            )
        return LocalStore(cache, ttl=self.ttl)

    def __repr__(self) -> str:
        return (
            f"<BalanceGuard ttl={self.ttl} settle={self.settle_mode!r} "
            f"on_unavailable={self.on_unavailable!r} "
            f"accounts={len(self._accounts)}>"
        )

    async def __aenter__(self) -> BalanceGuard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """
        Close the guard's HTTP session and its cache. Idempotent.
        """
        if not self._at_home():
            await self._elsewhere(self.aclose())
            return
        if self.closed:
            return
        self.closed = True
        fetches = [
            account.inflight
            for account in self._accounts.values()
            if account.inflight is not None
            and account.inflight.get_loop() is asyncio.get_running_loop()
        ]
        for task in fetches:
            task.cancel()
        # Let the fetches finish cancelling before their session goes away.
        await asyncio.gather(*fetches, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None
        await self._store.close()

    # -- public reads ---------------------------------------------------

    async def balance(self, provider: Provider, *, fresh: bool = False) -> Balance:
        """
        Return the balance of *provider*'s account: cached, or fetched if
        there is none (or *fresh* is true).

        Raises:
            BalanceUnavailable: It could not be learned (whatever the
                *on_unavailable* policy: there is no call to let through).
        """
        if not self._at_home():
            return await self._elsewhere(self.balance(provider, fresh=fresh))
        account = self._account(provider)
        entry = None if fresh else await self._store.read(account)
        if entry is None:
            entry = await self._refresh(account, time.monotonic() + self.fetch_timeout)
        return self._balance_of(account, entry)

    async def invalidate(self, provider: Provider) -> None:
        """
        Forget *provider*'s cached balance; the next call fetches it.
        """
        if not self._at_home():
            await self._elsewhere(self.invalidate(provider))
            return
        await self._store.invalidate(self._account(provider))

    def held(self, provider: Provider) -> Decimal:
        """
        Sum of the amounts held by *provider*'s running calls in this
        process.
        """
        return self._account(provider).held

    # -- the guarded call -------------------------------------------------

    async def acquire(self, provider: Provider, amount: Decimal) -> Hold:
        """
        Check and hold *amount* on *provider*'s account.

        Returns the hold to give to `settle`; when the call goes ahead
        unchecked under ``on_unavailable="open"``, a hold of nothing. Most
        code uses `require_balance` instead.

        Raises:
            InsufficientBalance: The balance less the holds does not cover
                *amount*.
            BalanceUnavailable: The balance could not be learned and the
                policy is ``"closed"``.
        """
        if self._home is not asyncio.get_running_loop() and not self._at_home():
            return await self._acquire_elsewhere(provider, amount)
        account = self._account(provider)
        seen = account.fetches
        try:
            result = await self._store.try_hold(account, amount)
        except BalanceUnavailable as exc:  # a shared store that is down
            return self._unavailable(account, amount, exc)
        if isinstance(result, Hold):
            return result
        return await self._acquire_slow(account, amount, result, seen)

    async def _acquire_slow(
        self,
        account: Account,
        amount: Decimal,
        result: Hold | Short | None,
        seen: int,
    ) -> Hold:
        deadline = time.monotonic() + self.fetch_timeout
        try:
            result = await self._until_cached(account, amount, result, seen, deadline)
            if isinstance(result, Short) and (
                not result.entry.exact
                or result.entry.fetched_mono + self.recheck_after <= time.monotonic()
            ):
                # An old value may predate a refill, a corrected one may count
                # a spend twice: look once more. If that fails, the value at
                # hand still says the call is short.
                short = result
                try:
                    await self._refresh(account, deadline)
                    result = await self._store.try_hold(account, amount)
                except BalanceUnavailable as exc:
                    if isinstance(exc, ProviderAuthError | ProviderResponseError):
                        raise
                    result = short
                result = await self._until_cached(
                    account, amount, result, account.fetches, deadline
                )
        except BalanceUnavailable as exc:
            return self._unavailable(account, amount, exc)
        if isinstance(result, Short):
            self._emit("refused", account, amount=amount, available=result.available)
            raise InsufficientBalance(
                provider=account.provider.name,
                required=amount,
                available=result.available,
                currency=account.provider.currency,
            )
        return result

    async def _until_cached(
        self,
        account: Account,
        amount: Decimal,
        result: Hold | Short | None,
        seen: int,
        deadline: float,
    ) -> Hold | Short:
        """
        Fetch on a miss, then check again, until there is a balance to check.

        A miss is stale if a fetch finished after the check began (its answer
        was on its way while the balance was stored): check again instead of
        fetching. A balance can also be invalidated by another call between
        a fetch and this check: fetch again, until *deadline*.
        """
        while result is None:
            if account.fetches == seen:
                await self._refresh(account, deadline)
            seen = account.fetches
            result = await self._store.try_hold(account, amount)
        return result

    def _unavailable(
        self, account: Account, amount: Decimal, exc: BalanceUnavailable
    ) -> Hold:
        if self.on_unavailable == "closed" or isinstance(
            exc, ProviderAuthError | ProviderResponseError
        ):
            raise exc
        log.warning(
            "%s: balance unavailable, proceeding unchecked (on_unavailable='open'): %s",
            account.provider.name,
            exc.reason,
        )
        self._emit("failed_open", account, amount=amount, error=exc)
        return UncheckedHold(account)

    async def settle(
        self, hold: Hold, *, ok: bool, settle: Settle | None = None
    ) -> None:
        """
        Release *hold* and settle the cached balance: debit it (``"debit"``
        and *ok*) or invalidate it.

        Finishes even if the calling task is cancelled meanwhile.
        """
        if self._forwarding and not self._at_home():
            # Shielded: the settle finishes there even if this caller leaves.
            await asyncio.shield(
                self._elsewhere(self.settle(hold, ok=ok, settle=settle))
            )
            return
        debit = ok and hold.checked and (settle or self.settle_mode) == "debit"
        if debit:
            await self._store.release(hold, debit=True)
            return
        try:
            # Calls woken by the same fetch as this one check before it
            # invalidates that balance, rather than each fetching anew.
            await asyncio.sleep(0)
        finally:
            # Stores release the hold before their first await: a second
            # cancellation can't leave it behind.
            await self._drop(hold)

    async def _drop(self, hold: Hold) -> None:
        """
        Release *hold* and invalidate the balance, at once (no yield): also
        for the hold of a call that never ran because its caller left, which
        a call checking meanwhile must not find still held.
        """
        if hold.checked:
            await self._store.release(hold, debit=False)
        else:
            # What an unchecked call spent is unknown, so a fetch that ran
            # meanwhile can't be corrected: drop it.
            with contextlib.suppress(BalanceUnavailable):
                await self._store.invalidate(hold.account)

    # -- event loops ----------------------------------------------------------

    def _at_home(self) -> bool:
        """
        Whether the running loop is this guard's home, adopting it when the
        guard has no home loop that still runs (first use, asyncio.run
        again).
        """
        loop = asyncio.get_running_loop()
        if self._home is loop:
            return True
        with self._home_lock:
            home = self._home
            if home is None or home.is_closed() or not home.is_running():
                self._home = home = loop
        return home is loop

    def _forget_loop(self) -> None:
        """
        Forget the home loop, in a child process after ``os.fork()``: its
        thread is not there, and the lock may have been copied held.
        """
        self._home = None
        self._home_lock = threading.Lock()
        self._forwarding = False

    async def _elsewhere(self, coro: Coroutine[Any, Any, R]) -> R:
        """
        Run *coro* on the home loop and wait for it from this one.
        """
        assert self._home is not None
        self._forwarding = True
        future = asyncio.run_coroutine_threadsafe(coro, self._home)
        return await asyncio.wrap_future(future)

    async def _acquire_elsewhere(self, provider: Provider, amount: Decimal) -> Hold:
        # The hold is handed over through a token, so that one made after
        # this caller was cancelled is found and settled on the home loop.
        assert self._home is not None
        home = self._home
        token = _Token()
        try:
            await self._elsewhere(self._acquire_for(token, provider, amount))
        except asyncio.CancelledError:
            asyncio.run_coroutine_threadsafe(self._drop_handoff(token), home)
            raise
        return self._handoffs.pop(token)

    async def _acquire_for(
        self, token: _Token, provider: Provider, amount: Decimal
    ) -> None:
        hold = await self.acquire(provider, amount)
        if token in self._abandoned:
            await self._drop(hold)
        else:
            self._handoffs[token] = hold

    async def _drop_handoff(self, token: _Token) -> None:
        hold = self._handoffs.pop(token, None)
        if hold is None:
            self._abandoned.add(token)  # its acquire may still be running
        else:
            await self._drop(hold)

    # -- fetching -------------------------------------------------------------

    async def _refresh(self, account: Account, deadline: float) -> Entry:
        """
        Fetch and cache *account*'s balance, one fetch at a time per account;
        fetch again if it was invalidated meanwhile, until *deadline*.
        """
        while True:
            if time.monotonic() >= deadline:
                raise BalanceUnavailable(
                    "the balance was invalidated faster than it could be fetched",
                    provider=account.provider.name,
                )
            loop = asyncio.get_running_loop()
            task = account.inflight
            # A finished task whose done-callback has not run yet would be
            # awaited again without yielding; one of another (dead) event loop
            # would never finish here.
            if task is None or task.done() or task.get_loop() is not loop:
                task = loop.create_task(self._fetch_and_put(account))
                account.inflight = task
                task.add_done_callback(functools.partial(_done, account))
            try:
                entry = await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # The fetch was cancelled, not this call: the guard closed.
                raise BalanceUnavailable(
                    "the guard was closed", provider=account.provider.name
                ) from None
            if entry is not None:
                return entry

    async def _fetch_and_put(self, account: Account) -> Entry | None:
        # A shared store bounds its own wait for another process's fetch,
        # then lets this one fetch (its lock may belong to a dead process).
        token = await self._store.begin_fetch(account)
        deadline = asyncio.get_running_loop().time() + self.fetch_timeout
        if isinstance(token, Entry):  # another process fetched it meanwhile
            account.fetches += 1
            return token
        try:
            amount = await self._fetch(account, deadline)
        except BaseException:
            await self._store.abort_fetch(account, token)
            raise
        entry = await self._store.put(account, amount, token)
        if entry is not None:
            account.fetches += 1
            self._emit("fetched", account, amount=amount)
        return entry

    async def _fetch(self, account: Account, deadline: float) -> Decimal:
        provider = account.provider
        loop = asyncio.get_running_loop()
        if account.auth_until > time.monotonic() and account.auth_error is not None:
            raise _cooled(account.auth_error, account.auth_until - time.monotonic())
        attempt = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        amount = await provider.fetch_balance(self._get_session())
                    except (ProviderAuthError, ProviderResponseError) as exc:
                        if isinstance(exc, ProviderAuthError):
                            account.auth_until = time.monotonic() + self.auth_cooldown
                            account.auth_error = exc
                            self._emit("auth_cooldown", account, error=exc)
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
                        return _as_balance(amount, provider)
                    attempt += 1
                    delay = self._delay(attempt, error.retry_after)
                    if attempt > self.retries or loop.time() + delay >= deadline:
                        self._emit("unavailable", account, error=error)
                        raise error
                    await asyncio.sleep(delay)
        except TimeoutError:
            timed_out = BalanceUnavailable(
                f"no balance within {self.fetch_timeout:g} s", provider=provider.name
            )
            self._emit("unavailable", account, error=timed_out)
            raise timed_out from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        # Exponential backoff with full jitter, kept well inside the timeout.
        base: float = min(0.1 * 2 ** (attempt - 1), self.max_retry_after)
        return float(random.uniform(base / 2, base))

    def _get_session(self) -> aiohttp.ClientSession:
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
                timeout=aiohttp.ClientTimeout(total=self.fetch_timeout),
                raise_for_status=False,
            )
            self._session = session
            self._session_loop = loop
        return session

    # -- helpers --------------------------------------------------------------

    def _account(self, provider: Provider) -> Account:
        # Keyed by id(): cheaper than hashing a frozen attrs provider. The
        # weak reference tells a reused id from the original object.
        found = self._by_id.get(id(provider))
        if found is not None and found[0]() is provider:
            return found[1]
        account = self._account_by_identity(provider)
        key = id(provider)
        try:
            ref = weakref.ref(provider, functools.partial(_forget, self._by_id, key))
        except TypeError:  # a provider of the user's own without __weakref__
            return account
        self._by_id[key] = (ref, account)
        return account

    def _account_by_identity(self, provider: Provider) -> Account:
        name, account_id = provider.name, provider.account_id
        identity = (name, account_id)
        account = self._accounts.get(identity)
        if account is not None and account.provider != provider:
            # Same account, other settings (a rotated password, a new
            # timeout): use the newest, and let it try its credentials.
            account.provider = provider
            account.auth_until = 0.0
            account.auth_error = None
        if account is None:
            # Hash again: a user's account_id is trusted to be non-secret, but
            # the key should not depend on that.
            digest = hashlib.sha256(f"{name}\0{account_id}".encode()).hexdigest()
            key = f"{self.namespace}:{name}:{digest[:24]}"
            account = self._accounts[identity] = Account(provider, key)
        return account

    def _balance_of(self, account: Account, entry: Entry) -> Balance:
        provider = account.provider
        return Balance(
            provider=provider.name,
            amount=entry.amount,
            currency=provider.currency,
            fetched_at=entry.fetched_at,
        )

    def _emit(
        self,
        kind: EventKind,
        account: Account,
        *,
        amount: Decimal | None = None,
        available: Decimal | None = None,
        error: BaseException | None = None,
    ) -> None:
        if not self._hooks:
            return
        event = GuardEvent(
            kind=kind,
            provider=account.provider.name,
            account_id=account.provider.account_id,
            amount=amount,
            available=available,
            error=error,
        )
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                log.exception("guard hook %r failed on %s", hook, kind)


class _Token:
    """
    Identifies a hold handed over between event loops.
    """

    __slots__ = ("__weakref__",)


def _is_async(fn: object) -> bool:
    # An object with an ``async def __call__`` is async too.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


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


def _forget(ids: dict[int, Any], key: int, _: object) -> None:
    ids.pop(key, None)


def _done(account: Account, task: asyncio.Task[Entry | None]) -> None:
    if account.inflight is task:
        account.inflight = None
    # Every waiter may be gone; don't let asyncio log the error as unretrieved.
    if not task.cancelled():
        task.exception()


def _as_balance(value: object, provider: Provider) -> Decimal:
    # A provider of the user's own may hand back an int or a str.
    if isinstance(value, int | str) and not isinstance(value, bool):
        with contextlib.suppress(ArithmeticError):
            value = Decimal(value)
    if isinstance(value, Decimal) and value.is_finite():
        return value
    raise ProviderResponseError(
        f"fetch_balance returned {type(value).__name__}, not a finite Decimal",
        provider=provider.name,
    )


def _cooled(error: BaseException, remaining: float) -> ProviderAuthError:
    assert isinstance(error, ProviderAuthError)
    return ProviderAuthError(
        f"not retried during the auth cooldown after: {error.reason}",
        provider=error.provider,
        code=error.code,
        status=error.status,
        retry_after=remaining,
    )
