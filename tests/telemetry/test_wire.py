"""The wire codec: round trips, the packed OpEvents form, and a decoder that fails cleanly."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from loopmon.monitor import Monitor
from loopmon.monitor.events import OUTCOME_CANCELLED
from loopmon.telemetry import wire
from loopmon.telemetry.messages import (Alert, Dropped, Goodbye, Hello, History, OpEvents,
                                        Outstanding, Sample)


def _events() -> list[tuple]:
    m = Monitor()
    for i in range(300):
        m.op_inline(i % 12, 7, 100, 100)
        if i % 7 == 0:
            rec = m.op_start(0, 8, 4096)
            m.buffer_pin(rec, 4096)
            m.op_cancel(rec)
            m.op_end(rec, OUTCOME_CANCELLED, 10, "CancelledError", 4)
        if i % 11 == 0:
            m.op_failed_inline(4, 9, 10, ConnectionResetError())
    m.discarded(5, 3)
    return m.drain()


def _roundtrip(msg):
    frame = wire.encode_frame(msg)
    dec = wire.FrameDecoder(expect_header=False)
    out = dec.feed(frame)
    assert dec.pending == 0
    return out


def test_every_message_round_trips():
    m = Monitor()
    sample = Sample(1.0, 2.0, m.snapshot().as_dict(), 10, 1.5, 3, 4)
    alert = Alert("lost-data", "critical", 1.0, 2.0, "lost 10 bytes", {"ops": [1, 2], "bytes": 10})
    msgs = [Hello(1, 0, 42, ["prog", "é"], "3.11.7", "selector", 0.05, 1.0, 2.0), sample,
            OpEvents(_events()), Outstanding(3.0, [{"op_id": 1, "kind": "recv", "fd": 3,
                                                    "requested": 10, "buffer_size": 0, "age": 0.5,
                                                    "cancel_requested": False, "peer": None}]),
            alert, History([sample, sample], [alert]), Dropped(3, 10), Goodbye("bye"),
            wire.ClientHello("tok", "test"), wire.ErrorFrame("no")]
    for msg in msgs:
        assert _roundtrip(msg) == [msg]


def test_op_events_packed_preserves_order_and_values():
    events = _events()
    payload = wire.encode_payload(OpEvents(events))
    assert payload[0] == 1                      # the packed form was used
    assert wire.decode_payload(wire.FRAME_OP_EVENTS, payload).events == events


def test_op_events_unknown_layout_falls_back_to_generic():
    odd = [(1, 99, 2.0, "future event"), (2, 1, 3.0, 1, 2, 3)]        # unknown code, wrong width
    big = [(1, 3, 2.0, 1 << 70)]                                       # beyond int64
    for events in (odd, big):
        payload = wire.encode_payload(OpEvents(events))
        assert payload[0] == 0
        assert wire.decode_payload(wire.FRAME_OP_EVENTS, payload).events == events


def test_stream_header_and_versions():
    dec = wire.FrameDecoder()
    assert dec.feed(wire.STREAM_HEADER + wire.encode_frame(Goodbye("x"))) == [Goodbye("x")]
    with pytest.raises(wire.ProtocolError, match="major version 9"):
        wire.FrameDecoder().feed(b"LMON\x09\x00")
    with pytest.raises(wire.ProtocolError, match="not a loopmon stream"):
        wire.FrameDecoder().feed(b"GET / HTTP/1.1\r\n")
    # a newer minor version is fine
    assert wire.FrameDecoder().feed(b"LMON\x01\x07") == []


def test_oversize_truncated_and_unknown_frames():
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        wire.FrameDecoder(expect_header=False).feed(struct.pack(">IB", wire.MAX_FRAME + 1, 1))
    with pytest.raises(wire.ProtocolError, match="unknown frame type"):
        wire.FrameDecoder(expect_header=False).feed(struct.pack(">IB", 1, 99))
    frame = wire.encode_frame(Goodbye("bye"))
    dec = wire.FrameDecoder(expect_header=False)
    assert dec.feed(frame[:-2]) == [] and dec.pending == len(frame) - 2
    assert dec.feed(frame[-2:]) == [Goodbye("bye")]
    # a length prefix that lies about the payload inside
    bad = struct.pack(">IB", 6, wire.FRAME_GOODBYE) + b"s\xff\xff\xff\xff"
    with pytest.raises(wire.ProtocolError):
        wire.FrameDecoder(expect_header=False).feed(bad)


def test_field_types_are_checked():
    out = bytearray()
    wire.encode_value({"reason": 5}, out)
    with pytest.raises(wire.ProtocolError, match="Goodbye.reason"):
        wire.decode_payload(wire.FRAME_GOODBYE, bytes(out))
    out = bytearray()
    wire.encode_value({"count": 1}, out)
    with pytest.raises(wire.ProtocolError, match="missing field 'total'"):
        wire.decode_payload(wire.FRAME_DROPPED, bytes(out))
    out = bytearray()
    wire.encode_value({"reason": "x", "from_the_future": [1]}, out)   # unknown fields ignored
    assert wire.decode_payload(wire.FRAME_GOODBYE, bytes(out)) == Goodbye("x")


def test_deep_nesting_refused():
    payload = b"l\x00\x00\x00\x01" * 100 + b"N"
    with pytest.raises(wire.ProtocolError, match="nested"):
        wire.decode_payload(wire.FRAME_GOODBYE, payload)


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(values)
def test_tagged_values_round_trip(value):
    out = bytearray()
    wire.encode_value(value, out)
    r = wire._Reader(memoryview(bytes(out)))
    assert wire.decode_value(r) == value and r.pos == len(out)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_garbage_raises_protocol_error_only(data):
    for expect_header in (True, False):
        dec = wire.FrameDecoder(expect_header=expect_header)
        try:
            dec.feed(data)
        except wire.ProtocolError:
            pass


_VALID = [wire.encode_frame(m) for m in (
    OpEvents(_events()[:40]), Goodbye("bye"), Dropped(1, 2),
    Sample(1.0, 2.0, {"ops_outstanding": 1, "by": {"recv": 1}}, 1, 0.5, 1, 1))]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                          min_size=1, max_size=6))
def test_decoder_mutated_frames_raise_protocol_error_only(frame, mutations):
    data = bytearray(frame)
    for pos, byte in mutations:
        data[pos % len(data)] = byte
    try:
        wire.FrameDecoder(expect_header=False).feed(bytes(data))
    except wire.ProtocolError:
        pass


def test_parse_listen_loopback_only():
    from loopmon.telemetry.agent import parse_listen
    assert parse_listen("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("127.0.0.1", 80)
    for bad in ("0.0.0.0:7000", "192.168.1.5:1", "[::]:7000", "example.com:7000"):
        with pytest.raises(ValueError, match="listen-any"):
            parse_listen(bad)
    assert parse_listen("0.0.0.0:7000", listen_any=True) == ("0.0.0.0", 7000)
    for bad in ("7000", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "[::1]7000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_client_parse_target():
    from loopmon.client import ConnectError, parse_target
    assert parse_target(123) == ("pid", 123)
    assert parse_target("123") == ("pid", 123)
    assert parse_target("unix:/tmp/x.sock") == ("unix", "/tmp/x.sock")
    assert parse_target("/tmp/x.sock") == ("unix", "/tmp/x.sock")
    assert parse_target("127.0.0.1:7000") == ("tcp", ("127.0.0.1", 7000))
    assert parse_target("[::1]:7000") == ("tcp", ("::1", 7000))
    for bad in ("nonsense", "host:", ":80", "host:99999", True, 1.5):
        with pytest.raises(ConnectError):
            parse_target(bad)


def _reference_encoding(value) -> bytes:
    """The tagged encoding item by item, as the general path makes it: what the dict fast
    path of ``encode_value`` (cached keys, inline ints, floats, bools, short strs) must equal."""
    if type(value) is dict:
        return (b"d" + len(value).to_bytes(4, "big")
                + b"".join(_reference_encoding(k) + _reference_encoding(v)
                           for k, v in value.items()))
    if type(value) in (list, tuple):
        return ((b"l" if type(value) is list else b"u") + len(value).to_bytes(4, "big")
                + b"".join(map(_reference_encoding, value)))
    out = bytearray()
    wire.encode_value(value, out)
    return bytes(out)


dict_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=80) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=70) | st.integers(), inner, max_size=6),
    max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=70), dict_values, max_size=8))
def test_dict_fast_path_gives_the_general_encoding(value):
    for _ in range(2):                     # the second time, keys and strs come from the cache
        out = bytearray()
        wire.encode_value(value, out)
        assert bytes(out) == _reference_encoding(value)
