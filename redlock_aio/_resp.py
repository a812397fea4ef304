"""RESP, the Redis wire format: the package's one command encoder, and the
exception each error reply stands for.

The transports (:mod:`._mux`, its pub/sub connection) and the test kit's
blocking client all encode through :func:`encode_command`; the hot path's
commands are encoded once per request by :mod:`._commands`, from pre-encoded
heads of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from redis import exceptions as _exc

if TYPE_CHECKING:
    from collections.abc import Sequence

Arg: TypeAlias = bytes | bytearray | memoryview | str | int | float

__all__ = ["Arg", "encode_command", "reply_error"]


def encode_command(args: Sequence[Arg]) -> bytes:
    """``args`` as one RESP array of bulk strings (str as UTF-8, numbers in
    decimal)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, bool):
            raise TypeError("a bool is not a Redis command argument")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(
                f"a Redis command argument must be bytes, str, int or float, "
                f"got {type(arg).__name__}"
            )
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: Error codes (the reply's first word) and the redis-py exception each one
#: raises, so that every transport fails alike (``NoScriptError`` is what makes a
#: script load again). ``ERR`` replies with these exact messages are more specific.
_CODES: dict[str, type[Exception]] = {
    "OOM": _exc.OutOfMemoryError,
    "WRONGPASS": _exc.AuthenticationError,
    "EXECABORT": _exc.ExecAbortError,
    "LOADING": _exc.BusyLoadingError,
    "NOSCRIPT": _exc.NoScriptError,
    "READONLY": _exc.ReadOnlyError,
    "NOAUTH": _exc.AuthenticationError,
    "NOPERM": _exc.NoPermissionError,
    "TRYAGAIN": _exc.TryAgainError,
    "MOVED": _exc.MovedError,
    "ASK": _exc.AskError,
    "CLUSTERDOWN": _exc.ClusterDownError,
    "CROSSSLOT": _exc.ClusterCrossSlotError,
    "MASTERDOWN": _exc.MasterDownError,
}
_ERR_MESSAGES: dict[str, type[Exception]] = {
    "max number of clients reached": _exc.ConnectionError,
    "invalid password": _exc.AuthenticationError,
    "Client sent AUTH, but no password is set": _exc.AuthenticationError,
}


def reply_error(message: str) -> Exception:
    """The exception for an error reply (``"NOSCRIPT No matching script..."``):
    a redis-py class by its code, else ``ResponseError``; known codes are cut
    from the message, as redis-py does."""
    code, _, rest = message.partition(" ")
    cls = _CODES.get(code)
    if cls is not None:
        try:
            return cls(rest)
        except (TypeError, ValueError):  # MovedError/AskError parse "slot host:port"
            return _exc.ResponseError(message)
    if code == "ERR":
        special = _ERR_MESSAGES.get(rest)
        if special is not None:
            return special(rest)
        return _exc.ResponseError(rest)
    return _exc.ResponseError(message)
