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

``OpEvents`` is the one hot message (hundreds of thousands of events a second): it has its
own columnar form, in ``packed_events``; tagged values are in ``values``.  This module is the
framing, the message <-> dict mapping, and the incremental decoders.

Traps
-----
* Every length in the input is untrusted: counts are checked against the bytes left before
  anything is allocated, nesting depth is bounded, frames are bounded (``MAX_FRAME``).
  Anything malformed raises ``ProtocolError`` -- never IndexError, struct.error,
  UnicodeDecodeError or MemoryError -- so a server can drop exactly that one connection.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any, Optional

from .messages import (PROTOCOL_MAJOR, PROTOCOL_MINOR, Alert, Dropped, Goodbye, Hello, History,
                       OpEvents, Outstanding, Sample)
from .packed_events import (FORM_GENERIC, FORM_PACKED, PackedEvents, decode_packed,
                            encode_packed)
from .values import ProtocolError, _Reader, decode_value, encode_value  # noqa: F401

MAGIC = b"LMON"
STREAM_HEADER = MAGIC + bytes((PROTOCOL_MAJOR, PROTOCOL_MINOR))
HEADER_SIZE = len(STREAM_HEADER)
MAX_FRAME = 16 << 20           # bytes after the length prefix; larger frames are refused
OP_EVENTS_PER_FRAME = 50_000   # the agent splits bigger batches (keeps frames << MAX_FRAME)

_FRAME_HEAD = struct.Struct(">IB")


# ----------------------------------------------------------------------------- wire-only frames
@dataclass(frozen=True)
class ClientHello:
    """The client's first frame: its credentials.  (Wire-level; not a telemetry message.)"""

    token: str
    client: str = ""
    op_events: bool = True      # False: the agent sends no OpEvents (saves it the encoding)
    event_budget: int = 0       # op events/s wanted; 0: the agent's budget (never above it)


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
        if type(msg.events) is PackedEvents:     # packed by the C core: sent as it is
            return msg.events.payload
        packed = encode_packed(msg.events)
        if packed is not None:
            return packed
        out = bytearray((FORM_GENERIC,))
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
            if form == FORM_PACKED:
                return OpEvents(decode_packed(r))
            if form != FORM_GENERIC:
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
