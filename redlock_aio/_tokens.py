"""Lock tokens: 20 random bytes each, read from ``os.urandom`` in bulk.

``os.urandom(20)`` per acquire is a system call per acquire, and a system call
costs more than the rest of an acquire's client work on some machines (with
the kernel's side-channel mitigations it also evicts what the client had
cached). A :class:`TokenSource` reads :data:`BATCH` tokens' worth at once.
Each token is still 20 bytes of the operating system's CSPRNG, used once:

- one source per client (``AsyncRedlock``), which lives in one event loop and
  so one thread: no two threads take from the same buffer;
- a forked child discards what it copied from its parent (see :mod:`._forks`),
  so parent and child never hand out the same bytes.
"""

from __future__ import annotations

import os

from . import _forks

#: Bytes per token (160 bits, as ``secrets.token_bytes(20)``).
SIZE = 20
#: Tokens read per system call.
BATCH = 256


class TokenSource:
    """Unique random tokens for one client's acquires."""

    __slots__ = ("_at", "_buffer", "_generation")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0
        self._generation = -1

    def take(self) -> bytes:
        """The next token: :data:`SIZE` random bytes no caller got before."""
        at = self._at
        if at >= len(self._buffer) or self._generation != _forks.generation:
            self._buffer = os.urandom(SIZE * BATCH)
            self._generation = _forks.generation
            at = 0
        self._at = at + SIZE
        return self._buffer[at : at + SIZE]
