"""Lock tokens (``_tokens``): read from the OS in bulk, never handed out twice,
not even by a forked child (``_forks``)."""

from __future__ import annotations

import os

import pytest

from redlock_aio import _tokens
from redlock_aio._tokens import TokenSource


def test_tokens_are_twenty_random_bytes_and_never_repeat() -> None:
    source = TokenSource()
    tokens = [source.take() for _ in range(3 * _tokens.BATCH + 7)]
    assert {len(t) for t in tokens} == {_tokens.SIZE}
    assert len(set(tokens)) == len(tokens)


def test_two_sources_share_nothing() -> None:
    a, b = TokenSource(), TokenSource()
    assert {a.take() for _ in range(100)}.isdisjoint(b.take() for _ in range(100))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    """The child copies the parent's unused buffer: without the fork check,
    its first token would be the parent's next one (two processes, one token:
    either one's release would delete the other's lock)."""
    source = TokenSource()
    source.take()  # the buffer is filled, most of it unused
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next token and leave at once
        try:
            os.write(write, source.take())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = b""
        while len(child) < _tokens.SIZE:
            chunk = os.read(read, _tokens.SIZE)
            if not chunk:
                break
            child += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == _tokens.SIZE
    assert child != source.take()
