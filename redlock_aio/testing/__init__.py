"""Tools to test Redlock code against real faults (public).

- ``_checker``: :class:`MutexChecker`, which finds overlapping lock windows,
  also across processes.
- ``_store``: :class:`ProtectedStore`, the resource a lock guards, which logs
  every write as it lands, and :class:`StoreChecker`, which finds writes that
  landed inside another holder's window, or after their own validity.
- ``_memory``: :class:`InMemoryNode`, a node whose keys live in a dict, with
  knobs for faults, for focused unit tests.
- ``_proxy``: :class:`FaultProxy`, an in-process TCP proxy that adds latency,
  blackholes, resets or drops replies between one client and one node.
- ``_servers``: real local redis-server processes (:class:`RedisServer`,
  :class:`LocalCluster`) that a test can kill, pause, resume and restart, and
  :class:`HungNode`, a port that accepts connections and never answers.

Nothing here is imported by the library itself; optional packages
(the server packages, ``testcontainers``) are imported only when used.
"""

from __future__ import annotations

from ._checker import (
    Holding as Holding,
    MutexChecker as MutexChecker,
    Violation as Violation,
)
from ._memory import InMemoryNode as InMemoryNode
from ._proxy import FaultProxy as FaultProxy
from ._servers import (
    ENV_VAR as ENV_VAR,
    SOURCES as SOURCES,
    HungNode as HungNode,
    LocalCluster as LocalCluster,
    RedisReplyError as RedisReplyError,
    RedisServer as RedisServer,
    RedisServerNotFound as RedisServerNotFound,
    ServerVersion as ServerVersion,
    docker_available as docker_available,
    find_redis_server as find_redis_server,
    free_port as free_port,
    server_version as server_version,
)
from ._store import (
    ProtectedStore as ProtectedStore,
    StoreChecker as StoreChecker,
    StoreClient as StoreClient,
    StoreError as StoreError,
    StoreViolation as StoreViolation,
    Write as Write,
)

__all__ = [
    "ENV_VAR",
    "SOURCES",
    "FaultProxy",
    "Holding",
    "HungNode",
    "InMemoryNode",
    "LocalCluster",
    "MutexChecker",
    "ProtectedStore",
    "RedisReplyError",
    "RedisServer",
    "RedisServerNotFound",
    "ServerVersion",
    "StoreChecker",
    "StoreClient",
    "StoreError",
    "StoreViolation",
    "Violation",
    "Write",
    "docker_available",
    "find_redis_server",
    "free_port",
    "server_version",
]
