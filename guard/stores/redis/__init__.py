"""
Balances and holds shared between processes through Redis (the ``redis``
extra): `RedisStore`.

The store is in parts: ``_scripts`` (the Lua scripts, the keys they use and
the units they count in), ``_wire`` (the connection layer: every redis-py
internal guard relies on, for one Redis, a Sentinel-managed primary and
Redis Cluster), ``_pipe`` (the connection per node that concurrent calls
share, their commands written together), ``_leases`` (holds of running
calls renewed in the background, scripts finished for callers that left)
and ``_store`` (the `guard.typing.Store` methods).
"""

from ._store import RedisStore

__all__ = ["RedisStore"]
