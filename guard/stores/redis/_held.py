"""
The read of what every process sharing a Redis store holds on an account:
the sum of the holds whose lease has not ended, for the operating views
(metrics, ``watch``).

Read-only: a hold whose lease ended lingers in the account's sorted set
until a check or renewal prunes it (and invalidates the balance), so it is
left there and not counted, rather than pruned here.
"""

from __future__ import annotations

from ._scripts import Script

__all__ = ["HELD"]

# No ARGV. Returns the units of the holds whose lease ends after now (the
# server's clock), the same bound the prune of checks and renewals uses.
HELD = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sum = 0
for _, hold in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf')) do
  sum = sum + tonumber(string.match(hold, ':(%d+)$'))
end
return sum
"""
)
