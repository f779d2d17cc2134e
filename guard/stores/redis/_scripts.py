"""
The Lua scripts of the Redis store, the keys they work on, and the units
they count money in.

Every account has eight keys under one hash tag (so that its scripts also
run on Redis Cluster), named after the account's key, which carries no
secret::

    {guard:oneclickdz:<hash>}:b   hash: u (balance in units), f (fetch id),
                                  t (fetched at, server ms); expires after ttl
    {guard:oneclickdz:<hash>}:g   generation: bumped by every invalidation
                                  and debit; when missing it starts from
                                  the server's clock in microseconds, so it
                                  never repeats a value Redis lost
    {guard:oneclickdz:<hash>}:h   sorted set of holds "<id>:<units>", scored
                                  by the lease's end (server ms)
    {guard:oneclickdz:<hash>}:s   sum of the holds' units
    {guard:oneclickdz:<hash>}:l   the fetch lock: one process fetches
    {guard:oneclickdz:<hash>}:e   epoch: the server's clock in microseconds
                                  when the keys were first made, ":L" added
                                  when that followed a loss of Redis's data
    {guard:oneclickdz:<hash>}:x   set of holds dropped before their check ran
                                  (a cancelled check): a late check ignores them
    {guard:oneclickdz:<hash>}:c   units settled as spent (``"spent"``
                                  releases), ever: a fetch that began before
                                  some of them is stored less their sum

A fetch's ticket is ``"<generation>/<spent units>"`` at its start. A fetch
id ending in ``~`` marks an estimate: a balance lowered for calls settled
as spent, which may count their spending twice (``Entry.exact`` false).

Every change is one script, so it is atomic, and every script is idempotent
when it is sent again after a lost connection.
"""

from __future__ import annotations

import hashlib
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from ..._money import MONEY
from ...errors import AmountError

__all__ = [
    "BEGIN",
    "DROP",
    "HOLD",
    "INVALIDATE",
    "PUT",
    "READ",
    "RELEASE",
    "RENEW",
    "SCRIPTS",
    "TICKET",
    "UNLOCK",
    "Script",
    "amount_of",
    "MAX_AMOUNT",
    "ceil_units",
    "floor_units",
    "keys_of",
]

SCALE = 4  # amounts are kept in integer units of 10**-4
_ONE = Decimal(1)


class Script:
    """
    A Lua script and its SHA1, by which it is called.
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def keys_of(prefix: str, account_key: str) -> tuple[str, ...]:
    """
    Return an account's keys, in the order the scripts take them as KEYS.
    """
    tag = f"{{{prefix}{account_key}}}"
    return tuple(f"{tag}:{name}" for name in "bghslexc")


# Lua numbers are doubles: integers are exact up to 2**53. Every amount the
# scripts add or compare stays below this many units (about 9e11 of the
# currency), and sums of a few of them stay exact too.
MAX_UNITS = 2**53 // 16
MAX_AMOUNT = Decimal(MAX_UNITS).scaleb(-SCALE)
"""The largest amount the Redis store holds or balance it keeps exactly."""


def floor_units(amount: Decimal) -> int:
    """
    A balance in units, rounded down: rounding never admits a call. One
    above `MAX_AMOUNT` is kept as that (it errs low).
    """
    units = int(amount.scaleb(SCALE, context=MONEY).to_integral_value(ROUND_FLOOR))
    return min(units, MAX_UNITS)


def ceil_units(amount: Decimal) -> int:
    """
    A hold in units, rounded up.

    Raises:
        AmountError: *amount* is above `MAX_AMOUNT`: Redis's scripts could
            not compare it exactly.
    """
    if amount > MAX_AMOUNT:
        raise AmountError(
            f"amount must be at most {MAX_AMOUNT:,} with the Redis store "
            f"(its Lua scripts count in doubles, exact below 2**53 units of "
            f"1/10,000), got {amount:.6e}"
        )
    return int(amount.scaleb(SCALE, context=MONEY).to_integral_value(ROUND_CEILING))


def amount_of(units: int | str) -> Decimal:
    """Units back to an amount, without trailing zeros."""
    value = Decimal(int(units)).scaleb(-SCALE, context=MONEY)
    if value == value.to_integral_value(context=MONEY):
        return value.quantize(_ONE, context=MONEY)
    return value.normalize(context=MONEY)


# The server's clock, read once per script (scripts are atomic).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Generations never repeat. A missing one (a new account, or Redis lost its
# data) starts from the server's clock in microseconds, past any value it had
# before, so a fetch that began before the loss can't match it again.
# bump() runs for every invalidation and debit, generation() where a fetch
# takes its ticket.
_GEN = """
local function clock_us()
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
local function generation()
  local g = redis.call('GET', KEYS[2])
  if not g then
    g = clock_us()
    redis.call('SET', KEYS[2], g)
  end
  return g .. '/' .. (redis.call('GET', KEYS[8]) or '0')
end
local function bump()
  if redis.call('INCR', KEYS[2]) == 1 then redis.call('SET', KEYS[2], clock_us()) end
end
"""

# The epoch tells a loss of Redis's data from an account never used: the
# process passes the epoch it knew ('' if none). A missing epoch is made
# anew; when the process knew another, Redis lost the holds of running
# calls, which come back only with their processes' next renewal: the epoch
# is marked, and for *window* ms after it was made checks admit nothing
# (every process sees the mark, also one that never knew the old epoch).
# Returns the epoch's id and the ms left to wait (<= 0: none).
_EPOCH = """
local function epoch(known, window)
  local e = redis.call('GET', KEYS[6])
  if not e then
    e = clock_us()
    if known ~= '' then e = e .. ':L' end
    redis.call('SET', KEYS[6], e)
  end
  local id = string.match(e, '^%d+')
  local lost = string.find(e, ':L', 1, true)
  if known ~= '' and known ~= id and not lost then
    redis.call('SET', KEYS[6], e .. ':L')
    lost = true
  end
  if not lost then return id, 0 end
  return id, math.floor(tonumber(id) / 1000) + tonumber(window) - now
end
"""

# The prune, shared by the scripts that check or renew holds. A hold whose
# lease ended belongs to a call that died or could not settle: what it spent
# is unknown, so pruning it also invalidates the balance. Releases need not
# prune: a hold is only counted against a balance by HOLD, which prunes
# first.
_PRUNE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #gone > 0 then
  local sum = 0
  for i = 1, #gone do
    sum = sum + tonumber(string.match(gone[i], ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('DECRBY', KEYS[4], sum) < 0 then redis.call('DEL', KEYS[4]) end
  bump()
  redis.call('DEL', KEYS[1])
end
"""

# ARGV: units, id (the hold is "<id>:<units>", the lock's token is the id),
# lease ms, lock ms, epoch known, loss window ms. Replies start with a code
# and the epoch's id ('' when it is the one known):
# {0, e, generation, got_lock} on a miss; {1 short | 2 held, e, balance
# units, fetch id, fetched at ms, age ms, available units}; {3, e} when held
# but the balance is gone since; {4, e, ms} while a loss's window lasts;
# {5, e} when the hold was dropped before this check ran.
HOLD = Script(
    _NOW
    + _GEN
    + _EPOCH
    + _PRUNE
    + """
local member = ARGV[2] .. ':' .. ARGV[1]
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
local e, wait = epoch(ARGV[5], ARGV[6])
if e == ARGV[5] then e = '' end
-- Sent again after a lost reply: the first run held, don't count it twice.
if redis.call('ZSCORE', KEYS[3], member) then
  if not b[1] then return {3, e} end
  return {2, e, b[1], b[2], b[3], now - tonumber(b[3]), 0}
end
if redis.call('SISMEMBER', KEYS[7], member) == 1 then return {5, e} end
if wait > 0 then return {4, e, wait} end
if not b[1] then
  -- A resent script finds the lock its first run took.
  local got = redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[4])
    or redis.call('GET', KEYS[5]) == ARGV[2]
  return {0, e, generation(), got and 1 or 0}
end
local avail = tonumber(b[1]) - tonumber(redis.call('GET', KEYS[4]) or '0')
if avail < tonumber(ARGV[1]) then
  return {1, e, b[1], b[2], b[3], now - tonumber(b[3]), avail}
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), member)
redis.call('INCRBY', KEYS[4], ARGV[1])
return {2, e, b[1], b[2], b[3], now - tonumber(b[3]), avail}
"""
)

# ARGV: hold, its units, outcome ('debit', 'spent' or 'forget'), fetch id
# held against. Returns 1 when the balance is kept (debited), 0 when it was
# forgotten. A hold already gone (its lease ended and it was pruned) is not
# debited: the prune invalidated the balance. 'spent' takes the units off
# whatever balance is there, marks it an estimate and counts them, so that a
# fetch in flight is stored less them: it does not bump the generation.
RELEASE = Script(
    _NOW
    + _GEN
    + """
local removed = redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 and redis.call('DECRBY', KEYS[4], ARGV[2]) < 0 then
  redis.call('DEL', KEYS[4])
end
if ARGV[3] == 'spent' then
  redis.call('INCRBY', KEYS[8], ARGV[2])
  local f = redis.call('HGET', KEYS[1], 'f')
  if not f then return 0 end
  redis.call('HINCRBY', KEYS[1], 'u', '-' .. ARGV[2])
  if string.sub(f, -1) ~= '~' then redis.call('HSET', KEYS[1], 'f', f .. '~') end
  return 1
end
bump()
if removed == 1 and ARGV[3] == 'debit'
    and redis.call('HGET', KEYS[1], 'f') == ARGV[4] then
  redis.call('HINCRBY', KEYS[1], 'u', '-' .. ARGV[2])
  return 1
end
redis.call('DEL', KEYS[1])
return 0
"""
)

# ARGV: hold, its units, lock token, lease ms. Drops a hold (and lock) that a
# check that failed or was cancelled may have made: its call never ran, so
# the balance stays. A hold not there yet is remembered for a lease, so that
# a check still on its way doesn't make it. Returns 1 if the hold was there.
DROP = Script(
    """
local removed = redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 then
  if redis.call('DECRBY', KEYS[4], ARGV[2]) < 0 then redis.call('DEL', KEYS[4]) end
else
  redis.call('SADD', KEYS[7], ARGV[1])
  redis.call('PEXPIRE', KEYS[7], ARGV[4])
end
if redis.call('GET', KEYS[5]) == ARGV[3] then redis.call('DEL', KEYS[5]) end
return removed
"""
)

# ARGV: lease ms, epoch known, loss window ms, holds... Returns the epoch's
# id, then the holds that were gone (Redis lost them, or they were pruned
# while this process could not renew them): they are put back, and the
# balance, which may have been fetched without them, is invalidated.
RENEW = Script(
    _NOW
    + _GEN
    + _EPOCH
    + _PRUNE
    + """
local e = epoch(ARGV[2], ARGV[3])
local back = {e}
for i = 4, #ARGV do
  if redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), ARGV[i]) == 1 then
    redis.call('INCRBY', KEYS[4], string.match(ARGV[i], ':(%d+)$'))
    back[#back + 1] = ARGV[i]
  end
end
if #back > 1 then
  bump()
  redis.call('DEL', KEYS[1])
end
return back
"""
)

# ARGV: ticket at the fetch's start ("<generation>/<spent units>"), units,
# fetch id, ttl ms, lock token. Returns {1 stored | 2 someone else's |
# 0 nothing, units, fetch id, fetched at ms, age ms}.
PUT = Script(
    _NOW
    + """
if redis.call('GET', KEYS[5]) == ARGV[5] then redis.call('DEL', KEYS[5]) end
local g, spent = string.match(ARGV[1], '^([^/]+)/(%d+)$')
-- A missing generation means Redis lost its data since the fetch began.
if redis.call('GET', KEYS[2]) == g then
  -- Calls settled as spent since the fetch began may have spent after the
  -- provider answered: count them as spent (errs low, never high).
  local since = tonumber(redis.call('GET', KEYS[8]) or '0') - tonumber(spent)
  local units = tonumber(ARGV[2])
  local f = ARGV[3]
  if since > 0 then
    units = units - since
    f = f .. '~'
  end
  units = string.format('%d', units)
  redis.call('HSET', KEYS[1], 'u', units, 'f', f, 't', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, units, f, now, 0}
end
-- Invalidated or debited since the fetch began: it may predate a spend.
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if b[1] then return {2, b[1], b[2], b[3], now - tonumber(b[3])} end
return {0}
"""
)

# No ARGV. Returns the generation and spent units ("<generation>/<spent>"),
# for a PUT without the fetch lock (a balance a provider reported after a
# spend): it is stored only if nothing invalidated the balance since.
TICKET = Script(_NOW + _GEN + "\nreturn generation()\n")

# ARGV: lock token, lock ms, fetch id seen when the wait began ('*' on the
# first call). Returns {1, generation} when the lock is ours, {2, units,
# fetch id, fetched at ms, age ms} when a balance newer than the one seen is
# there, {0, fetch id or ''} while another process fetches.
BEGIN = Script(
    _NOW
    + _GEN
    + """
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if b[1] and ARGV[3] ~= '*' and b[2] ~= ARGV[3] then
  return {2, b[1], b[2], b[3], now - tonumber(b[3])}
end
if redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2])
    or redis.call('GET', KEYS[5]) == ARGV[1] then
  return {1, generation()}
end
return {0, b[2] or ''}
"""
)

# ARGV: lock token. Returns 1 if the lock was ours.
UNLOCK = Script(
    """
if redis.call('GET', KEYS[5]) == ARGV[1] then return redis.call('DEL', KEYS[5]) end
return 0
"""
)

# Returns {units, fetch id, fetched at ms, age ms} or {}.
READ = Script(
    _NOW
    + """
local b = redis.call('HMGET', KEYS[1], 'u', 'f', 't')
if not b[1] then return {} end
return {b[1], b[2], b[3], now - tonumber(b[3])}
"""
)

INVALIDATE = Script(
    _NOW
    + _GEN
    + """
bump()
return redis.call('DEL', KEYS[1])
"""
)

# Loaded first on each connection calls share, so that a script sent in the
# background finds its script there (rather than fail with NOSCRIPT and be
# sent again, out of order).
SCRIPTS = (HOLD, RELEASE, READ, BEGIN, PUT, TICKET, INVALIDATE, UNLOCK, DROP, RENEW)
