"""A client's nodes, made from what the caller passed (URLs, redis-py clients,
:class:`~._node.Node` objects) and checked to be distinct servers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from ._errors import ConfigurationError, ConfigurationTypeError
from ._mux import MuxNode
from ._node import Node
from ._redis_py import RedisNode
from ._url import describe_client, describe_url, host_identity

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable

logger = logging.getLogger("redlock_aio")

NodeSpec = str | Redis | Node


def make_nodes(specs: Iterable[object]) -> tuple[Node, ...]:
    """One :class:`Node` per spec: a URL gets a :class:`MuxNode`, a redis-py
    client a :class:`RedisNode`, a Node is used as it is. Every spec is checked
    before any client is made; the same server given twice is refused (the
    quorum would count its vote twice)."""
    specs = list(specs)
    seen: dict[object, str] = {}
    for spec in specs:
        name, identity = _describe(spec)
        if isinstance(identity, tuple) and len(identity) > 1 and identity[0] == "tcp":
            # localhost, 127.0.0.1 and ::1 are one server, however it was given.
            identity = ("tcp", host_identity(str(identity[1])), *identity[2:])
        try:
            given_twice = identity in seen
        except TypeError:
            raise ConfigurationTypeError(
                f"node {name}: its identity must be hashable (equal for two "
                f"handles on the same server), got {type(identity).__name__}"
            ) from None
        if given_twice:
            raise ConfigurationError(
                f"node {name} is given twice: each node must be a distinct server, "
                "or the quorum counts one server's vote twice"
            )
        seen[identity] = name
    nodes: list[Node] = []
    for spec in specs:
        if isinstance(spec, str):
            nodes.append(MuxNode.from_url(spec))
        elif isinstance(spec, Redis):
            nodes.append(RedisNode(spec))
        else:
            assert isinstance(spec, Node)
            nodes.append(spec)
    return tuple(nodes)


def _describe(spec: object) -> tuple[str, Hashable]:
    if isinstance(spec, str):
        return describe_url(spec)
    if isinstance(spec, Redis):
        return describe_client(spec)
    if isinstance(spec, Node):
        return spec.name, spec.identity
    raise ConfigurationTypeError(
        f"a node must be a redis:// URL, a redis.asyncio.Redis client or a "
        f"Node, got {type(spec).__name__}"
    )


def warn_if_weak(n: int, needed: int) -> None:
    """Warn about a node count that tolerates fewer failures than it looks."""
    if n < 3 or n % 2 == 0:
        logger.warning(
            "AsyncRedlock over %d node(s): %s; an odd number >= 3 of independent "
            "nodes (3 or 5) is what tolerates node failures",
            n,
            "a single node is a single point of failure"
            if n == 1
            else f"it tolerates only {n - needed} failure(s), like {n - 1} nodes would",
        )
