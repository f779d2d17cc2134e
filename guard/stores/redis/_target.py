"""
Where the Redis store connects (`Target`), read from what the user passed:
a redis-py asyncio client (one server, a Sentinel-managed primary, or a
cluster), an aiocache ``RedisCache``, or a URL.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelConnectionPool

__all__ = ["Target", "target_of"]

# The connection settings copied from the user's client.
_COPIED = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "client_name",
    "credential_provider",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)


class Target:
    """
    Where the store's scripts go, read from what the user passed.

    Attributes:
        kind: ``"single"``, ``"sentinel"`` or ``"cluster"``.
        connection_class: redis-py's connection class for each node.
        settings: Connection settings (credentials, TLS, db, address).
        nodes: A cluster's nodes to ask for the slot map first.
        sentinel: ``(service name, Sentinel)`` of a Sentinel-managed primary.
        owned: A client guard made, closed with the store (None: the
            user's, left open).
        timeout: The client's own bound on a call, if it has one.
    """

    def __init__(
        self,
        kind: str,
        connection_class: type[Any],
        settings: dict[str, Any],
        *,
        nodes: tuple[tuple[str, int], ...] = (),
        sentinel: tuple[str, Any] | None = None,
        owned: Any = None,
        timeout: float | None = None,
    ) -> None:
        self.kind = kind
        self.connection_class = connection_class
        self.settings = settings
        self.nodes = nodes
        self.sentinel = sentinel
        self.owned = owned
        self.timeout = timeout


def _copied(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in _COPIED if k in settings}


def _of_pool(pool: Any, *, owned: Any = None, timeout: float | None = None) -> Target:
    settings = _copied(pool.connection_kwargs)
    if isinstance(pool, SentinelConnectionPool):
        return Target(
            "sentinel",
            pool.connection_class,
            settings,
            sentinel=(pool.service_name, pool.sentinel_manager),
            owned=owned,
            timeout=timeout,
        )
    return Target(
        "single", pool.connection_class, settings, owned=owned, timeout=timeout
    )


def target_of(source: object) -> Target:
    """
    Read where to connect from a redis-py asyncio client (``Redis``, a
    Sentinel's ``master_for``, ``RedisCluster``), an aiocache ``RedisCache``
    or a URL.

    Raises:
        TypeError: Not one of those; the message says what was passed.
        ValueError: A URL of another scheme.
    """
    if isinstance(source, str):
        if not source.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "a Redis URL starts with redis://, rediss:// or unix://, got "
                f"{source.split('://')[0]!r}://..."
            )
        return _of_pool(aioredis.ConnectionPool.from_url(source))
    if isinstance(source, aioredis.RedisCluster):
        manager: Any = source.nodes_manager
        kwargs = dict(manager.connection_kwargs)
        nodes = tuple((n.host, int(n.port)) for n in manager.startup_nodes.values())
        return Target(
            "cluster",
            kwargs.get("connection_class", Connection),
            _copied(kwargs),
            nodes=nodes,
        )
    if isinstance(source, aioredis.Redis):
        return _of_pool(source.connection_pool)
    client = getattr(source, "client", None)  # an aiocache RedisCache
    if isinstance(client, aioredis.Redis):
        timeout = getattr(source, "timeout", None)
        return _of_pool(
            client.connection_pool,
            owned=client,
            timeout=None if timeout is None else float(timeout),
        )
    raise TypeError(
        "redis must be a redis.asyncio client (Redis, RedisCluster, or "
        "Sentinel(...).master_for(name)) or a redis://, rediss:// or unix:// "
        f"URL, not {type(source).__module__}.{type(source).__qualname__}"
    )
