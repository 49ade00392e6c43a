"""``loopmon-gui`` / ``python -m app``: the command line of the desktop app.

::

    loopmon-gui [--demo [plain|cancel-race|send-leak] | --attach TARGET | --replay FILE]
                [--screenshot OUT.png [--after SECONDS]] [--size WxH] [--window 10s|1m|10m|all]

The asyncio side runs on a ``qasync.QEventLoop`` that *is* the Qt event loop: ``main()`` makes it
the thread's loop and runs it forever, so ``loopmon.client`` coroutines and Qt timers interleave
on one thread and the model is never touched concurrently.

``--screenshot`` is for docs and CI: it waits ``--after`` seconds (so live graphs have data),
renders the window (``QT_QPA_PLATFORM=offscreen`` works — no display needed), writes the PNG and
exits 0; a source that failed still gets its screenshot (showing the error) and its one-line
message on stderr.  Argument errors exit 2 with argparse's message; nothing here raises a
traceback at a user for an unreachable target or an unreadable file.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Optional, Sequence

from app.demo import DEMOS

WINDOWS = {"10s": 10.0, "1m": 60.0, "10m": 600.0, "all": None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loopmon-gui",
        description="Live monitor for asyncio event-loop internals (loopmon).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--demo", nargs="?", const="plain", choices=sorted(DEMOS), metavar="NAME",
                     help="run a built-in workload under `loopmon run` and attach "
                          f"(NAME: {', '.join(DEMOS)}; default plain)")
    src.add_argument("--attach", metavar="TARGET",
                     help="attach to a pid, unix:/path/to.sock or host:port")
    src.add_argument("--replay", metavar="FILE", help="open a recording made with --record")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="render the window to a PNG and exit (works offscreen)")
    p.add_argument("--after", type=float, default=3.0, metavar="SECONDS",
                   help="with --screenshot: wait this long first (default 3)")
    p.add_argument("--size", default="1400x900", metavar="WxH", help="window size")
    p.add_argument("--window", choices=sorted(WINDOWS), default=None,
                   help="initial graph time window")
    return p


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 200 or h < 200 or w > 10000 or h > 10000:
            raise ValueError
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --size {text!r}: expected WxH, e.g. 1400x900")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        size = _parse_size(args.size)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.after < 0:
        parser.error("--after must be >= 0")

    from PySide6.QtWidgets import QApplication
    import qasync   # after PySide6

    from app.assets import icon, style_sheet
    from app.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("loopmon")
    app.setDesktopFileName("loopmon")
    app.setWindowIcon(icon("loopmon"))
    app.setStyleSheet(style_sheet())
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    window = MainWindow()
    window.resize(*size)
    if args.window is not None:
        window.monitor.graphs.set_window(WINDOWS[args.window])
    exit_code = 0

    def start_source() -> None:
        if args.demo:
            window.start_demo(args.demo)
        elif args.attach:
            window.attach(args.attach)
        elif args.replay:
            window.open_recording(args.replay)

    def take_screenshot() -> None:
        nonlocal exit_code
        if window.export_png(args.screenshot):
            print(f"wrote {args.screenshot}", file=sys.stderr)
        else:
            exit_code = 1
        window.close()
        loop.stop()

    window.show()
    signal.signal(signal.SIGINT, lambda *_: (window.close(), loop.stop()))
    signal.signal(signal.SIGTERM, lambda *_: (window.close(), loop.stop()))
    from PySide6.QtCore import QTimer
    # let Python see signals: the Qt loop otherwise sleeps in C for as long as it likes
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(250)
    QTimer.singleShot(0, start_source)
    if args.screenshot:
        QTimer.singleShot(int(args.after * 1000), take_screenshot)
    app.lastWindowClosed.connect(loop.stop)
    try:
        loop.run_forever()
    finally:
        window.stop_demo()
        window.monitor.detach()
        for task in asyncio.all_tasks(loop):
            task.cancel()
    return exit_code


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
