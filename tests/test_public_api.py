"""The public surface: everything in __all__ exists, presents itself as
redlock_aio.X, and the errors form one tree."""

from __future__ import annotations

import redlock_aio
from redlock_aio import (
    ConfigurationError,
    ExtendError,
    LockLost,
    LockNotAcquired,
    NodeError,
    RedlockClosed,
    RedlockError,
    ReleaseError,
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


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("redlock_aio").joinpath("py.typed").is_file()
