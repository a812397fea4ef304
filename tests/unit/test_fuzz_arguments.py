"""A fuzz of every public argument: ``AsyncRedlock(...)``, ``acquire(...)``,
``Lock.extend(...)`` and ``lock(...)`` either work or raise a
:class:`ConfigurationError` (or a subclass) that says what to fix; never
another exception, and never a password in a message.

No I/O at all: the constructor does none, ``lock(...)`` checks without
entering the block, and acquire runs on in-memory fake nodes and a fake clock
that does not move (so a valid lock always has validity left). Deterministic
(``derandomize``, no example database) and a few seconds long.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from redlock_aio import AsyncRedlock, ConfigurationError, MuxNode
from redlock_aio._url import describe_url

from .fakes import FakeClock, fake_nodes

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: Ports nothing listens on, should anything ever connect.
URLS = [f"redis://127.0.0.1:{p}" for p in (1, 2, 3)]


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """``good`` seven times in eight, else ``bad``: arguments drawn together
    then often all pass, and the checks after the first one are reached."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


def either(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """``good`` or ``bad``, as often (``st.one_of`` weighs each alternative
    of a nested one_of alike, which would drown the good values)."""
    return st.booleans().flatmap(lambda ok: good if ok else bad)


#: Any text, with lone surrogates, control characters and URL delimiters
#: drawn often (a plain ``st.text()`` has no surrogate).
TEXT = st.lists(
    st.one_of(
        st.characters(exclude_categories=()),
        st.sampled_from("\ud800\udfff\x00 %:/?#@[]"),
    ),
    max_size=8,
).map("".join)
#: What no argument should be.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    TEXT,
    st.binary(max_size=4),
    st.just([1.0]),
    st.just(object()),
    st.just(1j),
)
#: Numbers of every kind, with the edges: 0, the largest allowed duration and
#: beyond, ints too large for a float, NaN, infinities, subnormals.
NUMBERS = st.one_of(
    st.floats(),
    st.integers(),
    st.sampled_from(
        [0, 1, 0.002, 10**9, 10**9 + 1, 1e17, 10**309, -(10**309), 10**400, 5e-324]
    ),
)
BAD_NUMBER = either(NUMBERS, JUNK)
#: Reasonable values, so that more than one argument at a time passes its check.
SECONDS = st.floats(0.01, 60)
CLOCKS = st.sampled_from([None, time.monotonic, FakeClock()])

#: Each setting: (good values, bad or edge values).
SETTINGS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "ttl": (SECONDS, BAD_NUMBER),
    "node_timeout": (st.one_of(st.none(), SECONDS), BAD_NUMBER),
    "drift_factor": (st.floats(0, 0.49), BAD_NUMBER),
    "retry_count": (st.one_of(st.none(), st.integers(0, 10)), BAD_NUMBER),
    "retry_delay": (st.floats(0, 1), BAD_NUMBER),
    "retry_delay_max": (st.floats(1, 10), BAD_NUMBER),
    "retry_jitter": (st.floats(0, 1), BAD_NUMBER),
    "key_prefix": (st.one_of(TEXT, st.binary(max_size=8)), JUNK),
    "restart_quarantine": (st.one_of(st.none(), SECONDS), BAD_NUMBER),
    "clock": (CLOCKS, BAD_NUMBER),
}

#: The password the URLs carry: it must never appear in a message or name.
SECRET = "Pw-s3cret"
#: User names: no URL delimiters, so that what follows is parsed as the password.
USER = st.text(st.characters(exclude_characters="/?#@:[]"), max_size=4)
HOSTS = st.sampled_from(
    ["127.0.0.1", "localhost", "LocalHost", "[::1]", "::1", "127.0.0.2", "host"]
)
NUMERIC = st.one_of(st.integers(-2, 70000).map(str), st.sampled_from(["00", "+1"]))
PARAMS = st.sampled_from(
    [
        "db",
        "username",
        "password",
        "client_name",
        "socket_timeout",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "unsupported",
    ]
)
VALUES = either(
    st.one_of(st.integers(0, 20).map(str), st.sampled_from(["none", "true", "x"])),
    st.one_of(NUMERIC, TEXT),
)


@st.composite
def node_urls(draw: st.DrawFn) -> str:
    """A node URL out of fuzzed parts, each mostly well formed."""
    scheme = draw(mostly(st.sampled_from(["redis", "rediss", "unix", "REDIS"]), TEXT))
    auth = draw(st.sampled_from(["", "password", "user"]))
    user = draw(USER)
    userinfo = {"": "", "password": f":{SECRET}@", "user": f"{user}:{SECRET}@"}[auth]
    host = draw(mostly(HOSTS, TEXT))
    port = draw(mostly(st.one_of(st.none(), st.integers(1, 65535)), NUMERIC | TEXT))
    db = draw(mostly(st.one_of(st.none(), st.integers(0, 15)), NUMERIC | TEXT))
    key = mostly(PARAMS, TEXT)
    query = draw(st.lists(st.tuples(key, VALUES), max_size=2))
    if draw(st.booleans()):
        query.append(("password", SECRET))
    url = f"{scheme}://{userinfo}{host}"
    if port is not None:
        url += f":{port}"
    if db is not None:
        url += f"/{db}"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query)
    return url


NODES = mostly(
    st.lists(node_urls(), min_size=1, max_size=3),
    st.one_of(st.lists(st.one_of(node_urls(), TEXT, JUNK), max_size=3), JUNK),
)


def _no_secret(text: str) -> None:
    assert SECRET not in text, text


def _worked() -> None:
    event("worked")


def _refused(exc: ConfigurationError) -> None:
    """Count the outcomes (``--hypothesis-show-statistics``): a fuzz that only
    ever reaches the first check proves little."""
    event(f"refused: {str(exc).split(',')[0][:40]}")


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_setting_works_or_says_what_to_fix(name: str) -> None:
    @FUZZ
    @given(value=either(*SETTINGS[name]))
    def check(value: Any) -> None:
        try:
            rl = AsyncRedlock(URLS, **{name: value})
        except ConfigurationError as exc:
            _refused(exc)
        else:
            _worked()
            float(rl.clock())  # an accepted clock is one that can be called

    check()


@FUZZ
@given(
    kwargs=st.fixed_dictionaries(
        {}, optional={name: mostly(*pair) for name, pair in SETTINGS.items()}
    )
)
def test_settings_together_work_or_say_what_to_fix(kwargs: dict[str, Any]) -> None:
    try:
        AsyncRedlock(URLS, **kwargs)
    except ConfigurationError as exc:
        _refused(exc)
    else:
        _worked()


@FUZZ
@given(nodes=NODES)
def test_node_urls_work_or_say_what_to_fix(nodes: Any) -> None:
    try:
        rl = AsyncRedlock(nodes)
    except ConfigurationError as exc:
        _refused(exc)
        _no_secret(str(exc))
        return
    _worked()
    _no_secret(repr(rl))
    for url, node in zip(nodes, rl.nodes, strict=True):
        _no_secret(repr(node))
        assert (node.name, node.identity) == describe_url(url)


@FUZZ
@given(url=node_urls())
def test_describe_url_and_mux_node_refuse_alike(url: str) -> None:
    """A URL that describe_url accepts is one MuxNode accepts or refuses with a
    ConfigurationError (for what only it checks: parameters, TLS, client name)."""
    try:
        described = describe_url(url)
    except ConfigurationError as exc:
        _no_secret(str(exc))
        with pytest.raises(ConfigurationError):
            MuxNode.from_url(url)
        return
    try:
        node = MuxNode.from_url(url)
    except ConfigurationError as exc:
        _no_secret(str(exc))
        return
    assert (node.name, node.identity) == described


RESOURCES = mostly(
    st.one_of(
        TEXT,
        st.binary(max_size=8),
        st.just(bytearray(b"r")),
        st.just(memoryview(b"r")),
    ),
    st.one_of(st.integers(), st.just(10**5000), JUNK),
)
TTLS = mostly(st.one_of(st.none(), SECONDS), BAD_NUMBER)
TIMEOUTS = mostly(st.one_of(st.none(), st.floats(0, 10)), BAD_NUMBER)
FLAGS = mostly(st.booleans(), st.one_of(st.integers(0, 1), JUNK))
CALLBACKS = mostly(
    st.sampled_from([None, print, lambda lock: None]), st.one_of(NUMBERS, JUNK)
)


@FUZZ
@given(resource=RESOURCES, ttl=TTLS, blocking=FLAGS, timeout=TIMEOUTS, extend=TTLS)
async def test_acquire_and_extend_work_or_say_what_to_fix(
    resource: Any, ttl: Any, blocking: Any, timeout: Any, extend: Any
) -> None:
    clock = FakeClock()
    nodes: Any = fake_nodes(3, clock)
    rl = AsyncRedlock(nodes, clock=clock, retry_count=0, restart_quarantine=0)
    async with rl:
        try:
            lock = await rl.acquire(
                resource, ttl=ttl, blocking=blocking, timeout=timeout
            )
        except ConfigurationError as exc:
            _refused(exc)
            return
        _worked()
        try:
            await lock.extend(extend)
        except ConfigurationError as exc:
            event(f"extend refused: {str(exc).split(',')[0][:40]}")
        else:
            event("extended")
        await lock.release()


@FUZZ
@given(
    resource=RESOURCES,
    ttl=TTLS,
    blocking=FLAGS,
    timeout=TIMEOUTS,
    auto_extend=FLAGS,
    cancel_on_lost=FLAGS,
    on_lost=CALLBACKS,
)
async def test_lock_arguments_work_or_say_what_to_fix(**kwargs: Any) -> None:
    """In a loop, as ``async with redlock.lock(...)`` always is; the block is
    not entered, so no I/O is done."""
    resource = kwargs.pop("resource")
    async with AsyncRedlock(URLS) as rl:
        try:
            rl.lock(resource, **kwargs)
        except ConfigurationError as exc:
            _refused(exc)
        else:
            _worked()
