"""Tagged values: the small self-describing binary encoding inside every loopmon frame.

A value is a 1-byte tag and a body: ``N`` None, ``T``/``F`` bools, ``i`` int64, ``I`` bigger
ints (length-prefixed two's complement), ``f`` float64, ``s`` UTF-8 str, ``b`` bytes, ``l``
list, ``u`` tuple, ``d`` dict -- lengths and counts as big-endian u32.  It is what JSON would
be if it kept bytes, tuples and exact floats, and it is parsed without pickle or eval.

Traps: the decoder treats every count as hostile.  ``_Reader.count`` refuses a count that
could not fit in the bytes left (each item needs at least one byte) *before* allocating;
nesting is bounded by ``MAX_DEPTH`` (no recursion bombs); bad UTF-8 and unhashable dict keys
become ``ProtocolError`` like everything else.
"""
from __future__ import annotations

import struct
from typing import Any

MAX_DEPTH = 32                 # nesting of lists / dicts in a tagged value
_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid loopmon stream.  Drop the connection."""


_T_NONE, _T_TRUE, _T_FALSE, _T_INT, _T_BIGINT, _T_FLOAT = b"N", b"T", b"F", b"i", b"I", b"f"
_T_STR, _T_BYTES, _T_LIST, _T_TUPLE, _T_DICT = b"s", b"b", b"l", b"u", b"d"
_Q = struct.Struct(">q")
_D = struct.Struct(">d")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_TQ = struct.Struct(">cq")       # tag + int64
_TD = struct.Struct(">cd")       # tag + float64
_KEYS: dict[str, bytes] = {}     # dict key (or short str value) -> its encoding; bounded
_KEYS_MAX = 1024


def _cached_str(text: str) -> bytes:
    """The encoding of ``text`` (a str), kept for next time while the cache has room."""
    enc = _KEYS.get(text)
    if enc is None:
        raw = text.encode("utf-8", "surrogatepass")
        enc = _T_STR + _LEN.pack(len(raw)) + raw
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[text] = enc
    return enc


def encode_value(value: Any, out: bytearray) -> None:
    """Append the tagged encoding of ``value`` to ``out``.  Unknown types raise TypeError."""
    t = type(value)
    if value is None:
        out += _T_NONE
    elif t is bool:
        out += _T_TRUE if value else _T_FALSE
    elif t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            out += _T_INT
            out += _Q.pack(value)
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
            out += _T_BIGINT
            out += _LEN.pack(len(raw))
            out += raw
    elif t is float:
        out += _T_FLOAT
        out += _D.pack(value)
    elif t is str:
        raw = value.encode("utf-8", "surrogatepass")
        out += _T_STR
        out += _LEN.pack(len(raw))
        out += raw
    elif t is bytes or t is bytearray or t is memoryview:
        raw = bytes(value)
        out += _T_BYTES
        out += _LEN.pack(len(raw))
        out += raw
    elif t is list or t is tuple:
        out += _T_LIST if t is list else _T_TUPLE
        out += _LEN.pack(len(value))
        for item in value:
            encode_value(item, out)
    elif t is dict:
        out += _T_DICT
        out += _LEN.pack(len(value))
        for k, v in value.items():
            # the common shapes inline (a Sample's counters, an Outstanding op: str keys --
            # the same few every tick, their encodings cached -- and int / float values);
            # the same bytes as the general case, a third of the time
            if type(k) is str:
                out += _cached_str(k)
            else:
                encode_value(k, out)
            tv = type(v)
            if tv is int and _INT64_MIN <= v <= _INT64_MAX:
                out += _TQ.pack(_T_INT, v)
            elif tv is float:
                out += _TD.pack(_T_FLOAT, v)
            elif tv is bool:
                out += _T_TRUE if v else _T_FALSE
            elif tv is str and len(v) <= 64:        # kind names, backends, peers: cached too
                out += _cached_str(v)
            else:
                encode_value(v, out)
    elif isinstance(value, (int, float, str)):   # subclasses such as IntEnum: send the plain value
        encode_value(_plain(value), out)
    else:
        raise TypeError(f"cannot encode {t.__name__} on the loopmon wire")


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


class _Reader:
    """A bounds-checked cursor over one payload."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise ProtocolError(f"truncated payload: need {n} bytes at offset {self.pos}, "
                                f"have {self.end - self.pos}")
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def u32(self) -> int:
        return _LEN.unpack(self.take(4))[0]

    def count(self, min_item_size: int) -> int:
        n = self.u32()
        if n * min_item_size > self.end - self.pos:
            raise ProtocolError(f"count {n} exceeds the {self.end - self.pos} bytes left")
        return n


def decode_value(r: _Reader, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    tag = bytes(r.take(1))
    if tag == _T_INT:
        return _Q.unpack(r.take(8))[0]
    if tag == _T_FLOAT:
        return _D.unpack(r.take(8))[0]
    if tag == _T_STR:
        raw = r.take(r.count(1))
        try:
            return str(raw, "utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"bad utf-8 in string: {exc.reason}") from None
    if tag == _T_NONE:
        return None
    if tag == _T_TRUE:
        return True
    if tag == _T_FALSE:
        return False
    if tag == _T_LIST or tag == _T_TUPLE:
        n = r.count(1)
        items = [decode_value(r, depth + 1) for _ in range(n)]
        return items if tag == _T_LIST else tuple(items)
    if tag == _T_DICT:
        n = r.count(2)
        d = {}
        for _ in range(n):
            k = decode_value(r, depth + 1)
            try:
                d[k] = decode_value(r, depth + 1)
            except TypeError:
                raise ProtocolError("unhashable dict key") from None
        return d
    if tag == _T_BYTES:
        return bytes(r.take(r.count(1)))
    if tag == _T_BIGINT:
        return int.from_bytes(r.take(r.count(1)), "big", signed=True)
    raise ProtocolError(f"unknown value tag {tag!r} at offset {r.pos - 1}")


