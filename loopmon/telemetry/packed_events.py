"""Packed OpEvents: a columnar encoding for the one hot message.

``OpEvents`` carries hundreds of thousands of event tuples a second, so it gets its own form:
a byte string of codes keeps the order, and the events are grouped by code (``compress``
with a mask made by ``bytes.translate``: order-preserving, in C).  Per group, the int fields
go out row-major as one little-endian i64 run (``compress`` over the flattened tuples picks
them), the ``t`` column as one f64 run, and the error-name column as u32 indices into a
per-batch string table.  Decoding is one ``struct.unpack`` per run, C-level slices
(``ints[j::k]``) for the columns and ``zip(*columns)`` per group -- no per-field Python work
either way.  (Measured here: ~3-5 M events/s each way; ~51 B/event.)

A batch whose tuples do not fit the known layouts (a newer event code, a wrong width, an
int beyond 64 bits, a non-str error) makes ``encode_packed`` return None and the caller falls
back to the generic tagged encoding -- the packed form is an optimisation, never a limit.

An OpEvents may also carry a payload already packed (``PackedEvents``): the C core's
``drain_window`` selects the event budget's window straight from the ring and writes these
bytes itself (``loopmon/monitor/_drain_window.h``), so no event tuple is built on the
monitored program's side.  The wire encoder sends such a payload as it is; an in-process
reader (the embedded widget, tests) gets the tuples on first use -- ``PackedEvents`` is a
sequence that decodes itself once, lazily.

Traps: columns are explicitly little-endian (``struct`` "<"), whatever the host; the code
bytes and the column lengths come from the peer, so every ``take`` is bounds-checked, and an
unknown code or an out-of-range string index is a ``ProtocolError``.  Layouts change only with the protocol
version and ``docs/PROTOCOL.md``.
"""
from __future__ import annotations

import struct
from itertools import chain, compress
from operator import itemgetter
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ..monitor.events import (EV_BUF_PIN, EV_BUF_RELEASE, EV_DISCARD, EV_OP_CANCEL, EV_OP_END,
                              EV_OP_INLINE, EV_OP_SUBMIT)
from .event_batch import EventBatch
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


class _Layout:
    """Where a code's fields go: tuple width, int positions, the float (t) and string ones."""

    __slots__ = ("width", "ints", "string", "row_mask", "code_mask")

    def __init__(self, code: int, spec: str) -> None:
        positions = [0] + list(range(2, len(spec) + 1))     # spec skips the code (index 1)
        self.width = len(spec) + 1
        self.ints = [pos for pos, tc in zip(positions, spec) if tc == "q"]
        strings = [pos for pos, tc in zip(positions, spec) if tc == "s"]
        self.string = strings[0] if strings else None
        # which fields of one flattened tuple are ints (compress() mask, one byte per field)
        self.row_mask = bytes(1 if i in self.ints else 0 for i in range(self.width))
        # which events of a batch have this code (bytes.translate table over the code bytes)
        self.code_mask = bytes(1 if i == code else 0 for i in range(256))


_LAYOUT_OF: dict[int, _Layout] = {code: _Layout(code, spec) for code, spec in _LAYOUTS.items()}
_code_of = itemgetter(1)
_t_of = itemgetter(2)
_ONLY_EMPTY = {""}


def encode_packed(events: list) -> Optional[bytes]:
    """The packed form, or None if the batch does not fit the known layouts.

    Per code present (ascending): the int fields of its events row-major (i64), then their
    ``t`` (f64), then, if the layout has one, their string indices (u32).  All C-level:
    ``compress`` picks a code's events and their int fields, ``struct`` packs them.
    """
    batch = events if isinstance(events, EventBatch) else None
    if batch is not None:           # the collector's tick: codes and groups already made
        codes = batch.codes
        if codes is None:
            return None
    else:
        try:
            codes = bytes(map(_code_of, events))
        except (ValueError, TypeError, IndexError):
            return None
    present = sorted(set(codes))
    if any(c not in _LAYOUT_OF for c in present):
        return None
    out = bytearray((FORM_PACKED,))
    out += _LEN.pack(len(events))
    out += codes
    strings: dict[str, int] = {"": 0}
    body = bytearray()
    single = len(present) == 1
    try:
        for code in present:
            lay = _LAYOUT_OF[code]
            if single:
                group = events
            elif batch is not None:
                group = batch.group(code)
            else:
                group = list(compress(events, codes.translate(lay.code_mask)))
            n = len(group)
            if set(map(len, group)) != {lay.width}:
                return None
            ints = compress(chain.from_iterable(group), lay.row_mask * n)
            body += struct.pack(f"<{n * len(lay.ints)}q", *ints)
            body += struct.pack(f"<{n}d", *map(_t_of, group))
            if lay.string is not None:
                col = list(map(itemgetter(lay.string), group))
                distinct = set(col)
                if distinct == _ONLY_EMPTY:               # the common case: no error names
                    body += bytes(4 * n)
                    continue
                if set(map(type, distinct)) != {str}:
                    return None
                for text in distinct:
                    strings.setdefault(text, len(strings))
                body += struct.pack(f"<{n}I", *map(strings.__getitem__, col))
    except (OverflowError, TypeError, struct.error):
        return None
    table = bytearray()
    encode_value(list(strings), table)
    out += table
    out += body
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
        lay = _LAYOUT_OF.get(code)
        if lay is None:
            raise ProtocolError(f"unknown event code {code} in packed OpEvents")
        count = codes.count(code)
        k = len(lay.ints)
        ints = struct.unpack(f"<{count * k}q", r.take(count * k * 8))
        cols: list = [None] * lay.width
        for j, pos in enumerate(lay.ints):
            cols[pos] = ints[j::k]                    # C-level slicing: one column each
        cols[1] = (code,) * count
        cols[2] = struct.unpack(f"<{count}d", r.take(count * 8))
        if lay.string is not None:
            idx = struct.unpack(f"<{count}I", r.take(count * 4))
            if count and max(idx) >= len(table):
                raise ProtocolError("OpEvents string index out of range")
            cols[lay.string] = ([""] * count if len(table) == 1
                                else list(map(table.__getitem__, idx)))
        groups[code] = list(zip(*cols))
    if r.pos != r.end:
        raise ProtocolError("trailing bytes after OpEvents")
    if len(present) == 1:          # the common case: one code, already in order
        return groups[present[0]]
    nexts: dict[int, Callable[[], tuple]] = {c: iter(g).__next__ for c, g in groups.items()}
    return [nexts[c]() for c in codes]


class PackedEvents(Sequence):
    """The events of a FORM_PACKED payload (form byte first), decoded on first use.

    ``payload`` goes on the wire as it is; ``len()`` is the count given with it (no decoding);
    indexing, iteration and comparison decode the payload once and read the tuples.  What
    ``OpEvents.events`` holds when the C core packed the window (see the module docstring)."""

    __slots__ = ("payload", "_n", "_events")

    def __init__(self, payload: bytes, n: int) -> None:
        self.payload = payload
        self._n = int(n)
        self._events: Optional[list[tuple]] = None

    def decoded(self) -> list[tuple]:
        """The event tuples (decoded once; do not mutate)."""
        events = self._events
        if events is None:
            r = _Reader(memoryview(self.payload))
            if r.take(1)[0] != FORM_PACKED:
                raise ProtocolError("PackedEvents payload is not in the packed form")
            events = self._events = decode_packed(r)
        return events

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
        return self.decoded()[index]

    def __iter__(self) -> Any:
        return iter(self.decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedEvents):
            other = other.decoded()
        elif not isinstance(other, (list, tuple)):
            return NotImplemented
        return self.decoded() == list(other)

    __hash__ = None     # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedEvents({self._n} events, {len(self.payload)} bytes)"
