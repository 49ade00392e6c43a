"""The ``loopmon`` command: ``run`` a program under the monitor, ``ps`` to list, ``stat`` to peek.

``run`` parses only its own options, up to the program: everything from the script name (or
``-m module``) on belongs to the program, as with ``python -m cProfile``.  Errors of our own
(bad arguments, unknown pid, dead target, unreadable recording) print one line prefixed with
``loopmon <command>:`` and exit non-zero: 2 for argument errors (argparse's convention), 1
for the rest.  Errors of the *program* are the program's: its traceback and exit status.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import stat as stat_mod
import sys
import time
from typing import Any, Optional

from .telemetry.event_budget import DEFAULT_EVENT_BUDGET
from .telemetry.messages import Alert, Goodbye, Hello, History, Outstanding, Sample


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loopmon",
                                description="Live monitor for asyncio event-loop internals.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run an asyncio program on loopmon's instrumented loop",
                         usage="loopmon run [options] (script.py | -m module) [args ...]")
    run.add_argument("--listen", metavar="ADDR",
                     help="also serve on TCP, e.g. 127.0.0.1:7000 or [::1]:7000 (loopback only)")
    run.add_argument("--listen-any", action="store_true",
                     help="allow a non-loopback --listen address (exposes the stream)")
    run.add_argument("--record", metavar="FILE", help="record the telemetry stream to FILE")
    run.add_argument("--sample-ms", type=_positive_float, default=50.0, metavar="N",
                     help="sampling period in milliseconds (default 50)")
    run.add_argument("--fault", action="append", default=[], metavar="NAME",
                     help="inject a fault (cancel-drops-data, send-keeps-buffer); repeatable")
    run.add_argument("--event-budget", type=_event_budget, default=None, metavar="N",
                     help="op events per second streamed to each client (and to --record); "
                          "above it the events are thinned and the omitted count reported; "
                          "0 = unlimited (default: $LOOPMON_EVENT_BUDGET, else "
                          f"{DEFAULT_EVENT_BUDGET}; this option sets it for the run)")
    run.add_argument("-m", dest="module", metavar="MODULE",
                     help="run a library module; the arguments after it are the module's")
    run.add_argument("program", nargs="*", metavar="script.py [args ...]",
                     help="the script and its arguments (everything after it is the program's)")

    ps = sub.add_parser("ps", help="list instrumented processes on this machine")
    ps.add_argument("--json", action="store_true", help="print a JSON list")

    st = sub.add_parser("stat", help="one snapshot of a target: pid, address or recording file")
    st.add_argument("target", help="pid, unix:/path, host:port, or a recording file")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S",
                    help="connect / wait timeout in seconds (default 5)")
    return p


def _event_budget(s: str) -> int:
    """``--event-budget``: a whole number of op events/s per client, >= 0 (0 = unlimited)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a whole number of events per second: {s!r} (0 = unlimited)") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (unlimited) or more: {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {s!r}")
    return v


_RUN_OPTIONS_WITH_VALUE = ("--listen", "--record", "--sample-ms", "--fault", "--event-budget")


def _split_run_argv(rest: list[str]) -> tuple[list[str], Optional[str], list[str]]:
    """Split ``run``'s arguments: (our options, module or None, the program's argv).

    argparse cannot stop at the first positional on its own (``loopmon run -m mod --help``
    must pass ``--help`` to the module), so we find the boundary first.
    """
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--":
            return rest[:i], None, rest[i + 1:]
        if a == "-m":
            if i + 1 >= len(rest):
                return rest, None, []            # argparse reports the missing module
            return rest[:i], rest[i + 1], rest[i + 2:]
        if a.startswith("-m") and not a.startswith("--"):
            return rest[:i], a[2:], rest[i + 1:]
        if a.startswith("-") and a != "-":
            i += 2 if a in _RUN_OPTIONS_WITH_VALUE else 1
            continue
        return rest[:i], None, rest[i:]
    return rest, None, []


def main(argv: Optional[list[str]] = None) -> int:
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    module: Optional[str] = None
    program: list[str] = []
    if argv and argv[0] == "run":
        ours, module, program = _split_run_argv(argv[1:])
        argv = ["run"] + ours
    args = parser.parse_args(argv)
    if args.command == "run":
        if module is not None:
            args.module = module
        args.program = list(args.program) + program
        return _cmd_run(parser, args)
    if args.command == "ps":
        return _cmd_ps(args)
    return _cmd_stat(args)


def _fail(command: str, message: str, code: int = 1) -> int:
    print(f"loopmon {command}: {message}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------- run
def _cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .runner import KNOWN_FAULTS, run_program
    from .telemetry.agent import AgentError, parse_listen
    run_parser = parser._subparsers._group_actions[0].choices["run"]   # for its error()
    program = list(args.program)
    if args.module is None:
        if not program:
            run_parser.error("a script (or -m module) to run is required")
        if program[0].startswith("-"):
            run_parser.error(f"unrecognized option {program[0]!r} before the script")
        script, prog_args = program[0], program[1:]
    else:
        script, prog_args = None, program
    for fault in args.fault:
        if fault not in KNOWN_FAULTS:
            run_parser.error(f"unknown fault {fault!r} (known: {', '.join(KNOWN_FAULTS)})")
    if args.listen:
        try:
            parse_listen(args.listen, listen_any=args.listen_any)
        except ValueError as exc:
            run_parser.error(str(exc))
    if script is not None and not os.path.isfile(script):
        return _fail("run", f"can't open file {script!r}: no such file", 2)
    try:
        import loopmon
        loopmon.EventLoopPolicy                  # noqa: B018 - the core loop must be present
    except AttributeError:
        return _fail("run", "this loopmon build has no instrumented loop (EventLoopPolicy)")
    try:
        run_program(script=script, module=args.module, args=prog_args, listen=args.listen,
                    listen_any=args.listen_any, record=args.record, sample_ms=args.sample_ms,
                    faults=args.fault, event_budget=args.event_budget)
    except SystemExit as exc:          # the program's sys.exit(): its code is ours
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except AgentError as exc:
        return _fail("run", str(exc))
    return 0


# ------------------------------------------------------------------------------- ps
def _format_uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _cmd_ps(args: argparse.Namespace) -> int:
    from .telemetry.discovery import list_processes
    try:
        entries = list_processes()
    except OSError as exc:
        return _fail("ps", f"cannot read the runtime directory: {exc}")
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("no instrumented processes (start one with `loopmon run script.py`)")
        return 0
    rows = [("PID", "BACKEND", "UPTIME", "ENDPOINT", "COMMAND")]
    rows += [(str(e.pid), e.backend, _format_uptime(e.uptime), e.endpoint, e.command[:80])
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


# ------------------------------------------------------------------------------- stat
def _is_recording_path(target: str) -> bool:
    if target.isdigit() or target.startswith("unix:"):
        return False
    try:
        st = os.stat(target)
    except OSError:
        return False
    return not stat_mod.S_ISSOCK(st.st_mode)


class _StatView:
    """What `stat` prints, folded from a stream of messages."""

    def __init__(self) -> None:
        self.hello: Optional[Hello] = None
        self.sample: Optional[Sample] = None
        self.outstanding: list = []
        self.alerts: list[Alert] = []
        self.goodbye: Optional[str] = None
        self.live_samples = 0

    def add(self, msg: Any) -> None:
        if isinstance(msg, Hello):
            self.hello = msg
        elif isinstance(msg, History):
            if msg.samples:
                self.sample = msg.samples[-1]
            self.alerts.extend(msg.alerts)
        elif isinstance(msg, Sample):
            self.sample = msg
            self.live_samples += 1
        elif isinstance(msg, Outstanding):
            self.outstanding = msg.ops
        elif isinstance(msg, Alert):
            self.alerts.append(msg)
        elif isinstance(msg, Goodbye):
            self.goodbye = msg.reason

    def as_json(self) -> dict[str, Any]:
        s = self.sample
        h = self.hello
        return {
            "pid": h.pid if h else None, "argv": h.argv if h else [],
            "backend": h.backend if h else "", "python": h.python if h else "",
            "time": s.t if s else None, "wall": s.wall if s else None,
            "counters": dict(s.counters) if s else {},
            "process": ({"rss": s.rss, "cpu_percent": s.cpu_percent,
                         "num_threads": s.num_threads, "num_fds": s.num_fds} if s else {}),
            "outstanding": list(self.outstanding),
            "alerts": [dataclasses.asdict(a) for a in self.alerts],
            "ended": self.goodbye,
        }


async def _stat_live(target: str, timeout: float) -> _StatView:
    from .client import connect
    view = _StatView()
    client = await connect(target, timeout=timeout, client_name="loopmon stat",
                           op_events=False)
    view.add(client.hello)
    deadline = time.monotonic() + timeout
    try:
        while view.live_samples < 1 or (view.live_samples < 2 and not view.outstanding):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(client.receive(), left)
            except asyncio.TimeoutError:
                break
            if msg is None:
                break
            view.add(msg)
    finally:
        await client.close()
    return view


def _print_text(view: _StatView) -> None:
    d = view.as_json()
    c = d["counters"]
    print(f"pid {d['pid']}  backend {d['backend']}  python {d['python']}  "
          f"argv {' '.join(d['argv'])}")
    if d["ended"]:
        print(f"ended: {d['ended']}")
    if c:
        print(f"ops: outstanding {c.get('ops_outstanding')} {c.get('ops_outstanding_by_kind')}  "
              f"submitted {c.get('ops_submitted')}  completed {c.get('ops_completed')}  "
              f"cancelled {c.get('ops_cancelled')}  failed {c.get('ops_failed')}")
        print(f"bytes: received {c.get('bytes_received')}  delivered {c.get('bytes_delivered')}  "
              f"discarded {c.get('bytes_discarded')}  sent {c.get('bytes_sent')}")
        print(f"buffers: live {c.get('buffers_live')} ({c.get('buffer_bytes_live')} B)  "
              f"loop lag {1000 * (c.get('loop_lag') or 0):.2f} ms "
              f"(max {1000 * (c.get('loop_lag_max') or 0):.2f} ms)  "
              f"events dropped {c.get('events_dropped')}")
    p = d["process"]
    if p:
        print(f"process: rss {p['rss'] / (1 << 20):.1f} MiB  cpu {p['cpu_percent']:.1f} %  "
              f"threads {p['num_threads']}  fds {p['num_fds']}")
    print(f"outstanding ops: {len(d['outstanding'])}")
    for op in d["outstanding"][:20]:
        print(f"  #{op.get('op_id')} {op.get('kind')} fd={op.get('fd')} "
              f"requested={op.get('requested')} age={op.get('age', 0):.3f}s"
              + (" cancel-requested" if op.get("cancel_requested") else ""))
    print(f"alerts: {len(d['alerts'])}")
    for a in d["alerts"][-20:]:
        print(f"  [{a['severity']}] {a['kind']}: {a['message']}")


def _cmd_stat(args: argparse.Namespace) -> int:
    from .client import ConnectError
    from .telemetry import wire
    from .telemetry.recording import RecordingError, read_recording
    target = args.target
    try:
        if _is_recording_path(target):
            view = _StatView()
            try:
                for msg in read_recording(target):
                    view.add(msg)
            except RecordingError:
                raise
            except wire.ProtocolError as exc:
                if view.hello is None:
                    raise
                print(f"loopmon stat: warning: recording corrupt after a point: {exc}",
                      file=sys.stderr)
            if view.hello is None:
                return _fail("stat", f"{target}: recording holds no Hello frame")
        else:
            view = asyncio.run(_stat_live(target, args.timeout),
                               **({"loop_factory": asyncio.SelectorEventLoop}
                                  if sys.version_info >= (3, 12) else {}))
    except (ConnectError, RecordingError, wire.ProtocolError) as exc:
        return _fail("stat", str(exc))
    if args.json:
        print(json.dumps(view.as_json(), indent=2, default=str))
    else:
        _print_text(view)
    return 0
