"""Feeds: where a ``SessionModel``'s messages come from.

Every feed pushes telemetry messages into a ``SessionModel`` and reports its state through Qt
signals (``stateChanged(state, detail)`` with state in ``connecting / live / ended / failed``).
The model is mutated only on the GUI thread, so widgets never see a half-applied batch.

* ``RemoteFeed`` — a target in another process, through ``loopmon.client``: a task on the qasync
  loop (``app.asyncbridge``) connects and iterates; every message goes straight into the model
  (cheap: the model only appends), and the widget's frame timer draws later.  End of stream or a
  lost connection keeps the history and says why; ``ConnectError`` becomes a one-line
  ``failed`` message.  ``retry_for`` keeps trying to connect for a while — used by ``--demo``,
  whose child needs a moment to write its discovery file.
* ``MonitorFeed`` — a loop in *this* process: ``Collector.for_monitor(monitor).subscribe()``
  and a ``QTimer`` that polls the subscription (non-blocking) at 20 Hz.  No sockets, no token.
* ``ReplayFeed`` — a recording file: all messages are read up front (recordings are bounded by
  the recorder's size policy), indexed by target time, and replayed against a position that a
  time slider or a play timer moves.  Seeking backwards rebuilds the model from the start up to
  the position; forwards just ingests the messages in between.
* ``SyntheticFeed`` — ``app.synthetic.SyntheticTarget`` on a timer, for the bench and drawing
  tests only (its Hello says backend "synthetic").
"""
from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any, Optional, Union

from PySide6.QtCore import QObject, QTimer, Signal

from app.asyncbridge import qt_asyncio_loop
from app.model.session import SessionModel
from loopmon.telemetry.messages import (
    Alert, Hello, History, OpEvents, Outstanding, Sample,
)

CONNECTING, LIVE, ENDED, FAILED = "connecting", "live", "ended", "failed"


class Feed(QObject):
    """Base class: a source of messages for one ``SessionModel``."""

    stateChanged = Signal(str, str)       # state, detail

    def __init__(self, model: SessionModel, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.model = model
        self.state = CONNECTING
        self.detail = ""
        self.description = ""             # what we are attached to, for the status bar

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self.stateChanged.emit(state, detail)

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class RemoteFeed(Feed):
    """A target in another process (pid, ``unix:/path``, ``host:port``)."""

    def __init__(self, model: SessionModel, target: Union[int, str], *,
                 token: Optional[str] = None, timeout: float = 5.0, retry_for: float = 0.0,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(model, parent)
        self.target = target
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for
        self.description = str(target)
        self._task: Optional[asyncio.Task] = None
        self._client: Any = None

    def start(self) -> None:
        loop = qt_asyncio_loop()
        self._set_state(CONNECTING, f"connecting to {self.target}")
        self._task = loop.create_task(self._run())

    async def _connect(self):
        from loopmon.client import ConnectError, connect
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                return await connect(self.target, token=self.token, timeout=self.timeout)
            except ConnectError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _run(self) -> None:
        from loopmon.client import ConnectError
        try:
            client = await self._connect()
        except asyncio.CancelledError:
            raise
        except ConnectError as exc:
            self._set_state(FAILED, str(exc))
            return
        except Exception as exc:   # a bug or an unexpected OS error: say it, don't crash
            self._set_state(FAILED, f"cannot attach to {self.target}: {type(exc).__name__}: {exc}")
            return
        self._client = client
        self.model.ingest(client.hello)
        argv = " ".join(client.hello.argv)
        self.description = f"pid {client.hello.pid} · {argv}"
        self._set_state(LIVE, f"attached to {client.endpoint}")
        reason = "target ended"
        try:
            async for msg in client:
                self.model.ingest(msg)
            reason = client.end_reason or reason
        except asyncio.CancelledError:
            await client.close()
            raise
        except Exception as exc:
            reason = f"stream error: {exc}"
        finally:
            self._client = None
        await client.close()
        if reason.startswith("goodbye") or reason == "end of stream" or "lost" in reason:
            reason = f"target exited ({reason})"
        self.model.mark_disconnected(reason)
        self._set_state(ENDED, reason)

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        if self.state in (CONNECTING, LIVE):
            self.model.mark_disconnected("detached")
            self._set_state(ENDED, "detached")


class MonitorFeed(Feed):
    """A ``Monitor`` in this process, polled through a collector subscription."""

    def __init__(self, model: SessionModel, monitor: Any, poll_ms: int = 50,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(model, parent)
        self.monitor = monitor
        self._sub: Any = None
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self._poll)
        self.description = "this process"

    def start(self) -> None:
        from loopmon.telemetry.collector import Collector
        self._sub = Collector.for_monitor(self.monitor).subscribe()
        hello = self._sub.hello
        self.model.ingest(hello)
        self.description = f"pid {hello.pid} (in-process) · {' '.join(hello.argv)}"
        self._set_state(LIVE, "attached in-process")
        self._timer.start()
        self._poll()

    def _poll(self) -> None:
        sub = self._sub
        if sub is None:
            return
        messages = sub.poll()
        if messages:
            self.model.ingest_many(messages)
        if getattr(self.monitor, "closed", False) or getattr(sub, "closed", False):
            self.model.mark_disconnected("loop closed")
            self._timer.stop()
            self._set_state(ENDED, "loop closed")

    def stop(self) -> None:
        self._timer.stop()
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()
        if self.state == LIVE:
            self.model.mark_disconnected("detached")
            self._set_state(ENDED, "detached")


def message_time(msg: Any) -> Optional[float]:
    """Target time a message belongs to (None: it rides with the previous one)."""
    if isinstance(msg, (Sample, Outstanding, Alert)):
        return msg.t
    if isinstance(msg, OpEvents):
        return msg.events[-1][2] if msg.events else None
    if isinstance(msg, History):
        return msg.samples[-1].t if msg.samples else None
    return None


class ReplayFeed(Feed):
    """A recording, replayed against a movable position (target seconds since start)."""

    positionChanged = Signal(float)

    def __init__(self, model: SessionModel, path: str, parent: Optional[QObject] = None) -> None:
        super().__init__(model, parent)
        self.path = path
        self.description = f"recording {path}"
        self.messages: list[Any] = []
        self.times: list[float] = []      # per message, monotonic non-decreasing
        self.hello: Optional[Hello] = None
        self.warning = ""                 # set when the file was cut or damaged mid-way
        self.position = 0.0               # seconds since the target started
        self._applied = 0                 # messages[:_applied] are in the model
        self.speed = 1.0
        self._timer = QTimer(self)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._tick)
        self._last_tick = 0.0

    def load(self) -> None:
        """Read the whole recording.  Raises ``ValueError`` / ``OSError`` with a clear message."""
        from loopmon.telemetry.recording import read_recording
        t = 0.0
        messages = read_recording(self.path)      # a non-recording raises here, at once
        try:
            for msg in messages:
                if isinstance(msg, Hello) and self.hello is None:
                    self.hello = msg
                    t = msg.started_t
                mt = message_time(msg)
                if mt is not None and mt > t:
                    t = mt
                self.messages.append(msg)
                self.times.append(t)
        except Exception as exc:
            # a corrupt frame in the middle: replay what came before it, and say so
            if self.hello is None:
                raise ValueError(f"{self.path}: unreadable recording: {exc}") from None
            self.warning = f"recording damaged after {len(self.messages)} messages: {exc}"
        if self.hello is None:
            raise ValueError(f"{self.path}: no Hello at the start: not a loopmon recording")

    @property
    def duration(self) -> float:
        if not self.times or self.hello is None:
            return 0.0
        return self.times[-1] - self.hello.started_t

    def start(self) -> None:
        if not self.messages:
            self.load()
        self.seek(self.duration)         # show the whole recording; the slider goes back
        self._set_state(ENDED, f"replaying {self.path} ({self.duration:.1f} s)")

    def seek(self, position: float) -> None:
        assert self.hello is not None
        position = max(0.0, min(position, self.duration))
        end = bisect.bisect_right(self.times, self.hello.started_t + position)
        if end < self._applied:
            self.model.reset()
            self._applied = 0
        self.model.ingest_many(self.messages[self._applied:end])
        self._applied = end
        self.model.mark_disconnected("recording")
        # freeze the model's clock at the position, so the graphs' right edge is there
        self.model.freeze_clock(self.hello.started_t + position)
        self.position = position
        self.positionChanged.emit(position)

    def play(self, speed: float = 1.0) -> None:
        self.speed = speed
        if self.position >= self.duration:
            self.seek(0.0)
        self._last_tick = time.monotonic()
        self._timer.start()

    def pause(self) -> None:
        self._timer.stop()

    @property
    def playing(self) -> bool:
        return self._timer.isActive()

    def _tick(self) -> None:
        now = time.monotonic()
        step = (now - self._last_tick) * self.speed
        self._last_tick = now
        self.seek(self.position + step)
        if self.position >= self.duration:
            self.pause()

    def stop(self) -> None:
        self.pause()


class SyntheticFeed(Feed):
    """SYNTHETIC data (bench / drawing tests only): a ``SyntheticTarget`` stepped on a timer."""

    def __init__(self, model: SessionModel, ops_per_second: float = 100_000,
                 interval_ms: int = 20, parent: Optional[QObject] = None) -> None:
        super().__init__(model, parent)
        from app.synthetic import SyntheticTarget
        self.target = SyntheticTarget(ops_per_second=ops_per_second)
        self.description = "SYNTHETIC data (not a real target)"
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.model.ingest(self.target.hello())
        self._set_state(LIVE, "synthetic")
        self._timer.start()

    def _tick(self) -> None:
        self.model.ingest_many(self.target.step())

    def stop(self) -> None:
        self._timer.stop()
        self.model.mark_disconnected("stopped")
        self._set_state(ENDED, "stopped")
