"""Recordings: the live stream written to a file, to replay later (``loopmon run --record``).

Format: the 8-byte file magic ``b"LMONREC\\n"``, the 6-byte stream header of ``wire``
(``LMON`` + major + minor), then exactly the frames a client would have received: ``Hello``,
``History``, ``Outstanding``, then ``Sample`` / ``OpEvents`` / ``Alert`` ... and a final
``Goodbye``.  So one decoder reads both, and a recording is a stream you can't interrupt.

Size policy: a recording stops at ``max_bytes`` (default 256 MiB, or
``$LOOPMON_RECORD_MAX_MB``).  The last frame written is then a ``Goodbye`` whose reason says
the limit was reached, and the agent logs a warning; the program itself carries on.  We stop
rather than rotate because a recording's value is its beginning *and* the continuity of its
cumulative counters -- a rotated-away head would lose the History backlog.

A program killed mid-write leaves a partial last frame: ``read_recording`` replays every
complete frame and stops at the cut.  A file that is not a recording at all raises
``RecordingError`` at once, with the path in the message.
"""
from __future__ import annotations

import logging
import os
from typing import Any, BinaryIO, Iterator, Optional

from . import wire
from .messages import Goodbye

log = logging.getLogger("loopmon.recording")

FILE_MAGIC = b"LMONREC\n"
DEFAULT_MAX_BYTES = 256 << 20


class RecordingError(wire.ProtocolError):
    """Not a (readable) loopmon recording."""


def _default_max() -> int:
    try:
        return int(float(os.environ["LOOPMON_RECORD_MAX_MB"]) * (1 << 20))
    except (KeyError, ValueError):
        return DEFAULT_MAX_BYTES


class RecordingWriter:
    """Appends frames to a recording file until its size limit."""

    GOODBYE_RESERVE = 256       # room always kept for the final Goodbye frame

    def __init__(self, path: str, *, max_bytes: Optional[int] = None) -> None:
        self.path = path
        self.max_bytes = max(4096, max_bytes if max_bytes is not None else _default_max())
        self._f: Optional[BinaryIO] = open(path, "wb")
        self._f.write(FILE_MAGIC + wire.STREAM_HEADER)
        self.size = len(FILE_MAGIC) + len(wire.STREAM_HEADER)
        self.stopped_reason: Optional[str] = None
        self.frames = 0

    @property
    def active(self) -> bool:
        return self._f is not None

    def write_frame(self, frame: bytes) -> bool:
        """Write one encoded frame; False once the recording has stopped."""
        if self._f is None:
            return False
        if self.size + len(frame) > self.max_bytes - self.GOODBYE_RESERVE:
            mib = self.max_bytes / (1 << 20)
            self.close(f"recording stopped: size limit of {mib:.3g} MiB reached")
            log.warning("loopmon: recording %s stopped at its size limit of %.3g MiB "
                        "(set LOOPMON_RECORD_MAX_MB to change it)", self.path, mib)
            return False
        try:
            self._f.write(frame)
        except OSError as exc:
            log.warning("loopmon: recording %s stopped: %s", self.path, exc)
            self._abandon()
            return False
        self.size += len(frame)
        self.frames += 1
        return True

    def write(self, msg: Any) -> bool:
        return self.write_frame(wire.encode_frame(msg))

    def flush(self) -> None:
        if self._f is not None:
            try:
                self._f.flush()
            except OSError:
                self._abandon()

    def close(self, reason: str = "program exited") -> None:
        """Write the final Goodbye and close.  Idempotent."""
        if self._f is None:
            return
        self.stopped_reason = reason
        try:
            self._f.write(wire.encode_frame(Goodbye(reason[:200])))
            self._f.close()
        except OSError:
            pass
        self._f = None

    def _abandon(self) -> None:
        try:
            self._f.close()
        except Exception:
            pass
        self._f = None


def read_recording(path: str) -> Iterator[Any]:
    """Messages of a recording, Hello first; stops cleanly at a truncated tail.

    Raises ``RecordingError`` (now, not on first ``next()``) if the file cannot be read or
    is not a recording; a corrupt frame in the middle raises ``wire.ProtocolError`` when
    iteration reaches it.
    """
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RecordingError(f"cannot read recording {path}: {exc.strerror or exc}") from None
    try:
        head = f.read(len(FILE_MAGIC) + wire.HEADER_SIZE)
        if head[:len(FILE_MAGIC)] != FILE_MAGIC:
            raise RecordingError(f"{path} is not a loopmon recording (bad magic)")
        try:
            wire.check_stream_header(head[len(FILE_MAGIC):])
        except wire.ProtocolError as exc:
            raise RecordingError(f"{path}: {exc}") from None
    except BaseException:
        f.close()
        raise
    return _frames(f)


def _frames(f: BinaryIO) -> Iterator[Any]:
    dec = wire.FrameDecoder(expect_header=False)
    with f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return          # a partial frame left in the decoder: the truncation cut
            yield from dec.feed(chunk)
