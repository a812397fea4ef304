"""What is sent to a node: :class:`Command`, a transport-neutral request, and one
factory per operation of the algorithm.

A command carries its arguments (for a transport that builds its own requests,
such as redis-py), the same arguments encoded once as RESP (for the pipelined
transport, which writes these bytes to every node as they are), the Lua source
behind an ``EVALSHA`` (loaded again after NOSCRIPT), and how to read the reply.
A new node operation is one Lua script in :mod:`._scripts` and one factory here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeAlias, final

from . import _scripts
from ._quorum import Quarantined
from ._resp import Arg, encode_command

#: Turns a node's reply into its vote: True (yes), False (no) or a
#: :class:`Quarantined` yes that does not count; for a command over several
#: locks (``extend_many``), a list with one such vote per lock.
Decode: TypeAlias = Callable[[object], object]


#: A :attr:`Command.yes` that no reply equals.
NO_REPLY: Final = object()


@final
class Command:
    """One request, as every transport needs it.

    :ivar args: the command's arguments (``EVALSHA``, sha, key count, ...).
    :ivar resp: ``args`` encoded as one RESP array.
    :ivar script: the Lua source of an ``EVALSHA``, else None.
    :ivar decode: reply -> vote(s); see :data:`Decode`.
    :ivar yes: the raw reply that ``decode`` turns into a plain yes (``b"OK"``,
        ``1``), for a caller to check before calling it; :data:`NO_REPLY` if
        none does.
    :ivar keys: the lock keys it acts on (the marker key is not one).
    :ivar urgent: it renews locks already held, whose holders lose them if it
        comes late: a transport with a backlog of its own sends it ahead of the
        backlog (``MuxNode``: on a second connection).
    :ivar repeatable: running it twice does what running it once does (a
        release: it deletes only its own token): a transport may send it on
        two connections, to keep it behind a request that failed with its
        connection but may still run (see ``MuxNode.submit``).
    """

    __slots__ = (
        "args",
        "decode",
        "keys",
        "repeatable",
        "resp",
        "script",
        "urgent",
        "yes",
    )

    def __init__(
        self,
        args: tuple[Arg, ...],
        resp: bytes,
        decode: Decode,
        keys: tuple[bytes, ...] = (),
        script: str | None = None,
        yes: object = NO_REPLY,
        urgent: bool = False,
        repeatable: bool = False,
    ) -> None:
        # Positional parameters: the hot factories pass every one by position
        # (a class called with keywords pays for a dict of them).
        self.args = args
        self.resp = resp
        self.decode = decode
        self.keys = keys
        self.script = script
        self.urgent = urgent
        self.repeatable = repeatable
        self.yes = yes

    def __repr__(self) -> str:
        return f"<Command {self.args[0]!r} keys={len(self.keys)}>"


# -- decoders -------------------------------------------------------------------


def _ok(reply: object) -> bool:
    """A ``+OK`` status (redis-py's pooled client turns ``SET``'s into True)."""
    return reply == b"OK" or reply is True or reply == "OK"


def _one(reply: object) -> bool:
    return reply == 1


def _raw(reply: object) -> object:
    return reply


def _grant(reply: object) -> object:
    """The vote in a reply of the acquire script (see ``_scripts.ACQUIRE``)."""
    if reply == 1:
        return True
    if isinstance(reply, list) and len(reply) == 2:
        wait, fresh = reply
        if isinstance(wait, int) and wait > 0:
            return Quarantined(wait / 1000, fresh == 1)
    return False


def _each_one(reply: object) -> object:
    """One vote per lock of an ``extend_many``; not a list: the reply is wrong
    (the caller counts that as an error)."""
    if isinstance(reply, list):
        return [r == 1 for r in reply]
    return reply


# -- factories ------------------------------------------------------------------

_SET_HEAD: Final = b"*6\r\n$3\r\nSET\r\n"
_NX_PX: Final = b"$2\r\nNX\r\n$2\r\nPX\r\n"


def _evalsha_head(sha: str, args: int, keys: int) -> bytes:
    return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%d\r\n" % (
        3 + args,
        sha.encode(),
        len(b"%d" % keys),
        keys,
    )


_ACQUIRE_HEAD: Final = _evalsha_head(_scripts.ACQUIRE_SHA, 5, 2)
_RELEASE_HEAD: Final = _evalsha_head(_scripts.RELEASE_SHA, 2, 1)
_RELEASE_QUIET_HEAD: Final = _evalsha_head(_scripts.RELEASE_QUIET_SHA, 2, 1)
_EXTEND_HEAD: Final = _evalsha_head(_scripts.EXTEND_SHA, 3, 1)


def set_nx(key: bytes, token: bytes, ttl_ms: int) -> Command:
    """``SET key token NX PX ttl_ms``: yes if the key was set (the acquire of a
    client whose restart quarantine is off)."""
    ttl = b"%d" % ttl_ms
    resp = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
        _SET_HEAD,
        len(key),
        key,
        len(token),
        token,
        _NX_PX,
        len(ttl),
        ttl,
    )
    args = ("SET", key, token, "NX", "PX", ttl_ms)
    return Command(args, resp, _ok, (key,), None, b"OK")


def acquire(
    key: bytes, token: bytes, ttl_ms: int, marker: bytes, quarantine_ms: int
) -> Command:
    """:data:`~._scripts.ACQUIRE`: ``SET NX PX`` and the check of the node's
    marker key in one call; yes, no, or a :class:`Quarantined` yes."""
    ttl = b"%d" % ttl_ms
    wait = b"%d" % quarantine_ms
    resp = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        _ACQUIRE_HEAD,
        len(key),
        key,
        len(marker),
        marker,
        len(token),
        token,
        len(ttl),
        ttl,
        len(wait),
        wait,
    )
    args = (
        "EVALSHA",
        _scripts.ACQUIRE_SHA,
        2,
        key,
        marker,
        token,
        ttl_ms,
        quarantine_ms,
    )
    return Command(args, resp, _grant, (key,), _scripts.ACQUIRE, 1)


def release(key: bytes, token: bytes, *, notify: bool) -> Command:
    """Delete the key if it holds ``token``; with ``notify``, announce it on the
    key's release channel (:data:`~._scripts.RELEASE`, else ``RELEASE_QUIET``)."""
    if notify:
        head, sha, script = _RELEASE_HEAD, _scripts.RELEASE_SHA, _scripts.RELEASE
    else:
        head, sha = _RELEASE_QUIET_HEAD, _scripts.RELEASE_QUIET_SHA
        script = _scripts.RELEASE_QUIET
    resp = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (head, len(key), key, len(token), token)
    args = ("EVALSHA", sha, 1, key, token)
    # yes=1, urgent=False, repeatable=True
    return Command(args, resp, _one, (key,), script, 1, False, True)


def extend(key: bytes, token: bytes, ttl_ms: int) -> Command:
    """Set the key's TTL if it holds ``token`` (:data:`~._scripts.EXTEND`)."""
    ttl = b"%d" % ttl_ms
    resp = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        _EXTEND_HEAD,
        len(key),
        key,
        len(token),
        token,
        len(ttl),
        ttl,
    )
    args = ("EVALSHA", _scripts.EXTEND_SHA, 1, key, token, ttl_ms)
    return Command(args, resp, _one, (key,), _scripts.EXTEND, 1, True)  # urgent


def extend_many(items: list[tuple[bytes, bytes, int]]) -> Command:
    """:func:`extend` for many ``(key, token, ttl_ms)`` in one call
    (:data:`~._scripts.EXTEND_MANY`): one vote per item."""
    args: list[Arg] = ["EVALSHA", _scripts.EXTEND_MANY_SHA, len(items)]
    args += [key for key, _, _ in items]
    for _, token, ttl_ms in items:
        args += (token, ttl_ms)
    keys = tuple(key for key, _, _ in items)
    return Command(
        tuple(args),
        encode_command(args),
        _each_one,
        keys,
        _scripts.EXTEND_MANY,
        urgent=True,
    )


def init_marker(marker: bytes) -> Command:
    """``SET marker 0``: the node holds every lock key of its prefix (see
    ``AsyncRedlock.init_nodes``)."""
    args = ("SET", marker, "0")
    return Command(args, encode_command(args), _ok)


def call(*args: Arg) -> Command:
    """Any other command (``PING``, ``INFO``, ``CONFIG GET``): its raw reply."""
    return Command(args, encode_command(args), _raw)


#: The scripts a transport may load up front (every ``EVALSHA`` above).
SCRIPTS: Final = (
    _scripts.ACQUIRE,
    _scripts.RELEASE,
    _scripts.RELEASE_QUIET,
    _scripts.EXTEND,
    _scripts.EXTEND_MANY,
)
