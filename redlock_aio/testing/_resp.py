"""Where RESP messages end in a byte stream, for a proxy that must forward whole
commands and count whole replies (:class:`~._proxy.FaultProxy` with
``reconnect_upstream``). Framing only: nothing is decoded but lengths and, for
commands, their first words. RESP2 and RESP3 types; inline commands too.
"""

from __future__ import annotations

#: One line: simple string, error, integer; RESP3 null, double, boolean, big number.
_LINE = frozenset(b"+-:_,#(")
#: A length line, then that many bytes and CRLF: bulk string; RESP3 verbatim
#: string and bulk error.
_BULK = frozenset(b"$=!")
#: A count line, then that many messages (maps: twice as many); RESP3 set, push.
_ELEMENTS = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2}
#: RESP3 attribute: a map, then the message it annotates.
_ATTRIBUTE = ord("|")
_TYPES = _LINE | _BULK | _ELEMENTS.keys() | {_ATTRIBUTE}


def message_end(buf: bytes | bytearray, start: int = 0) -> int:
    """The offset just past the RESP message that starts at *start*, or -1 if
    *buf* does not hold all of it yet.

    :raises ValueError: the bytes are not RESP (a bad type or length).
    """
    if start >= len(buf):
        return -1
    if buf[start] not in _TYPES:  # an inline command: one line
        newline = buf.find(b"\n", start)
        return -1 if newline < 0 else newline + 1
    pos = start
    todo = 1  # messages still to skip, nested ones included
    while todo:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        kind = buf[pos]
        todo -= 1
        if kind in _LINE:
            pos = eol + 2
            continue
        if kind not in _TYPES:
            raise ValueError(f"not a RESP type: {bytes([kind])!r} at offset {pos}")
        count = int(buf[pos + 1 : eol])
        pos = eol + 2
        if kind in _BULK:
            if count >= 0:
                pos += count + 2
                if pos > len(buf):
                    return -1
        elif kind == _ATTRIBUTE:
            todo += 2 * count + 1
        elif count > 0:
            todo += _ELEMENTS[kind] * count
    return pos


class Framer:
    """Splits a byte stream, fed in chunks, into whole RESP messages."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages that *data* completed, in order; the rest is kept.

        :raises ValueError: the stream is not RESP.
        """
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        pos = 0
        while (end := message_end(buffer, pos)) >= 0:
            messages.append(bytes(buffer[pos:end]))
            pos = end
        del buffer[:pos]
        return messages


def command_words(message: bytes, count: int = 2) -> list[bytes]:
    """The first *count* words of a command (a RESP array of bulk strings, or an
    inline command), upper-cased; fewer if it has fewer."""
    if message[:1] != b"*":
        return [w.upper() for w in message.split()[:count]]
    words: list[bytes] = []
    pos = message.find(b"\r\n") + 2
    while len(words) < count and message[pos : pos + 1] == b"$":
        eol = message.find(b"\r\n", pos)
        size = int(message[pos + 1 : eol])
        words.append(message[eol + 2 : eol + 2 + size].upper())
        pos = eol + 2 + size + 2
    return words
