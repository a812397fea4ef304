"""Lua scripts run on every node, with their SHA1 digests.

Compare-and-act in one script is what keeps a client from deleting or extending
a key that has meanwhile expired and been taken by another holder.
"""

from __future__ import annotations

import hashlib

#: The marker key of a node (after the key prefix): its value is the server time
#: (ms since the epoch, the server's own clock) since which the node is known to
#: hold every lock key of this prefix, or "0" for a node initialised as holding
#: them all along. A node without it has lost its data (restart without
#: persistence, FLUSHALL, a new or replaced server): it may have forgotten a
#: lock that is still held, so its yes votes wait out the restart quarantine.
MARKER = b"__redlock__:marker"

#: KEYS[1]: the lock key. KEYS[2]: the node's marker (:data:`MARKER`).
#: ARGV[1]: the token. ARGV[2]: the TTL in ms. ARGV[3]: the restart quarantine
#: in ms.
#: ``SET key token NX PX ttl``, checking the node's marker in the same call (no
#: extra round trip, on every attempt, whatever connection or proxy it came
#: through). A missing marker is written as "now" on the server's clock, and
#: so is one in the future (the server clock was stepped back): the quarantine
#: runs on the node's own clock from there, and client and server clocks are
#: never compared. A key set during the quarantine is a yes that does not
#: count (the caller takes it back).
#: return: 1 if set and the node's yes counts; 0 if the key is held; if set
#: during the quarantine, {ms of quarantine left, 1 if the marker was missing}.
ACQUIRE = """\
local since = redis.call("GET", KEYS[2])
local wait = 0
local fresh = 0
if since ~= "0" then
    local t = redis.call("TIME")
    local ms = math.floor(tonumber(t[2]) / 1000)
    local now = tonumber(t[1]) * 1000 + ms
    local start = tonumber(since)
    if not start or start > now then
        if not since then
            fresh = 1
        end
        start = now
        redis.call("SET", KEYS[2], t[1] .. string.format("%03d", ms))
    end
    wait = start + tonumber(ARGV[3]) - now
end
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return 0
end
if wait > 0 then
    return {wait, fresh}
end
return 1
"""

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


ACQUIRE_SHA = sha1(ACQUIRE)
RELEASE_SHA = sha1(RELEASE)
RELEASE_QUIET_SHA = sha1(RELEASE_QUIET)
EXTEND_SHA = sha1(EXTEND)
EXTEND_MANY_SHA = sha1(EXTEND_MANY)
