"""Lua scripts run on every node, with their SHA1 digests.

Compare-and-act in one script is what keeps a client from deleting or extending
a key that has meanwhile expired and been taken by another holder.
"""

from __future__ import annotations

import hashlib

#: KEYS[1]: the lock key. ARGV[1]: the holder's token.
#: Deletes the key only if it still holds this token.
#: return: 1 if deleted, 0 if the key is gone or belongs to someone else.
RELEASE = """\
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""

#: KEYS[1]: the lock key. ARGV[1]: the holder's token. ARGV[2]: new TTL in ms.
#: Sets a new TTL only if the key still holds this token; never revives a key.
#: return: 1 if extended, 0 if the key is gone or belongs to someone else.
EXTEND = """\
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"""


#: KEYS[i]: a lock key. ARGV[2i-1]: its holder's token. ARGV[2i]: its new TTL in ms.
#: EXTEND for many locks in one call: a batch of auto-extensions costs one round
#: trip per node, not one per lock.
#: return: an array, 1 where extended, 0 where the key is gone or someone else's.
EXTEND_MANY = """\
local out = {}
for i, key in ipairs(KEYS) do
    if redis.call("GET", key) == ARGV[2 * i - 1] then
        out[i] = redis.call("PEXPIRE", key, ARGV[2 * i])
    else
        out[i] = 0
    end
end
return out
"""


def sha1(script: str) -> str:
    """The digest Redis uses to name a script in EVALSHA."""
    return hashlib.sha1(script.encode()).hexdigest()


RELEASE_SHA = sha1(RELEASE)
EXTEND_SHA = sha1(EXTEND)
EXTEND_MANY_SHA = sha1(EXTEND_MANY)
