"""Fork awareness, without a system call per check.

:data:`generation` grows by one in every child the process forks (``os.fork``,
``multiprocessing``'s fork start method, a pre-forking server), so that state a
client made in its parent is known to be the parent's: random bytes not yet
used for tokens (reused, they would give two processes the same token), or the
event loop the client ran in. ``os.getpid()`` would tell the same, but it is a
system call, and the hot path would make one per request.
"""

from __future__ import annotations

import os

#: How many forks stand between this process and the one that imported this
#: module (read it as ``_forks.generation``: it changes).
generation = 0


def _forked() -> None:
    global generation
    generation += 1


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forked)
