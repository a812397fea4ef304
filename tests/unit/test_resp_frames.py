"""RESP framing for the pooling proxy: whole messages out of any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from redlock_aio.testing._resp import Framer, command_words, message_end

CASES = [
    b"+OK\r\n",
    b"-ERR upstream connection lost\r\n",
    b":42\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"$5\r\na\r\nbc\r\n",  # CRLF inside a bulk string
    b"*-1\r\n",
    b"*0\r\n",
    b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    b"*2\r\n*1\r\n:1\r\n$-1\r\n",
    b"%1\r\n+k\r\n*1\r\n_\r\n",  # RESP3 map
    b"|1\r\n+ttl\r\n:3\r\n+v\r\n",  # RESP3 attribute, then its message
    b">2\r\n+message\r\n=7\r\ntxt:abc\r\n",  # RESP3 push, verbatim string
    b"PING\r\n",  # inline command
]


@pytest.mark.parametrize("message", CASES)
def test_each_message_ends_where_it_ends(message: bytes) -> None:
    assert message_end(message + b"+next\r\n") == len(message)
    for cut in range(len(message)):
        assert message_end(message[:cut]) == -1


def test_not_resp_is_an_error() -> None:
    with pytest.raises(ValueError, match="RESP"):
        message_end(b"*1\r\n?what\r\n")
    with pytest.raises(ValueError, match="invalid literal"):
        message_end(b"$x\r\n")


def resp_messages() -> st.SearchStrategy[bytes]:
    scalars = st.one_of(
        st.binary(max_size=20).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
        st.integers().map(lambda i: b":%d\r\n" % i),
        st.sampled_from([b"+OK\r\n", b"-ERR x\r\n", b"$-1\r\n", b"_\r\n"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4).map(
            lambda items: b"*%d\r\n%s" % (len(items), b"".join(items))
        ),
        max_leaves=12,
    )


@given(st.lists(resp_messages(), max_size=8), st.lists(st.integers(1, 40)))
def test_a_framer_yields_the_messages_whatever_the_chunks(
    messages: list[bytes], sizes: list[int]
) -> None:
    stream = b"".join(messages)
    framer, out, pos = Framer(), [], 0
    for size in [*sizes, len(stream)]:
        out += framer.feed(stream[pos : pos + size])
        pos += size
    assert out == messages


def test_command_words() -> None:
    assert command_words(b"*3\r\n$6\r\nclient\r\n$7\r\nsetname\r\n$1\r\nx\r\n") == [
        b"CLIENT",
        b"SETNAME",
    ]
    assert command_words(b"*1\r\n$4\r\nping\r\n") == [b"PING"]
    assert command_words(b"subscribe a b\r\n", 1) == [b"SUBSCRIBE"]
