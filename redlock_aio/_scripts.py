"""Lua scripts run on every node, with their SHA1 digests.

Compare-and-act in one script is what keeps a client from deleting or extending
a key that has meanwhile expired and been taken by another holder.
"""

from __future__ import annotations

import hashlib

#: KEYS[1]: the lock key. ARGV[1]: the holder's token.
#: Deletes the key only if it still holds this token, and announces it on the
#: key's release channel (:func:`channel`), so that waiters wake at once instead
#: of polling. The message is the released token (useless once the key is gone):
#: a waiter wakes once per release, not once per node. PUBLISH runs under pcall:
#: a user whose ACL denies the channel still releases.
#: return: 1 if deleted, 0 if the key is gone or belongs to someone else.
RELEASE = """\
if redis.call("GET", KEYS[1]) == ARGV[1] then
    redis.call("DEL", KEYS[1])
    redis.pcall("PUBLISH", "__redlock__:" .. KEYS[1], ARGV[1])
    return 1
end
return 0
"""

#: RELEASE without the announcement: for taking back the keys of a failed
#: attempt, whose waking every waiter would only set off another stampede.
RELEASE_QUIET = """\
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


#: Prefix of a key's release channel.
CHANNEL_PREFIX = b"__redlock__:"


def channel(key: bytes) -> bytes:
    """The pub/sub channel on which RELEASE announces that ``key`` is free."""
    return CHANNEL_PREFIX + key


def sha1(script: str) -> str:
    """The digest Redis uses to name a script in EVALSHA."""
    return hashlib.sha1(script.encode()).hexdigest()


RELEASE_SHA = sha1(RELEASE)
RELEASE_QUIET_SHA = sha1(RELEASE_QUIET)
EXTEND_SHA = sha1(EXTEND)
EXTEND_MANY_SHA = sha1(EXTEND_MANY)
