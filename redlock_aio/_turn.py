"""Work deferred to the end of the current turn of the event loop, with one loop
callback for all of it.

In a burst (many requests in one turn), two things wait for the end of the
turn: a connection's writes after the one that revealed the burst (sent
together, one system call for many requests), and the deadlines of the requests
made meanwhile (counted from when they went out, so that a long turn of the
client's own, such as ten thousand releases at once, is not charged to the nodes
as a timeout). Requests made one at a time add nothing to the turn.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ["TurnEnd", "turn_end"]

logger = logging.getLogger("redlock_aio")


class TurnEnd:
    """The hooks to run at the end of this turn of one event loop, in the order
    they were added."""

    __slots__ = ("_hooks", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._hooks: list[Callable[[], None]] = []

    @property
    def pending(self) -> bool:
        """Whether hooks wait for the end of this turn (a callback is set)."""
        return bool(self._hooks)

    def add(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` at the end of this turn (once per call)."""
        if not self._hooks:
            self.loop.call_soon(self._run)
        self._hooks.append(hook)

    def _run(self) -> None:
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # a bug: the other hooks must still run
                logger.exception("end-of-turn hook %r failed", hook)


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnEnd] = (
    weakref.WeakKeyDictionary()
)


def turn_end(loop: asyncio.AbstractEventLoop) -> TurnEnd:
    """The end-of-turn hooks of ``loop``."""
    turn = _TURNS.get(loop)
    if turn is None:
        turn = _TURNS[loop] = TurnEnd(loop)
    return turn
