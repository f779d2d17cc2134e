"""
Checking a guard's options, and making the store its cache calls for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from aiocache.base import BaseCache

from .errors import ConfigurationError
from .stores import FallbackStore, MemoryStore

if TYPE_CHECKING:
    from .typing import Store

__all__ = ["check_settle", "count", "make_store", "name", "seconds"]


def seconds(name: str, value: object, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        kind = "a finite non-negative" if zero_ok else "a finite positive"
        raise ConfigurationError(f"{name} must be {kind} number, got {value!r}")
    return float(value)


def count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    return value


def name(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_settle(value: object, name: str = "settle") -> None:
    if value not in ("refresh", "invalidate", "debit"):
        raise ConfigurationError(
            f"{name} must be 'refresh', 'invalidate' or 'debit', got {value!r}"
        )


def make_store(
    cache: BaseCache | None,
    store: Store | None,
    *,
    ttl: float | None,
    lease: float,
    fetch_timeout: float,
    redis: object = None,
    fallback: bool = False,
) -> Store:
    """
    The store a guard's options call for; *fallback*: a shared one made
    here is stood in for by one of this process while it is down.
    """
    if redis is not None:
        if cache is not None or store is not None:
            raise ConfigurationError("pass one of cache, store and redis")
        shared = _redis_store(
            redis,
            ttl=30.0 if ttl is None else ttl,
            lease=lease,
            fetch_timeout=fetch_timeout,
        )
        return FallbackStore(shared) if fallback else shared
    if store is not None:
        if cache is not None:
            raise ConfigurationError("pass cache or store, not both")
        if ttl is not None:
            raise ConfigurationError(
                "ttl configures the store made from cache; set it on the store "
                "you pass instead"
            )
        if not _is_store(store):
            raise ConfigurationError(
                f"store must implement guard.typing.Store, not {type(store).__name__}"
            )
        return store
    ttl = 30.0 if ttl is None else ttl
    if cache is None:
        return MemoryStore(ttl=ttl, timeout=fetch_timeout)
    if not isinstance(cache, BaseCache):
        raise ConfigurationError(
            "cache must be an aiocache cache (such as aiocache.SimpleMemoryCache "
            f"or aiocache.RedisCache), not {type(cache).__name__}"
        )
    if _is_redis_cache(cache):
        shared = _redis_store(cache, ttl=ttl, lease=lease, fetch_timeout=fetch_timeout)
        return FallbackStore(shared) if fallback else shared
    return MemoryStore(cache, ttl=ttl, timeout=fetch_timeout)


def _redis_store(
    redis: object, *, ttl: float, lease: float, fetch_timeout: float
) -> Store:
    try:
        from .stores.redis import RedisStore
    except ImportError as exc:
        raise ConfigurationError(
            "Redis needs redis-py: pip install guard[redis]"
        ) from exc
    try:
        return RedisStore(redis, ttl=ttl, lease=lease, fetch_timeout=fetch_timeout)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None


def _is_redis_cache(cache: BaseCache) -> bool:
    # By type, not module name; aiocache imports its Redis backend only when
    # redis-py is installed.
    try:
        from aiocache.backends.redis import RedisBackend
    except ImportError:
        return False
    return isinstance(cache, RedisBackend)


_STORE_METHODS = (
    "read",
    "try_hold",
    "held",
    "begin_fetch",
    "abort_fetch",
    "put",
    "release",
    "invalidate",
    "close",
)


def _is_store(obj: object) -> bool:
    return hasattr(obj, "ttl") and all(
        callable(getattr(obj, name, None)) for name in _STORE_METHODS
    )
