"""The Node contract: ONE set of tests, run against every implementation of
:class:`~redlock_aio.Node` (in the style of trio's ``generic_lock_test`` and
redsync's ``makeCases``).

Each test gets a fresh node from the ``target`` fixture, parametrized over
``memory`` (:class:`~redlock_aio.testing.InMemoryNode`), ``redis-py``
(:class:`~redlock_aio.RedisNode`) and ``mux`` (:class:`~redlock_aio.MuxNode`),
the last two on the first node of the suite's cluster. The fixture closes the
node, deletes every key the test made, and checks that no task is left behind.

Where the implementations differ by design, the test asserts each one's own
documented behaviour and says so (``call("PING")`` through redis-py's response
callbacks; what a submit does after ``aclose``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Hashable
from typing import TYPE_CHECKING

import pytest
import redis.exceptions
from redis.exceptions import ResponseError

from redlock_aio import MuxNode, Node, RedisNode, _commands
from redlock_aio._quorum import Quarantined
from redlock_aio._scripts import MARKER
from redlock_aio.testing import HungNode, InMemoryNode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from redlock_aio._commands import Command
    from redlock_aio.testing import LocalCluster, RedisServer

pytestmark = pytest.mark.integration

KINDS = ("memory", "redis-py", "mux")
REAL = ("redis-py", "mux")

#: Generous upper bound for anything that must "not hang" on a loaded machine.
BOUND = 30.0
#: Per-request timeout for requests to a node that answers.
TIMEOUT = 5.0
#: TTL of keys that must outlive the test.
LONG_MS = 60_000


async def eventually(check: Callable[[], bool], within: float = BOUND) -> None:
    """Wait until ``check()`` is true, polling; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def client_count(server: RedisServer) -> int:
    """Clients connected to the server, not counting the probe itself."""
    info = server.command("INFO", "clients")
    assert isinstance(info, bytes)
    for line in info.splitlines():
        if line.startswith(b"connected_clients:"):
            return int(line.split(b":")[1]) - 1
    raise AssertionError(info)


class Target:
    """One implementation under test: its fresh node, the server behind it
    (None for the in-memory node), and what a test needs to look at or
    disturb the node in an implementation-neutral way."""

    def __init__(
        self,
        kind: str,
        node: Node,
        server: RedisServer | None,
        make: Callable[[str], Node] | None,
    ) -> None:
        self.kind = kind
        self.node = node
        self.server = server
        self._make = make
        self._prefix = b"contract:%s:" % uuid.uuid4().hex[:12].encode()
        self.made: list[bytes] = []

    @property
    def memory(self) -> InMemoryNode:
        assert isinstance(self.node, InMemoryNode)
        return self.node

    # -- keys ----------------------------------------------------------------------

    def key(self, name: str) -> bytes:
        """A key of this test's own (deleted after it)."""
        key = self._prefix + name.encode()
        self.made.append(key)
        return key

    def marker(self, name: str) -> bytes:
        """A marker key of this test's own: missing until a request writes it."""
        return self.key(name + ":") + MARKER

    def peek(self, key: bytes) -> bytes | None:
        """What the node holds at ``key``, looked at behind the node's back."""
        if self.server is None:
            return self.memory.get(key)
        value = self.server.command("GET", key)
        assert value is None or isinstance(value, bytes)
        return value

    def pttl(self, key: bytes) -> int:
        """The key's TTL left in ms; -2 if it is gone."""
        if self.server is None:
            if self.memory.get(key) is None:
                return -2
            return math.ceil((self.memory.store[key][1] - self.memory.clock()) * 1000)
        ttl = self.server.command("PTTL", key)
        assert isinstance(ttl, int)
        return ttl

    def clean(self) -> None:
        if self.server is not None and self.made:
            self.server.command("DEL", *self.made)
        elif self.server is None:
            for key in self.made:
                self.memory.store.pop(key, None)
                if self.memory.markers is not None:
                    self.memory.markers.pop(key, None)

    # -- faults ----------------------------------------------------------------------

    def error_reply(self) -> tuple[Command, Callable[[BaseException], None]]:
        """A command the node answers with an error reply, and the check of
        the exception its future fails with. A real server gets a script
        command on a key of the wrong type (WRONGTYPE); the in-memory node,
        which cannot do that, its ``error`` knob."""
        key = self.key("wrongtype")
        command = _commands.release(key, b"token", notify=False)
        if self.server is None:
            error = ResponseError("WRONGTYPE Operation against a key (in-memory node)")
            self.memory.error = error

            def check(exc: BaseException) -> None:
                assert exc is error

            return command, check
        self.server.command("RPUSH", key, "x")

        def check_real(exc: BaseException) -> None:
            assert isinstance(exc, ResponseError), repr(exc)
            assert "WRONGTYPE" in str(exc)

        return command, check_real

    def heal(self) -> None:
        """Undo :meth:`error_reply` and :meth:`stalling`."""
        if self.server is None:
            self.memory.error = None
            self.memory.gate = None

    def stalling(self) -> Command:
        """A command the node will not answer until :meth:`heal` (or long):
        a ``BLPOP`` on a key nobody pushes to; the in-memory node's ``gate``."""
        if self.server is None:
            self.memory.gate = asyncio.Event()
            return _commands.call("PING")
        return _commands.call("BLPOP", self.key("never-pushed"), "20")

    @contextlib.asynccontextmanager
    async def hung(self) -> AsyncIterator[Node]:
        """A node of this implementation that accepts requests and never
        answers: the in-memory node with ``hang``; the others on a
        :class:`~redlock_aio.testing.HungNode` port."""
        if self._make is None:
            memory = InMemoryNode("hung", hang=True)
            try:
                yield memory
            finally:
                await memory.aclose()
            return
        with HungNode() as port:
            node = self._make(port.url)
            try:
                yield node
            finally:
                await node.aclose()


@pytest.fixture(params=KINDS)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    """A fresh node of each implementation; closed, its keys deleted and no
    task of it left behind (a bounded wait) after the test."""
    kind: str = request.param
    before = other_tasks()
    make: Callable[[str], Node] | None
    server: RedisServer | None
    node: Node
    if kind == "memory":
        make, server = None, None
        node = InMemoryNode("memory", markers={})
    else:
        cluster: LocalCluster = request.getfixturevalue("cluster")
        server = cluster[0]
        make = RedisNode.from_url if kind == "redis-py" else MuxNode.from_url
        node = make(cluster.urls[0])
    t = Target(kind, node, server, make)
    try:
        yield t
    finally:
        t.heal()
        await node.aclose()
        t.clean()
    deadline = time.monotonic() + BOUND
    while left := other_tasks() - before:
        assert time.monotonic() < deadline, f"tasks left behind: {left}"
        await asyncio.sleep(0.01)


async def vote(node: Node, command: Command, timeout: float = TIMEOUT) -> object:
    """Submit ``command`` and decode its reply (its vote)."""
    return command.decode(await node.submit(command, timeout=timeout))


# -- the protocol itself ------------------------------------------------------------


async def test_is_a_node_whose_submit_returns_a_future_at_once(target: Target) -> None:
    node = target.node
    assert isinstance(node, Node)
    assert isinstance(node.name, str)
    assert node.name
    assert isinstance(node.identity, Hashable)
    hash(node.identity)
    fut = node.submit(_commands.call("PING"), timeout=TIMEOUT)  # no await
    assert isinstance(fut, asyncio.Future)
    await fut


# -- set_nx ---------------------------------------------------------------------------


async def test_set_nx_takes_a_free_key(target: Target) -> None:
    key = target.key("k")
    assert await vote(target.node, _commands.set_nx(key, b"mine", LONG_MS)) is True
    assert target.peek(key) == b"mine"
    assert 0 < target.pttl(key) <= LONG_MS


async def test_set_nx_refuses_a_held_key(target: Target) -> None:
    key = target.key("k")
    assert await vote(target.node, _commands.set_nx(key, b"first", LONG_MS)) is True
    assert await vote(target.node, _commands.set_nx(key, b"second", LONG_MS)) is False
    assert target.peek(key) == b"first"


async def test_set_nx_key_expires_by_its_px(target: Target) -> None:
    key = target.key("k")
    assert await vote(target.node, _commands.set_nx(key, b"mine", 100)) is True
    await eventually(lambda: target.peek(key) is None)
    assert await vote(target.node, _commands.set_nx(key, b"next", LONG_MS)) is True
    assert target.peek(key) == b"next"


# -- acquire (the script, with the node's marker) -------------------------------------


async def test_acquire_says_yes_with_an_initialised_marker(target: Target) -> None:
    key, marker = target.key("k"), target.marker("m")
    assert await vote(target.node, _commands.init_marker(marker)) is True
    command = _commands.acquire(key, b"mine", LONG_MS, marker, 3_600_000)
    assert await vote(target.node, command) is True
    assert target.peek(key) == b"mine"
    assert 0 < target.pttl(key) <= LONG_MS


async def test_acquire_without_a_marker_is_quarantined_fresh_then_not(
    target: Target,
) -> None:
    marker = target.marker("m")
    first, second = target.key("k1"), target.key("k2")
    got = await vote(
        target.node, _commands.acquire(first, b"mine", LONG_MS, marker, 3_600_000)
    )
    assert isinstance(got, Quarantined)
    assert got.wait > 0
    assert got.fresh is True
    assert target.peek(first) == b"mine"  # set: a yes that does not count
    again = await vote(
        target.node, _commands.acquire(second, b"mine", LONG_MS, marker, 3_600_000)
    )
    assert isinstance(again, Quarantined)
    assert 0 < again.wait <= got.wait
    assert again.fresh is False


async def test_acquire_refuses_a_held_key(target: Target) -> None:
    key, marker = target.key("k"), target.marker("m")
    assert await vote(target.node, _commands.init_marker(marker)) is True
    assert await vote(target.node, _commands.set_nx(key, b"other", LONG_MS)) is True
    command = _commands.acquire(key, b"mine", LONG_MS, marker, 3_600_000)
    assert await vote(target.node, command) is False
    assert target.peek(key) == b"other"


async def test_acquire_without_quarantine_says_yes_without_a_marker(
    target: Target,
) -> None:
    key, marker = target.key("k"), target.marker("m")
    command = _commands.acquire(key, b"mine", LONG_MS, marker, 0)
    assert await vote(target.node, command) is True
    assert target.peek(key) == b"mine"


# -- release ----------------------------------------------------------------------------


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "quiet"])
async def test_release_needs_the_token(target: Target, notify: bool) -> None:
    key = target.key("k")
    node = target.node
    assert await vote(node, _commands.set_nx(key, b"mine", LONG_MS)) is True
    assert await vote(node, _commands.release(key, b"theirs", notify=notify)) is False
    assert target.peek(key) == b"mine"
    assert await vote(node, _commands.release(key, b"mine", notify=notify)) is True
    assert target.peek(key) is None
    assert await vote(node, _commands.release(key, b"mine", notify=notify)) is False
    never = target.key("never-set")
    assert await vote(node, _commands.release(never, b"mine", notify=notify)) is False


# -- extend -------------------------------------------------------------------------------


async def test_extend_sets_a_new_ttl_only_with_the_token(target: Target) -> None:
    key = target.key("k")
    node = target.node
    assert await vote(node, _commands.set_nx(key, b"mine", 10_000)) is True
    assert await vote(node, _commands.extend(key, b"theirs", LONG_MS)) is False
    assert 0 < target.pttl(key) <= 10_000
    assert await vote(node, _commands.extend(key, b"mine", LONG_MS)) is True
    assert 10_000 < target.pttl(key) <= LONG_MS
    assert target.peek(key) == b"mine"


async def test_extend_never_revives_a_gone_key(target: Target) -> None:
    node = target.node
    released, never = target.key("released"), target.key("never-set")
    assert await vote(node, _commands.set_nx(released, b"mine", LONG_MS)) is True
    assert await vote(node, _commands.release(released, b"mine", notify=False)) is True
    assert await vote(node, _commands.extend(released, b"mine", LONG_MS)) is False
    assert await vote(node, _commands.extend(never, b"mine", LONG_MS)) is False
    assert target.peek(released) is None
    assert target.peek(never) is None


async def test_extend_many_votes_once_per_item_in_order(target: Target) -> None:
    node = target.node
    own1, foreign, missing, own2 = (
        target.key(n) for n in ("own1", "foreign", "missing", "own2")
    )
    for key, token in ((own1, b"mine"), (foreign, b"theirs"), (own2, b"mine")):
        assert await vote(node, _commands.set_nx(key, token, 10_000)) is True
    items = [
        (own1, b"mine", LONG_MS),
        (foreign, b"mine", LONG_MS),
        (missing, b"mine", LONG_MS),
        (own2, b"mine", LONG_MS),
    ]
    assert await vote(node, _commands.extend_many(items)) == [True, False, False, True]
    assert 10_000 < target.pttl(own1) <= LONG_MS
    assert 10_000 < target.pttl(own2) <= LONG_MS
    assert 0 < target.pttl(foreign) <= 10_000
    assert target.peek(foreign) == b"theirs"
    assert target.peek(missing) is None


# -- raw commands -------------------------------------------------------------------------


async def test_call_ping_gives_its_raw_reply(target: Target) -> None:
    reply = await target.node.submit(_commands.call("PING"), timeout=TIMEOUT)
    if target.kind == "redis-py":
        # Through redis-py's response callbacks, which turn PONG into True (as
        # they turn SET's OK into True, which the decoders accept).
        assert reply is True
    else:
        assert reply == b"PONG"


# -- ordering, callbacks ------------------------------------------------------------------


async def test_a_request_after_a_set_is_answered_after_it(target: Target) -> None:
    node = target.node
    pairs = []
    for i in range(10):  # all in one turn of the loop, no await in between
        key = target.key(f"k{i}")
        token = b"token-%d" % i
        set_nx = _commands.set_nx(key, token, LONG_MS)
        set_fut = node.submit(set_nx, timeout=TIMEOUT)
        release = _commands.release(key, token, notify=False)
        release_fut = node.submit(release, timeout=TIMEOUT, after=set_fut)
        pairs.append((key, set_nx, set_fut, release, release_fut))
    for key, set_nx, set_fut, release, release_fut in pairs:
        assert release.decode(await release_fut) is True
        assert set_fut.done()
        assert set_nx.decode(set_fut.result()) is True
        assert target.peek(key) is None


@pytest.mark.parametrize("outcome", ["success", "failure", "cancelled"])
async def test_on_done_is_called_once_with_the_done_future(
    target: Target, outcome: str
) -> None:
    calls: list[tuple[asyncio.Future[object], bool]] = []

    def on_done(fut: asyncio.Future[object]) -> None:
        calls.append((fut, fut.done()))

    if outcome == "success":
        command = _commands.call("PING")
    elif outcome == "failure":
        command, check = target.error_reply()
    else:
        command = target.stalling()
    fut = target.node.submit(command, timeout=TIMEOUT, on_done=on_done)
    if outcome == "cancelled":
        await asyncio.sleep(0)
        fut.cancel()
    await asyncio.wait((fut,), timeout=BOUND)
    assert fut.done()
    await eventually(lambda: bool(calls))
    for _ in range(10):  # a second call, if any, would come soon after
        await asyncio.sleep(0)
    assert len(calls) == 1
    assert calls[0][0] is fut
    assert calls[0][1] is True
    if outcome == "success":
        assert fut.exception() is None
    elif outcome == "failure":
        exc = fut.exception()
        assert exc is not None
        check(exc)
    else:
        assert fut.cancelled()


# -- failures -------------------------------------------------------------------------------


async def test_an_error_reply_fails_the_future_with_it(target: Target) -> None:
    command, check = target.error_reply()
    fut = target.node.submit(command, timeout=TIMEOUT)
    await asyncio.wait((fut,), timeout=BOUND)
    assert fut.done()
    exc = fut.exception()
    assert exc is not None
    check(exc)
    with pytest.raises(type(exc)):
        await fut
    target.heal()
    # The node is not broken by it.
    key = target.key("after")
    assert await vote(target.node, _commands.set_nx(key, b"mine", LONG_MS)) is True


async def test_a_node_that_does_not_answer_times_out(target: Target) -> None:
    loop = asyncio.get_running_loop()
    async with target.hung() as node:
        start = loop.time()
        fut = node.submit(_commands.set_nx(b"k", b"mine", LONG_MS), timeout=0.5)
        done, _ = await asyncio.wait((fut,), timeout=BOUND)
        elapsed = loop.time() - start
        assert fut in done, "no timeout"
        assert isinstance(fut.exception(), TimeoutError), repr(fut.exception())
        with pytest.raises(TimeoutError):
            await fut
        # About its timeout: not at once, and well within the bound.
        assert 0.25 <= elapsed < BOUND


@pytest.mark.parametrize("when", ["past", "near"])
async def test_not_after_cuts_a_longer_timeout(target: Target, when: str) -> None:
    loop = asyncio.get_running_loop()
    async with target.hung() as node:
        start = loop.time()
        not_after = start - 1.0 if when == "past" else start + 0.3
        fut = node.submit(
            _commands.extend(b"k", b"mine", LONG_MS),
            timeout=3600.0,
            not_after=not_after,
        )
        done, _ = await asyncio.wait((fut,), timeout=BOUND)
        assert fut in done, "waited for the timeout instead of not_after"
        assert isinstance(fut.exception(), TimeoutError)
        assert loop.time() - start < BOUND


@pytest.mark.parametrize("moment", ["at-once", "while-waiting"])
async def test_cancelling_a_request_leaves_the_node_usable(
    target: Target, moment: str
) -> None:
    node = target.node
    # Connected first, so that the cancelled request is really in flight.
    assert await vote(node, _commands.set_nx(target.key("before"), b"x", LONG_MS))
    if moment == "at-once":
        command = _commands.set_nx(target.key("cancelled"), b"x", LONG_MS)
        fut = node.submit(command, timeout=TIMEOUT)
        fut.cancel()
    else:
        fut = node.submit(target.stalling(), timeout=BOUND)
        finished, _ = await asyncio.wait((fut,), timeout=0.2)
        assert not finished
        fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
    target.heal()
    key = target.key("after")
    assert await vote(node, _commands.set_nx(key, b"mine", LONG_MS)) is True
    assert await vote(node, _commands.release(key, b"mine", notify=False)) is True
    reply = await node.submit(_commands.call("PING"), timeout=TIMEOUT)
    assert reply in (b"PONG", True)


# -- aclose ---------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_what_a_later_submit_does(
    target: Target,
) -> None:
    """``aclose`` twice is fine, and a submit afterwards never hangs. What it
    does differs by implementation, each as documented:

    - mux: ``aclose`` is final: the future fails with ``ConnectionError``;
    - redis-py: ``aclose`` closes the client's connections (the node's
      documented job: release what it holds); redis-py's pool opens a new one
      on the next request, which succeeds;
    - memory: ``aclose`` sets ``closed``; the node keeps answering.
    """
    node = target.node
    assert await vote(node, _commands.set_nx(target.key("k"), b"x", LONG_MS))
    server = target.server
    if server is not None:
        assert client_count(server) >= 1
    await node.aclose()
    await node.aclose()
    if server is not None:
        # Its connections are released.
        await eventually(lambda: client_count(server) == 0)
    fut = node.submit(_commands.call("PING"), timeout=TIMEOUT)
    done, _ = await asyncio.wait((fut,), timeout=BOUND)
    assert fut in done, "a submit after aclose hangs"
    if target.kind == "mux":
        exc = fut.exception()
        assert isinstance(exc, redis.exceptions.ConnectionError), repr(exc)
        assert "closed" in str(exc)
    elif target.kind == "redis-py":
        assert fut.result() is True
    else:
        assert target.memory.closed
        assert fut.result() == b"PONG"
    await node.aclose()


# -- NOSCRIPT -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", REAL, indirect=True)
async def test_script_commands_recover_from_a_script_flush(target: Target) -> None:
    node, server = target.node, target.server
    assert server is not None
    marker = target.marker("m")
    assert await vote(node, _commands.init_marker(marker)) is True  # connected
    server.command("SCRIPT", "FLUSH")
    key, quiet = target.key("k"), target.key("quiet")
    assert await vote(node, _commands.acquire(key, b"mine", 10_000, marker, 1)) is True
    assert await vote(node, _commands.set_nx(quiet, b"mine", 10_000)) is True
    assert await vote(node, _commands.extend(key, b"mine", LONG_MS)) is True
    assert await vote(node, _commands.extend_many([(key, b"mine", LONG_MS)])) == [True]
    assert await vote(node, _commands.release(quiet, b"mine", notify=False)) is True
    assert await vote(node, _commands.release(key, b"mine", notify=True)) is True
    assert target.peek(key) is None
    assert target.peek(quiet) is None
