"""
Alert state shared through Redis, so that a fleet of processes each running
a `guard.BalanceMonitor` on one account delivers each alert once.

One hash per account, under the account's hash tag (a cluster keeps it on
the account's slot)::

    {<store key prefix><account key>}:alerts
        @t          µs since the epoch of the newest reading applied
        <key>       "1" fired, "0" armed (absent: armed), per threshold

A Lua script compares and sets the thresholds of one reading in one step:
a wish that changes a threshold's state is a transition, and only the
process whose script made it alerts. No money is compared in Lua: the
monitor turns the balance into wishes in Python (`Decimal`) first.

The client comes from the guard's store through `redis_of`: a store that
shares state through Redis exposes its ``redis.asyncio`` client as
``client`` and its key prefix as ``key_prefix``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BalanceUnavailable
from ._state import Applied

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._state import Wish

__all__ = ["RedisAlertState", "alerts_key", "redis_of"]

# KEYS[1] the alerts hash. ARGV[1] reading time (µs), ARGV[2] seconds the
# state outlives its last reading, then pairs key, wish ("1" fire, "0" arm).
# Returns {0} for a stale reading, else {1, transitions, fired keys} where
# transitions alternate key, "1" fired / "0" armed.
APPLY = """
local at = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], '@t') or '0')
if at < last then return {0} end
redis.call('HSET', KEYS[1], '@t', ARGV[1])
local changed = {}
for i = 3, #ARGV, 2 do
  local key, wish = ARGV[i], ARGV[i + 1]
  local state = redis.call('HGET', KEYS[1], key)
  if wish == '1' and state ~= '1' then
    redis.call('HSET', KEYS[1], key, '1')
    changed[#changed + 1] = key
    changed[#changed + 1] = '1'
  elseif wish == '0' and state == '1' then
    redis.call('HSET', KEYS[1], key, '0')
    changed[#changed + 1] = key
    changed[#changed + 1] = '0'
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local fired = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == '1' then fired[#fired + 1] = all[i] end
end
return {1, changed, fired}
"""

KEEP_SECONDS = 90 * 86400
"""An account's alert state is forgotten 90 days after its last reading."""


def redis_of(store: object) -> tuple[Any, str] | None:
    """
    Return the ``redis.asyncio`` client and key prefix of a guard's
    *store*, or None for a store that keeps its state in this process.

    The accessor: a Redis-backed store exposes ``client`` (a
    ``redis.asyncio.Redis`` or ``RedisCluster``) and ``key_prefix`` (what
    its keys put before the account key inside the hash tag; default
    empty).
    """
    client = getattr(store, "client", None)
    if client is None or not type(client).__module__.startswith("redis."):
        return None
    prefix = getattr(store, "key_prefix", None)
    if not isinstance(prefix, str):
        prefix = ""
    return client, prefix


def alerts_key(prefix: str, account_key: str) -> str:
    """The alert hash of *account_key*, under its hash tag."""
    return f"{{{prefix}{account_key}}}:alerts"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisAlertState:
    """
    Alert state in Redis (see the module docstring).

    Args:
        client: A ``redis.asyncio.Redis`` or ``RedisCluster``; not closed
            here (it is the store's, or the caller's).
        prefix: Put before each account key inside the hash tag.
    """

    def __init__(self, client: Any, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(APPLY)

    async def apply(self, account: str, at_us: int, wishes: Sequence[Wish]) -> Applied:
        args: list[str | int] = [at_us, KEEP_SECONDS]
        for wish in wishes:
            args += [wish.key, "1" if wish.fire else "0"]
        try:
            reply = await self._script(
                keys=[alerts_key(self.prefix, account)], args=args
            )
        except Exception as exc:  # redis-py's errors: connection, timeout...
            # Redis down: the reading is not applied; a later one will be.
            raise BalanceUnavailable(
                f"the alert state in Redis could not be updated: {type(exc).__name__}",
                provider=account.split(":")[1] if ":" in account else account,
            ) from exc
        if int(reply[0]) == 0:
            return Applied()
        changed = [_text(v) for v in reply[1]]
        fired = [
            k for k, v in zip(changed[::2], changed[1::2], strict=True) if v == "1"
        ]
        armed = [
            k for k, v in zip(changed[::2], changed[1::2], strict=True) if v == "0"
        ]
        return Applied(
            tuple(fired), tuple(armed), frozenset(_text(k) for k in reply[2])
        )

    async def close(self) -> None:
        return None
