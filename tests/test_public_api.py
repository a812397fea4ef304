"""The public surface: everything in __all__ exists, presents itself as
redlock_aio.X, and the errors form one tree."""

from __future__ import annotations

import pytest

import redlock_aio
from redlock_aio import (
    ConfigurationError,
    ConfigurationTypeError,
    ExtendError,
    LockLost,
    LockNotAcquired,
    NodeError,
    NodeOutcome,
    RedlockClosed,
    RedlockError,
    ReleaseError,
    Vote,
)


def test_all_names_exist_and_are_presented_as_redlock_aio() -> None:
    for name in redlock_aio.__all__:
        obj = getattr(redlock_aio, name)
        assert obj.__module__ == "redlock_aio", name


def test_error_tree() -> None:
    for exc in (
        ConfigurationError,
        LockNotAcquired,
        LockLost,
        ExtendError,
        ReleaseError,
        RedlockClosed,
        NodeError,
    ):
        assert issubclass(exc, RedlockError)
    assert issubclass(ConfigurationError, ValueError)


#: The tree drawn in the docstring of ``redlock_aio/_errors.py``: each error's
#: parent in the library's hierarchy.
TREE: dict[type[Exception], type[Exception]] = {
    ConfigurationError: RedlockError,
    ConfigurationTypeError: ConfigurationError,
    LockNotAcquired: RedlockError,
    LockLost: RedlockError,
    ExtendError: RedlockError,
    ReleaseError: RedlockError,
    RedlockClosed: RedlockError,
    NodeError: RedlockError,
}
OUTCOMES_ERRORS = (LockNotAcquired, LockLost, ExtendError, ReleaseError)


def test_error_tree_shape() -> None:
    """The shape the docstring of ``_errors.py`` draws: one base; the
    configuration errors also ValueError (and TypeError for a wrong type); the
    errors that carry outcomes share a base of their own, which NodeError (one
    node's failure), RedlockClosed and the configuration errors are outside."""
    assert RedlockError.__bases__ == (Exception,)
    tree: dict[type[Exception], type[Exception]] = {RedlockError: Exception, **TREE}
    for exc, parent in TREE.items():
        assert issubclass(exc, parent), exc
        # Within the tree, an error is a subclass of itself and its ancestors
        # only: no error is also a kind of an unrelated one.
        chain: set[type[Exception]] = set()
        up: type[Exception] = exc
        while up in tree:
            chain.add(up)
            up = tree[up]
        assert {e for e in tree if issubclass(exc, e)} == chain, exc

    assert issubclass(ConfigurationError, ValueError)
    assert not issubclass(ConfigurationError, TypeError)
    assert issubclass(ConfigurationTypeError, TypeError)
    assert issubclass(ConfigurationTypeError, ValueError)
    # Callers may catch either the library's error or the builtin one.
    with pytest.raises(TypeError, match="wrong type"):
        raise ConfigurationTypeError("wrong type")
    with pytest.raises(ValueError, match="wrong type"):
        raise ConfigurationTypeError("wrong type")

    # The outcome-carrying errors: siblings under one base below RedlockError.
    shared = set.intersection(*(set(e.__mro__) for e in OUTCOMES_ERRORS))
    outcomes_bases = shared - set(RedlockError.__mro__)
    assert outcomes_bases, "no common base carries the outcomes"
    for exc in OUTCOMES_ERRORS:
        assert not issubclass(exc, (ValueError, TypeError)), exc
        assert not issubclass(exc, tuple(e for e in OUTCOMES_ERRORS if e is not exc))
    for exc in (NodeError, RedlockClosed, ConfigurationError, ConfigurationTypeError):
        assert not outcomes_bases & set(exc.__mro__), exc
        assert not issubclass(exc, OUTCOMES_ERRORS), exc
    assert not issubclass(NodeError, (ValueError, TypeError))


def test_errors_carry_what_their_docstrings_say() -> None:
    """The outcome-carrying errors keep every node's answer (a tuple, shown in
    ``str``); LockNotAcquired also counts its attempts; NodeError names its
    node and keeps the message without it."""
    outcome = NodeOutcome("127.0.0.1:7001", Vote.NO)
    for exc_type in OUTCOMES_ERRORS:
        exc = exc_type("no quorum", [outcome])
        assert exc.outcomes == (outcome,)
        assert str(outcome) in str(exc)
        assert exc_type("no quorum").outcomes == ()
        assert str(exc_type("no quorum")) == "no quorum"
    assert LockNotAcquired("no quorum", [outcome], attempts=3).attempts == 3
    assert not hasattr(NodeError("n", "m"), "outcomes")
    assert not hasattr(RedlockClosed("closed"), "outcomes")

    error = NodeError("127.0.0.1:7001", "timed out")
    assert error.node == "127.0.0.1:7001"
    assert error.detail == "timed out"
    assert str(error) == "127.0.0.1:7001: timed out"


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("redlock_aio").joinpath("py.typed").is_file()
