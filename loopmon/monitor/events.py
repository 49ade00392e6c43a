"""The vocabulary of the event stream: op kinds, outcomes and event codes.

Every record the loop thread emits is a plain tuple whose first three fields are
``(seq, code, t)``: a sequence number (gaps mean the ring overflowed and the
consumer lost events), an event code from this module, and a ``time.monotonic()``
reading.  Plain tuples of ints keep the hot path to one allocation per event and
make the wire encoding (``loopmon.wire``) a straight copy.  The layouts below are
the only contract between the recorder (loop thread) and every consumer
(collector, detectors, agent, recordings); change them only together with
``docs/PROTOCOL.md`` and the protocol version.

Event layouts (after ``seq, code, t``):

``EV_OP_INLINE``  ``op_id, kind, fd, requested, outcome, nbytes, error``
    An op that finished inside its submission call (the common case for the
    selector-emulated backend): submitted and ended at the same instant, so one
    event and one clock read.  ``outcome`` is ``OUTCOME_COMPLETED`` or
    ``OUTCOME_FAILED`` (failed at submission); ``error`` is an exception type
    name or ``""``.
``EV_OP_SUBMIT``  ``op_id, kind, fd, requested``
    An op went pending: it is in flight until its ``EV_OP_END``.
``EV_OP_CANCEL``  ``op_id``
    Somebody asked to cancel a pending op.  On a real overlapped backend this is
    only a request: the op stays in flight until its own completion arrives.
``EV_OP_END``     ``op_id, outcome, nbytes, error, flags``
    A pending op ended.  ``flags`` is a bit set of ``FLAG_*`` below.
``EV_BUF_PIN``    ``buf_id, op_id, size``
    The backend allocated or pinned a buffer for an op.
``EV_BUF_RELEASE`` ``buf_id``
    ...and let go of it.
``EV_DISCARD``    ``op_id, nbytes``
    Bytes that came from the OS and that nobody will ever deliver (a completion
    that arrived after its future was cancelled: the bpo-33694 signature).
"""
from __future__ import annotations

# --- op kinds -------------------------------------------------------------------------
KIND_RECV = 0
KIND_RECV_INTO = 1
KIND_RECVFROM = 2
KIND_RECVFROM_INTO = 3
KIND_SEND = 4
KIND_SENDTO = 5
KIND_ACCEPT = 6
KIND_CONNECT = 7
KIND_SENDFILE = 8
KIND_READ_PIPE = 9
KIND_WRITE_PIPE = 10
KIND_WAIT = 11  # waits with no data transfer (e.g. IOCP wait_for_handle)

KIND_NAMES: tuple[str, ...] = (
    "recv", "recv_into", "recvfrom", "recvfrom_into", "send", "sendto",
    "accept", "connect", "sendfile", "read_pipe", "write_pipe", "wait",
)
KIND_BY_NAME: dict[str, int] = {name: i for i, name in enumerate(KIND_NAMES)}

#: kinds whose transferred bytes count as "received from the OS"
RECEIVE_KINDS = frozenset({KIND_RECV, KIND_RECV_INTO, KIND_RECVFROM,
                           KIND_RECVFROM_INTO, KIND_READ_PIPE})
#: kinds whose transferred bytes count as "sent"
SEND_KINDS = frozenset({KIND_SEND, KIND_SENDTO, KIND_SENDFILE, KIND_WRITE_PIPE})

# --- outcomes -------------------------------------------------------------------------
OUTCOME_PENDING = 0
OUTCOME_COMPLETED = 1
OUTCOME_CANCELLED = 2
OUTCOME_FAILED = 3
OUTCOME_NAMES: tuple[str, ...] = ("pending", "completed", "cancelled", "failed")

# --- EV_OP_END flags ------------------------------------------------------------------
FLAG_CANCEL_REQUESTED = 1   # a cancel was requested while the op was in flight
FLAG_LATE_COMPLETION = 2    # the OS completed the op after the cancel request
FLAG_DISCARDED = 4          # its result (bytes) was dropped, never delivered
FLAG_DRAINED_AT_CLOSE = 8   # ended because the backend closed

# --- event codes ----------------------------------------------------------------------
EV_OP_INLINE = 1
EV_OP_SUBMIT = 2
EV_OP_CANCEL = 3
EV_OP_END = 4
EV_BUF_PIN = 5
EV_BUF_RELEASE = 6
EV_DISCARD = 7

EVENT_NAMES: dict[int, str] = {
    EV_OP_INLINE: "op_inline", EV_OP_SUBMIT: "op_submit", EV_OP_CANCEL: "op_cancel",
    EV_OP_END: "op_end", EV_BUF_PIN: "buf_pin", EV_BUF_RELEASE: "buf_release",
    EV_DISCARD: "discard",
}


def kind_name(kind: int) -> str:
    """Name of an op kind, tolerant of kinds a newer peer may send."""
    return KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else f"kind{kind}"


def outcome_name(outcome: int) -> str:
    return OUTCOME_NAMES[outcome] if 0 <= outcome < len(OUTCOME_NAMES) else f"outcome{outcome}"
