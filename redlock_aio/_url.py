"""Node URLs: what a URL names (a password-free name and an identity, to refuse
one server given twice), and the connection parameters the pipelined transport
takes from it (host, port or socket path, database, credentials, TLS).

No I/O, except reading TLS certificate files.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Hashable
    from urllib.parse import SplitResult

    from redis.asyncio import Redis

#: URL schemes redis-py understands for a single node.
SCHEMES = ("redis", "rediss", "unix")
#: The port of a URL that gives none.
DEFAULT_PORT = 6379
#: The largest database number a server can have (``databases`` is an int).
MAX_DB = 2**31 - 1
#: The names of this machine's loopback address, one server for the check that
#: no node is given twice.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
#: One label of a host name: letters, digits, ``-`` inside, and ``_`` (which
#: container service names use), 1-63 characters.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


# URL query parameters: those MuxNode uses, and redis-py's pool and socket
# tunings that have no meaning here (the caller's per-node timeout bounds every
# request, and replies are always bytes). Any other one is refused, so that a
# URL never silently means less than it says.
_SSL_PARAMS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
_USED_PARAMS = frozenset({"db", "username", "password", "client_name"}) | _SSL_PARAMS
#: What CLIENT SETNAME accepts: printable ASCII, no spaces.
_CLIENT_NAME = re.compile(r"[!-~]*")
_IGNORED_PARAMS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "timeout",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "protocol",
    }
)


def describe_url(url: str) -> tuple[str, Hashable]:
    """A password-free name and an identity for a node URL, or a
    :class:`ConfigurationError` that says what is wrong with it."""
    try:
        _check_encodable(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path")
            return f"unix:{parts.path}", ("unix", parts.path, url_db(parts))
        host = parts.hostname
        if not host:
            raise ValueError("no host")
        check_host(unquote(host))
        port = url_port(parts)
        db = url_db(parts)
    except ValueError as exc:
        # The message of urlsplit's errors can echo the URL: rebuild it without.
        raise ConfigurationError(
            f"invalid node URL {_redact(url)!r}: {exc}; expected e.g. "
            "redis://[[user]:password@]host[:port][/db], rediss://... or "
            "unix:///path/to/redis.sock"
        ) from None
    name = f"{host}:{port}" if db == 0 else f"{host}:{port}/{db}"
    return name, ("tcp", host_identity(host), port, db)


def check_host(host: str) -> None:
    """``ValueError`` unless ``host`` is an IP address or a host name (labels
    of letters, digits, ``-`` and ``_``; a non-ASCII name in its IDNA form), so
    that a typo fails here and not as a failing node at the first acquire."""
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        return
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    labels = name.removesuffix(".").split(".")
    if not name or len(name) > 253 or not all(map(_HOST_LABEL.fullmatch, labels)):
        raise ValueError(
            f"host {host!r} is neither an IP address nor a host name (letters, "
            "digits, '-' and '_' between dots)"
        )


def _check_encodable(url: str) -> None:
    """``ValueError`` if ``url`` cannot be UTF-8 encoded: its host, path, user,
    password or client name must go to the server or the OS as bytes."""
    try:
        url.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"character {exc.start} is a lone surrogate, which has no UTF-8 encoding"
        ) from None


def url_port(parts: SplitResult) -> int:
    """The port of a TCP node URL, 6379 if it has none; ``ValueError`` if it is
    not one a server can listen on."""
    port = parts.port  # ValueError if not a number in 0-65535
    if port is None:
        return DEFAULT_PORT
    if port == 0:
        raise ValueError(
            f"port 0 is no server's port: give one in 1-65535, or none for "
            f"{DEFAULT_PORT}"
        )
    return port


def url_db(parts: SplitResult) -> int:
    """The database of a node URL: its path (TCP only) or ``?db=``, 0 if neither;
    ``ValueError`` if one is not a database number, or they disagree."""
    given = parse_qs(parts.query).get("db", [])
    path = parts.path.strip("/")
    if path and parts.scheme.lower() != "unix":
        given.insert(0, path)
    dbs = {_db_number(text) for text in given}
    if len(dbs) > 1:
        raise ValueError(
            f"the db is given more than once, as {' and '.join(map(str, sorted(dbs)))}"
            ": give it once, in the path or as ?db="
        )
    return dbs.pop() if dbs else 0


def _db_number(text: str) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 10:
        db = int(text)
        if db <= MAX_DB:
            return db
    raise ValueError(f"db must be a whole number from 0 to {MAX_DB}, got {text!r}")


def host_identity(host: str) -> str:
    """The host part of a node's identity: lowercased, without IPv6 brackets,
    and one name for each spelling of the loopback address, so that
    ``localhost`` and ``127.0.0.1`` are seen as the same server (no DNS lookup:
    the constructor does no I/O)."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "localhost" if host in _LOOPBACK else host


def _redact(url: str) -> str:
    """The URL as a message may show it: the user info (all up to the last
    ``@``, since a password may hold an unescaped ``/``, ``?`` or ``#``) and the
    value of any ``password=`` item replaced by ``***``, and no fragment."""
    at = url.rfind("@")
    if at >= 0:
        slashes = url.find("//", 0, at)
        start = slashes + 2 if slashes >= 0 else 0
        url = f"{url[:start]}***{url[at:]}"
    items = re.split(r"([?&])", url.split("#", 1)[0])
    return "".join(map(_hide_password, items))


def _hide_password(item: str) -> str:
    """A query item with its value hidden if its key (as parse_qs reads it)
    names a password."""
    key, sep, _ = item.partition("=")
    if sep and "password" in unquote_plus(key).lower():
        return f"{key}=***"
    return item


def describe_client(client: Redis) -> tuple[str, Hashable]:
    """A password-free name and an identity for a redis-py client."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    db = int(kwargs.get("db", 0) or 0)
    path = kwargs.get("path")
    if path:
        return f"unix:{path}", ("unix", str(path), db)
    host = str(kwargs.get("host", "localhost"))
    port = int(kwargs.get("port", 6379))
    name = f"{host}:{port}" if db == 0 else f"{host}:{port}/{db}"
    return name, ("tcp", host_identity(host), port, db)


@dataclass(frozen=True)
class MuxParams:
    """Where and how :class:`~._mux.MuxNode` connects, from a node URL."""

    host: str
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    ssl_context: ssl.SSLContext | None
    name: str
    identity: Hashable


def mux_params(url: str) -> MuxParams:
    """The connection parameters of a :class:`~._mux.MuxNode` for a
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
    ``unix:///path/to/redis.sock[?db=N]`` URL.

    Query parameters: ``db``, ``username``, ``password``, ``client_name``;
    for ``rediss://``: ``ssl_cert_reqs`` (``none``, ``optional``,
    ``required``: the default), ``ssl_check_hostname``, ``ssl_ca_certs``,
    ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``. redis-py's pool and
    socket tunings (``socket_timeout``, ``max_connections``, ...) are
    accepted and ignored.

    :raises ConfigurationError: the URL is invalid or asks for something
        this transport does not do (no I/O has been done, except reading
        TLS certificate files).
    """
    name, identity = describe_url(url)
    parts = urlsplit(url)
    query: dict[str, str] = {}
    for key, values in parse_qs(parts.query).items():
        if key not in _USED_PARAMS and key not in _IGNORED_PARAMS:
            raise ConfigurationError(
                f"node URL for {name}: unsupported parameter {key!r} "
                "(MuxNode; pass a redis-py client for anything it does not do)"
            )
        query[key] = values[0]
    scheme = parts.scheme.lower()
    # describe_url has validated the host, port and db, with the same helpers.
    db = url_db(parts)
    if scheme == "unix":
        path: str | None = unquote(parts.path)
        host, port = "localhost", DEFAULT_PORT
    else:
        path = None
        host = unquote(parts.hostname or "")
        port = url_port(parts)
    username = unquote(parts.username) if parts.username else query.get("username")
    password = unquote(parts.password) if parts.password else query.get("password")
    tls = scheme == "rediss"
    if not tls and any(key in _SSL_PARAMS for key in query):
        raise ConfigurationError(
            f"node URL for {name}: ssl_* parameters need a rediss:// URL"
        )
    client_name = query.get("client_name")
    if client_name is not None and not _CLIENT_NAME.fullmatch(client_name):
        raise ConfigurationError(
            f"node URL for {name}: client_name must be printable ASCII with no "
            f"spaces (the server refuses others), got {client_name!r}"
        )
    return MuxParams(
        host=host,
        port=port,
        path=path,
        db=db,
        username=username or None,
        password=password,
        client_name=client_name,
        ssl_context=_ssl_context(name, query) if tls else None,
        name=name,
        identity=identity,
    )


def _ssl_context(name: str, query: dict[str, str]) -> ssl.SSLContext:
    """The TLS context for a ``rediss://`` URL's ``ssl_*`` parameters, with
    redis-py's meaning and ``ssl.create_default_context()``'s defaults."""
    reqs = query.get("ssl_cert_reqs", "required").lower()
    modes = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }
    if reqs not in modes:
        raise ConfigurationError(
            f"node URL for {name}: ssl_cert_reqs must be none, optional or required"
        )
    check = query.get("ssl_check_hostname")
    check_hostname = reqs != "none" if check is None else _flag(name, check)
    try:
        ctx = ssl.create_default_context(
            cafile=query.get("ssl_ca_certs"), capath=query.get("ssl_ca_path")
        )
        certfile = query.get("ssl_certfile")
        if certfile is not None:
            ctx.load_cert_chain(certfile, query.get("ssl_keyfile"))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(
            f"node URL for {name}: cannot load TLS certificates: {exc}"
        ) from None
    try:
        ctx.check_hostname = check_hostname
        ctx.verify_mode = modes[reqs]
    except ValueError as exc:  # check_hostname with ssl_cert_reqs=none
        raise ConfigurationError(f"node URL for {name}: {exc}") from None
    return ctx


def _flag(name: str, value: str) -> bool:
    flags = {
        "1": True,
        "true": True,
        "yes": True,
        "0": False,
        "false": False,
        "no": False,
    }
    flag = flags.get(value.lower())
    if flag is None:
        raise ConfigurationError(f"node URL for {name}: not a boolean: {value!r}")
    return flag
