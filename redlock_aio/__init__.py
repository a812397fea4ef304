"""redlock_aio: an asyncio-native Redlock.

General layout (imports flow down this list, never up):

- ``_errors``: the exception hierarchy.
- ``_quorum``: await-free arithmetic: quorum, drift, validity, vote tally.
- ``_config``: checks of every argument, before any I/O.
- ``_scripts``: the Lua scripts.
- ``_node``: the per-node seam (``Node`` protocol, ``RedisNode`` on redis-py).
- ``_wire``: ``MuxNode``, one multiplexed connection per node with a hiredis
  reader: the default transport for node URLs.
- ``_round``: one request to every node at once, decided at quorum.
- ``_redlock``: the algorithm: ``AsyncRedlock`` and ``Lock``.
- ``_hold``: ``async with redlock.lock(...)`` with auto-extension.
- ``testing``: real local redis-server processes for tests (public, optional).
"""

from __future__ import annotations

import logging as _logging

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
from ._hold import LockContext as LockContext
from ._node import Node as Node, RedisNode as RedisNode
from ._quorum import NodeOutcome as NodeOutcome, Vote as Vote
from ._redlock import AsyncRedlock as AsyncRedlock, Lock as Lock
from ._wire import MuxNode as MuxNode

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
