"""redlock_aio: an asyncio-native Redlock.

General layout. Each module imports only modules listed above it (a unit test
checks it, from this list):

- ``_quorum``: pure rules: quorum, drift, validity, the vote, extension verdicts, backoff.
- ``_forks``: fork awareness: a generation that grows in every forked child.
- ``_tokens``: lock tokens, random bytes read from the OS in bulk.
- ``_errors``: the exception hierarchy.
- ``_config``: checks of every argument, before any I/O; the terms of a TTL.
- ``_scripts``: the Lua scripts, with their SHA1s.
- ``_resp``: RESP, the wire format: the one command encoder, error replies.
- ``_commands``: ``Command``, what is sent to a node, and one factory per operation.
- ``_acl``: what a node's permission error means, and how to fix it.
- ``_url``: node URLs: names, identities, connection parameters, TLS.
- ``_node``: the seam: the ``Node`` protocol (``submit``), what transports share.
- ``_pubsub``: the pipelined transport's pub/sub connection (release notices).
- ``_mux``: ``MuxNode``, one pipelined connection per node: the default transport.
- ``_redis_py``: ``RedisNode``, a node on a redis-py client.
- ``_nodes``: a client's nodes, made from URLs, clients or Node objects.
- ``_fanout``: one round: a command to every node at once, decided at quorum.
- ``_lock``: ``Lock``, the handle of one acquisition, and its state.
- ``_notify``: waiting for a release: the wake-up line of a key.
- ``_keeper``: auto-extension scheduling: which locks to extend when.
- ``_context``: ``async with redlock.lock(...)``: hold, keep, cancel, release.
- ``_redlock``: the algorithm, top to bottom: ``AsyncRedlock``.
- ``testing``: real local redis-server processes and fault tools for tests.
- ``_demo``: the ``demo`` command.
- ``__main__``: the ``redlock-aio`` command line.
"""

from __future__ import annotations

import logging as _logging

from ._context import LockContext as LockContext
from ._errors import (
    ConfigurationError as ConfigurationError,
    ConfigurationTypeError as ConfigurationTypeError,
    ExtendError as ExtendError,
    LockLost as LockLost,
    LockNotAcquired as LockNotAcquired,
    NodeError as NodeError,
    RedlockClosed as RedlockClosed,
    RedlockError as RedlockError,
    ReleaseError as ReleaseError,
)
from ._lock import Lock as Lock
from ._mux import MuxNode as MuxNode
from ._node import Node as Node
from ._quorum import NodeOutcome as NodeOutcome, Vote as Vote
from ._redis_py import RedisNode as RedisNode
from ._redlock import AsyncRedlock as AsyncRedlock

__version__ = "0.1.0"

__all__ = [
    # the lock manager and its handles
    "AsyncRedlock",
    # errors
    "ConfigurationError",
    "ConfigurationTypeError",
    "ExtendError",
    "Lock",
    "LockContext",
    "LockLost",
    "LockNotAcquired",
    "MuxNode",
    # nodes and their answers
    "Node",
    "NodeError",
    "NodeOutcome",
    "RedisNode",
    "RedlockClosed",
    "RedlockError",
    "ReleaseError",
    "Vote",
]

# A library logs, the application decides where to: no "No handlers could be
# found" and no lastResort output on stderr unless the application configures it.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

# Present public names as redlock_aio.X (tracebacks, docs, pickling).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("redlock_aio._"):
        _obj.__module__ = __name__
del _name, _obj
