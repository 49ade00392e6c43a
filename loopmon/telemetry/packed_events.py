"""Packed OpEvents: a columnar encoding for the one hot message.

``OpEvents`` carries hundreds of thousands of event tuples a second, so it gets its own form:
the events are grouped by event code (a stable sort, in C), each group becomes one packed
little-endian run per column (``q`` for ints, ``d`` for floats, a ``u32`` index into a
per-batch string table for the error-name column), and a byte string of codes keeps the
original order.  Decoding is one ``struct.unpack`` per column and ``zip(*columns)`` per group --
C loops, no per-field Python work.  (Measured here: 1-3 M events/s each way; ~51 B/event.)

A batch whose tuples do not fit the known layouts (a newer event code, a wrong width, an
int beyond 64 bits, a non-str error) makes ``encode_packed`` return None and the caller falls
back to the generic tagged encoding -- the packed form is an optimisation, never a limit.

Traps: columns are explicitly little-endian (``struct`` "<"), whatever the host; the code
bytes and the column lengths come from the peer, so every ``take`` is bounds-checked and an unknown code or
an out-of-range string index is a ``ProtocolError``.  Layouts change only with the protocol
version and ``docs/PROTOCOL.md``.
"""
from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any, Callable, Optional

from ..monitor.events import (EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END,
                              EV_OP_INLINE, EV_OP_SUBMIT)
from .values import _LEN, ProtocolError, _Reader, decode_value, encode_value

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
FORM_GENERIC, FORM_PACKED = 0, 1     # first payload byte of an OpEvents frame
_ITEM_SIZE = {"q": 8, "d": 8, "I": 4}
_code_of = itemgetter(1)
_ONLY_EMPTY = {""}


def _column_bytes(typecode: str, column: Any) -> bytes:
    # struct with an explicit count is ~2x faster than array() here, and explicitly
    # little-endian on every host
    return struct.pack(f"<{len(column)}{typecode}", *column)


def encode_packed(events: list) -> Optional[bytes]:
    """The columnar form, or None if the batch does not fit the known layouts."""
    try:
        codes = bytes(map(_code_of, events))
    except (ValueError, TypeError, IndexError):
        return None
    present = sorted(set(codes))
    if any(c not in _LAYOUTS for c in present):
        return None
    ordered = sorted(events, key=_code_of) if len(present) > 1 else events
    out = bytearray((FORM_PACKED,))
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
            except (OverflowError, TypeError, struct.error):
                return None
    table = bytearray()
    encode_value(list(strings), table)
    out += table
    out += columns_out
    return bytes(out)


def decode_packed(r: _Reader) -> list[tuple]:
    n = r.count(1)
    codes = bytes(r.take(n))
    table = decode_value(r)
    if not isinstance(table, list) or not all(isinstance(s, str) for s in table):
        raise ProtocolError("bad OpEvents string table")
    present = sorted(set(codes))
    groups: dict[int, list[tuple]] = {}
    for code in present:
        layout = _LAYOUTS.get(code)
        if layout is None:
            raise ProtocolError(f"unknown event code {code} in packed OpEvents")
        count = codes.count(code)
        cols: list = []
        for typecode in layout:
            tc = "I" if typecode == "s" else typecode
            a = struct.unpack(f"<{count}{tc}", r.take(count * _ITEM_SIZE[tc]))
            if typecode == "s":
                if count and max(a) >= len(table):
                    raise ProtocolError("OpEvents string index out of range")
                a = [""] * count if len(table) == 1 else list(map(table.__getitem__, a))
            cols.append(a)
        cols.insert(1, (code,) * count)
        groups[code] = list(zip(*cols))
    if r.pos != r.end:
        raise ProtocolError("trailing bytes after OpEvents")
    if len(present) == 1:          # the common case: one code, already in order
        return groups[present[0]]
    nexts: dict[int, Callable[[], tuple]] = {c: iter(g).__next__ for c, g in groups.items()}
    return [nexts[c]() for c in codes]
