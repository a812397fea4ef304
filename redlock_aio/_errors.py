"""The exception hierarchy. Imports nothing from the package but the outcome type.

::

    RedlockError
    ├── ConfigurationError      bad input, raised before any I/O (also a ValueError)
    │   └── ConfigurationTypeError   wrong type (also a TypeError)
    ├── LockNotAcquired         no quorum within the retries or the timeout
    ├── LockLost                validity ran out or the lock could not be kept
    ├── ExtendError             one extend() missed its quorum; still valid until valid_until
    ├── ReleaseError            release() could not confirm a quorum; keys expire by TTL
    ├── RedlockClosed           the AsyncRedlock was closed
    └── NodeError               one node's failure, with the cause as __cause__
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._quorum import NodeOutcome


class RedlockError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(RedlockError, ValueError):
    """An argument is invalid. Raised before any I/O; the message says what to fix."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """An argument has the wrong type. Raised before any I/O."""


class RedlockClosed(RedlockError):
    """Raised when an operation is started on an :class:`AsyncRedlock` after ``aclose()``."""


class _OutcomesError(RedlockError):
    """An error that keeps what every node answered, for diagnosis."""

    def __init__(self, message: str, outcomes: Sequence[NodeOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes: tuple[NodeOutcome, ...] = tuple(outcomes)

    def __str__(self) -> str:
        base = super().__str__()
        if not self.outcomes:
            return base
        return f"{base} [{'; '.join(str(o) for o in self.outcomes)}]"


class LockNotAcquired(_OutcomesError):
    """Raised by ``acquire()`` when no quorum of nodes granted the lock with positive
    validity within the retry budget or the caller's timeout.

    :ivar outcomes: each node's answer in the last attempt.
    :ivar attempts: how many attempts were made.
    """

    def __init__(
        self, message: str, outcomes: Sequence[NodeOutcome] = (), attempts: int = 0
    ) -> None:
        super().__init__(message, outcomes)
        self.attempts = attempts


class LockLost(_OutcomesError):
    """The lock's validity ran out, or it could not be extended in time: exclusivity
    is gone. Raised by ``extend()`` on an expired lock and by ``async with lock(...)``
    when auto-extension could not keep the lock (the body was cancelled)."""


class ExtendError(_OutcomesError):
    """Raised by ``extend()`` when fewer than a quorum of nodes extended the lock.
    The lock stays valid until its previous ``valid_until``; nothing was revived."""


class ReleaseError(_OutcomesError):
    """Raised by ``release()`` when fewer than a quorum of nodes confirmed the release
    (they errored or timed out). The keys there expire by their TTL; until then the
    resource may be unavailable to others. The lock stays releasable: call again."""


class NodeError(RedlockError):
    """One node failed: connection error, timeout or an error reply. Kept in outcomes
    as that node's vote against; the original exception is ``__cause__``.

    :ivar node: the node's description (never includes a password).
    :ivar detail: what went wrong (with the cause's type, and for a denied
        permission the ACL rule to add).
    """

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        #: the message without the node's name
        self.detail = message
