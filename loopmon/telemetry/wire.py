"""The wire codec: versioned, length-prefixed binary frames.  No pickle, no eval.

Layout
------
A stream (a socket connection, or a recording file after its own header) starts with a
6-byte *stream header*: the magic ``b"LMON"``, then the protocol major and minor version
as two unsigned bytes.  Each side sends one.  Then frames follow, back to back::

    u32 length (big endian, of what follows: the type byte and the payload)
    u8  frame type (FRAME_* below)
    payload

Payloads are one *tagged value* (see ``encode_value``): a small self-describing binary
encoding of None, bool, int, float, str, bytes, list, tuple and dict.  A message travels as
a dict of its dataclass fields by name; the decoder keeps the names it knows, checks their
types, fills defaults for missing optional fields and ignores unknown names -- so a newer
peer may add fields in a minor version (see docs/PROTOCOL.md).

``OpEvents`` is the one hot message (hundreds of thousands of events a second), so it has
its own columnar encoding: the events are grouped by event code (a stable sort, in C), each
group becomes one packed ``array`` per column (``q`` for ints, ``d`` for floats, an index
into a per-batch string table for the error-name column), and a byte string of codes keeps
the original order.  Decoding is ``array.frombytes`` per column and ``zip(*columns)`` per
group -- C loops, no per-field Python work.  A batch whose tuples do not fit the known layouts
(a newer event code, a wrong width, an int beyond 64 bits) falls back to the generic encoding,
so the packed form is an optimisation and never a limit.

Traps
-----
* Every length in the input is untrusted: counts are checked against the bytes left before
  anything is allocated, nesting depth is bounded, frames are bounded (``MAX_FRAME``).
  Anything malformed raises ``ProtocolError`` -- never IndexError, struct.error,
  UnicodeDecodeError or MemoryError -- so a server can drop exactly that one connection.
* ``array`` uses native byte order; the wire is little endian for packed columns, and we
  byteswap on a big-endian host.
"""
from __future__ import annotations

import dataclasses
import struct
import sys
from array import array
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Optional

from ..monitor.events import (EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END,
                              EV_OP_INLINE, EV_OP_SUBMIT)
from .messages import (PROTOCOL_MAJOR, PROTOCOL_MINOR, Alert, Dropped, Goodbye, Hello, History,
                       Message, OpEvents, Outstanding, Sample)

MAGIC = b"LMON"
STREAM_HEADER = MAGIC + bytes((PROTOCOL_MAJOR, PROTOCOL_MINOR))
HEADER_SIZE = len(STREAM_HEADER)
MAX_FRAME = 16 << 20           # bytes after the length prefix; larger frames are refused
MAX_DEPTH = 32                 # nesting of lists / dicts in a tagged value
OP_EVENTS_PER_FRAME = 50_000   # the agent splits bigger batches (keeps frames << MAX_FRAME)

_LEN = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">IB")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid loopmon stream.  Drop the connection."""


# ----------------------------------------------------------------------------- wire-only frames
@dataclass(frozen=True)
class ClientHello:
    """The client's first frame: its credentials.  (Wire-level; not a telemetry message.)"""

    token: str
    client: str = ""


@dataclass(frozen=True)
class ErrorFrame:
    """The server refuses the connection (bad token, bad version ...); it closes right after."""

    message: str


FRAME_HELLO = 1
FRAME_SAMPLE = 2
FRAME_OP_EVENTS = 3
FRAME_OUTSTANDING = 4
FRAME_ALERT = 5
FRAME_HISTORY = 6
FRAME_DROPPED = 7
FRAME_GOODBYE = 8
FRAME_CLIENT_HELLO = 16
FRAME_ERROR = 17

FRAME_TYPES: dict[type, int] = {
    Hello: FRAME_HELLO, Sample: FRAME_SAMPLE, OpEvents: FRAME_OP_EVENTS,
    Outstanding: FRAME_OUTSTANDING, Alert: FRAME_ALERT, History: FRAME_HISTORY,
    Dropped: FRAME_DROPPED, Goodbye: FRAME_GOODBYE, ClientHello: FRAME_CLIENT_HELLO,
    ErrorFrame: FRAME_ERROR,
}
CLASS_BY_FRAME: dict[int, type] = {v: k for k, v in FRAME_TYPES.items()}

# ----------------------------------------------------------------------------- tagged values
_T_NONE, _T_TRUE, _T_FALSE, _T_INT, _T_BIGINT, _T_FLOAT = b"N", b"T", b"F", b"i", b"I", b"f"
_T_STR, _T_BYTES, _T_LIST, _T_TUPLE, _T_DICT = b"s", b"b", b"l", b"u", b"d"
_Q = struct.Struct(">q")
_D = struct.Struct(">d")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


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
            encode_value(k, out)
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


# ----------------------------------------------------------------------------- OpEvents, packed
# Column types per event code, after (seq, code, t) which every event has: "q" int, "d" float,
# "s" string (index into the batch's string table).
_LAYOUTS: dict[int, str] = {
    EV_OP_INLINE: "qdqqqqqqs",     # seq t | op_id kind fd requested outcome nbytes error
    EV_OP_SUBMIT: "qdqqqq",        # seq t | op_id kind fd requested
    EV_OP_CANCEL: "qdq",           # seq t | op_id
    EV_OP_END: "qdqqqsq",          # seq t | op_id outcome nbytes error flags
    EV_BUF_PIN: "qdqqq",           # seq t | buf_id op_id size
    EV_BUF_RELEASE: "qdq",         # seq t | buf_id
    EV_DISCARD: "qdqq",            # seq t | op_id nbytes
}
_PACKED, _GENERIC = 1, 0
_BIG_ENDIAN_HOST = sys.byteorder == "big"
_code_of = itemgetter(1)
_ONLY_EMPTY = {""}


def _column_bytes(typecode: str, column: tuple) -> bytes:
    a = array(typecode, column)
    if _BIG_ENDIAN_HOST:
        a.byteswap()
    return a.tobytes()


def _encode_op_events_packed(events: list) -> Optional[bytes]:
    """The columnar form, or None if the batch does not fit the known layouts."""
    try:
        codes = bytes(map(_code_of, events))
    except (ValueError, TypeError, IndexError):
        return None
    present = sorted(set(codes))
    if any(c not in _LAYOUTS for c in present):
        return None
    ordered = sorted(events, key=_code_of) if len(present) > 1 else events
    out = bytearray((_PACKED,))
    out += _LEN.pack(len(events))
    out += codes
    strings: dict[str, int] = {"": 0}
    columns_out = bytearray()
    start = 0
    for code in present:
        n = codes.count(code)
        group = ordered[start:start + n]
        start += n
        layout = _LAYOUTS[code]
        width = len(layout) + 1                       # + the code column, not sent
        if set(map(len, group)) != {width}:
            return None
        cols = list(zip(*group))
        del cols[1]                                   # the code column: implied
        for typecode, col in zip(layout, cols):
            try:
                if typecode == "s":
                    distinct = set(col)
                    if distinct == _ONLY_EMPTY:          # the common case: no error names
                        columns_out += bytes(4 * n)
                        continue
                    if set(map(type, distinct)) != {str}:
                        return None
                    for text in distinct:
                        strings.setdefault(text, len(strings))
                    columns_out += _column_bytes("I", list(map(strings.__getitem__, col)))
                else:
                    columns_out += _column_bytes(typecode, col)
            except (OverflowError, TypeError):
                return None
    table = bytearray()
    encode_value(list(strings), table)
    out += table
    out += columns_out
    return bytes(out)


def _decode_op_events_packed(r: _Reader) -> list[tuple]:
    n = r.count(1)
    codes = bytes(r.take(n))
    table = decode_value(r)
    if not isinstance(table, list) or not all(isinstance(s, str) for s in table):
        raise ProtocolError("bad OpEvents string table")
    present = sorted(set(codes))
    groups: dict[int, Callable[[], tuple]] = {}
    for code in present:
        layout = _LAYOUTS.get(code)
        if layout is None:
            raise ProtocolError(f"unknown event code {code} in packed OpEvents")
        count = codes.count(code)
        cols: list = []
        for typecode in layout:
            tc = "I" if typecode == "s" else typecode
            a = array(tc)
            a.frombytes(r.take(count * a.itemsize))
            if _BIG_ENDIAN_HOST:
                a.byteswap()
            if typecode == "s":
                if count and max(a) >= len(table):
                    raise ProtocolError("OpEvents string index out of range")
                a = [""] * count if len(table) == 1 else list(map(table.__getitem__, a))
            cols.append(a)
        cols.insert(1, (code,) * count)
        groups[code] = iter(list(zip(*cols))).__next__
    if r.pos != r.end:
        raise ProtocolError("trailing bytes after OpEvents")
    if len(present) == 1:          # the common case: one code, already in order
        return list(_iter_of(groups[present[0]]))
    return [groups[c]() for c in codes]


def _iter_of(next_fn: Callable[[], tuple]) -> Any:
    return next_fn.__self__


# ----------------------------------------------------------------------------- messages
_FIELD_CHECKS: dict[str, tuple] = {
    "int": (int,), "float": (float, int), "str": (str,), "bool": (bool, int),
    "list": (list, tuple), "dict": (dict,), "Any": (object,),
}


def _field_specs(cls: type) -> list[tuple[str, tuple, bool]]:
    specs = []
    for f in dataclasses.fields(cls):
        ann = str(f.type).split("[", 1)[0].strip()
        required = (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        specs.append((f.name, _FIELD_CHECKS.get(ann, (object,)), required))
    return specs


_SPECS = {cls: _field_specs(cls) for cls in FRAME_TYPES}


def _as_dict(msg: Any) -> dict:
    if isinstance(msg, History):
        return {"samples": [_as_dict(s) for s in msg.samples],
                "alerts": [_as_dict(a) for a in msg.alerts]}
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


def _from_dict(cls: type, d: Any) -> Any:
    if not isinstance(d, dict):
        raise ProtocolError(f"{cls.__name__} payload is not a dict")
    kwargs = {}
    for name, types, required in _SPECS[cls]:
        if name in d:
            v = d[name]
            if not isinstance(v, types):
                raise ProtocolError(f"{cls.__name__}.{name}: expected {types[0].__name__}, "
                                    f"got {type(v).__name__}")
            if types[0] is float and type(v) is not float:
                v = float(v)
            kwargs[name] = v
        elif required:
            raise ProtocolError(f"{cls.__name__}: missing field {name!r}")
    if cls is History:
        kwargs["samples"] = [_from_dict(Sample, s) for s in kwargs.get("samples", [])]
        kwargs["alerts"] = [_from_dict(Alert, a) for a in kwargs.get("alerts", [])]
    return cls(**kwargs)


def encode_payload(msg: Any) -> bytes:
    if type(msg) is OpEvents:
        packed = _encode_op_events_packed(msg.events)
        if packed is not None:
            return packed
        out = bytearray((_GENERIC,))
        encode_value([tuple(e) for e in msg.events], out)
        return bytes(out)
    out = bytearray()
    encode_value(_as_dict(msg), out)
    return bytes(out)


def encode_frame(msg: Any) -> bytes:
    """One frame: length, type, payload.  Raises ValueError for a frame over MAX_FRAME."""
    ftype = FRAME_TYPES[type(msg)]
    payload = encode_payload(msg)
    if len(payload) + 1 > MAX_FRAME:
        raise ValueError(f"{type(msg).__name__} frame of {len(payload)} bytes exceeds MAX_FRAME")
    return _FRAME_HEAD.pack(len(payload) + 1, ftype) + payload


def encode_op_events(events: list) -> list[bytes]:
    """Frames for a batch of any size (split every OP_EVENTS_PER_FRAME events)."""
    return [encode_frame(OpEvents(events[i:i + OP_EVENTS_PER_FRAME]))
            for i in range(0, len(events), OP_EVENTS_PER_FRAME)]


def decode_payload(ftype: int, payload: bytes | memoryview) -> Any:
    """Decode one frame body.  Raises ProtocolError for anything malformed."""
    cls = CLASS_BY_FRAME.get(ftype)
    if cls is None:
        raise ProtocolError(f"unknown frame type {ftype}")
    r = _Reader(memoryview(payload))
    try:
        if cls is OpEvents:
            form = r.take(1)[0]
            if form == _PACKED:
                return OpEvents(_decode_op_events_packed(r))
            if form != _GENERIC:
                raise ProtocolError(f"unknown OpEvents form {form}")
            events = decode_value(r)
            if not isinstance(events, list) or not all(isinstance(e, tuple) for e in events):
                raise ProtocolError("generic OpEvents is not a list of tuples")
            value = OpEvents(events)
        else:
            value = _from_dict(cls, decode_value(r))
        if r.pos != r.end:
            raise ProtocolError(f"{r.end - r.pos} trailing bytes in {cls.__name__} frame")
        return value
    except ProtocolError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, struct.error) as exc:
        raise ProtocolError(f"malformed {cls.__name__} frame: {type(exc).__name__}: {exc}") from None


def check_stream_header(header: bytes) -> tuple[int, int]:
    """Validate a peer's 6-byte stream header; returns its (major, minor)."""
    if len(header) < HEADER_SIZE:
        raise ProtocolError("truncated stream header")
    if header[:4] != MAGIC:
        raise ProtocolError(f"not a loopmon stream (magic {bytes(header[:4])!r})")
    major, minor = header[4], header[5]
    if major != PROTOCOL_MAJOR:
        raise ProtocolError(f"unsupported protocol major version {major} "
                            f"(this side speaks {PROTOCOL_MAJOR}.x)")
    return major, minor


class FrameDecoder:
    """Incremental decoder for a byte stream: feed bytes, get messages.

    ``expect_header`` makes it check the 6-byte stream header first.
    """

    def __init__(self, *, expect_header: bool = True, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._need_header = expect_header
        self.max_frame = max_frame
        self.peer_version: Optional[tuple[int, int]] = None

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        buf = self._buf
        pos = 0
        if self._need_header:
            if len(buf) < HEADER_SIZE:
                if bytes(buf[:4]) != MAGIC[:len(buf[:4])]:
                    raise ProtocolError(f"not a loopmon stream (magic {bytes(buf[:4])!r})")
                return out
            self.peer_version = check_stream_header(bytes(buf[:HEADER_SIZE]))
            self._need_header = False
            pos = HEADER_SIZE
        while len(buf) - pos >= 5:
            length, ftype = _FRAME_HEAD.unpack_from(buf, pos)
            if length > self.max_frame:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
            if length < 1:
                raise ProtocolError("zero-length frame")
            if len(buf) - pos - 4 < length:
                break
            body = bytes(buf[pos + 5:pos + 4 + length])
            pos += 4 + length
            out.append(decode_payload(ftype, body))
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (non-zero at end of stream means a truncated tail)."""
        return len(self._buf)


async def read_frame(reader: Any, *, max_frame: int = MAX_FRAME) -> Optional[Any]:
    """Read one frame from an asyncio StreamReader; None at a clean end of stream.

    A stream that ends in the middle of a frame raises ProtocolError.
    """
    import asyncio
    try:
        head = await reader.readexactly(5)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("stream ended inside a frame header") from None
    length, ftype = _FRAME_HEAD.unpack(head)
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame}")
    if length < 1:
        raise ProtocolError("zero-length frame")
    try:
        body = await reader.readexactly(length - 1)
    except asyncio.IncompleteReadError:
        raise ProtocolError("stream ended inside a frame") from None
    return decode_payload(ftype, body)


async def read_stream_header(reader: Any) -> tuple[int, int]:
    import asyncio
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ProtocolError("connection closed before the stream header") from None
        raise ProtocolError(f"truncated stream header {exc.partial!r}") from None
    return check_stream_header(header)
