"""Embed loopmon's ``LoopMonitorWidget`` in your own Qt application.

    python examples/embed_widget.py                 # watch an instrumented loop in this process
    python examples/embed_widget.py --attach PID    # or a program started with `loopmon run`
    python examples/embed_widget.py --screenshot out.png   # render once and exit (offscreen ok)

The host below is an ordinary ``QMainWindow`` with its own menu, a log pane and a dock: the
monitor is just one more widget in it.  It runs plain ``app.exec()`` — no qasync set-up of its
own: ``widget.attach(target)`` creates the (shared) qasync loop it needs on first use, and
``widget.attach_monitor(monitor)`` needs none at all.

In-process mode starts a ``loopmon.new_event_loop()`` in a background thread with a tiny echo
server and client on 127.0.0.1, and hands its ``loop.monitor`` to the widget: the widget polls
the monitor through a collector subscription on the GUI thread and never touches the loop.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication, QDockWidget, QMainWindow, QPlainTextEdit, QSplitter,
)

from app import LoopMonitorWidget  # noqa: E402  (no QApplication is created by this import)


def start_instrumented_loop_in_a_thread():
    """A loopmon loop with a little echo traffic in a daemon thread: (thread, loop, stop)."""
    import loopmon

    loop = loopmon.new_event_loop()
    stop = threading.Event()

    async def traffic() -> None:
        async def echo(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except asyncio.CancelledError:
                return          # shutting down (returning keeps 3.11's start_server quiet)
            finally:
                writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = 512
        while not stop.is_set():
            writer.write(b"e" * size)
            await reader.readexactly(size)
            size = 512 if size > 60000 else size * 2      # a sawtooth of message sizes
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def run() -> None:
        try:
            loop.run_until_complete(traffic())
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, loop, stop


class HostWindow(QMainWindow):
    """Somebody else's application: a log editor with a loop monitor docked beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("My service console (embeds loopmon)")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setPlainText("service log…\n")
        self.monitor = LoopMonitorWidget()
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.monitor)
        splitter.addWidget(self.log)
        splitter.setSizes([700, 150])
        self.setCentralWidget(splitter)
        dock = QDockWidget("Notes", self)
        dock.setWidget(QPlainTextEdit("The monitor above is loopmon's LoopMonitorWidget."))
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.menuBar().addMenu("&Service").addAction("&Quit", self.close)
        self.monitor.feedStateChanged.connect(
            lambda state, detail: self.log.appendPlainText(f"monitor: {state} {detail}"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attach", metavar="TARGET", help="pid, unix:/path or host:port")
    p.add_argument("--screenshot", metavar="OUT.png", help="render after --after s and exit")
    p.add_argument("--after", type=float, default=3.0)
    args = p.parse_args()

    qapp = QApplication(sys.argv[:1])
    window = HostWindow()
    window.resize(1400, 900)
    window.show()
    thread = stop = None
    if args.attach:
        window.monitor.attach(args.attach)
    else:
        thread, loop, stop = start_instrumented_loop_in_a_thread()
        window.monitor.attach_monitor(loop.monitor)
    if args.screenshot:
        def shoot() -> None:
            window.monitor.redraw_all()
            window.grab().save(args.screenshot)
            window.close()
        QTimer.singleShot(int(args.after * 1000), shoot)
    code = qapp.exec()
    window.monitor.detach()
    if stop is not None:
        stop.set()
        thread.join(5)
    return code


if __name__ == "__main__":
    sys.exit(main())
