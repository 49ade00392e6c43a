"""Discovery: how a client finds the instrumented processes of this user on this machine.

Each agent writes ``<runtime dir>/<pid>.json`` (mode 0600) beside its Unix socket
``<pid>.sock`` (mode 0600).  The runtime dir is ``$LOOPMON_RUNTIME_DIR`` if set (tests use it
for isolation), else ``$XDG_RUNTIME_DIR/loopmon``, else ``/tmp/loopmon-$UID``; it is created
0700 and refused if another user owns it or others can read it -- a shared ``/tmp`` makes it
easy for someone else to pre-create the directory and harvest tokens.

The discovery file holds the per-process token: reading it is what proves a client runs as
the same user (the file and the directory are private), so possession of the token is the
whole access check.  TCP endpoints are listed too, with the same token.

A process killed with SIGKILL leaves its files behind: ``list_processes()`` prunes entries
whose pid is gone (or whose pid was reused by a process started after the entry).
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class ProcessEntry:
    """One live instrumented process, as its agent described itself."""

    pid: int
    command: str                # argv joined, for display
    backend: str
    endpoint: str               # "unix:/path" or "host:port" / "[::1]:port"
    started_wall: float
    token: str
    argv: list = field(default_factory=list)
    python: str = ""
    extra_endpoints: list = field(default_factory=list)

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started_wall)

    def as_dict(self, *, with_token: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["uptime"] = round(self.uptime, 3)
        if not with_token:
            d.pop("token")
        return d


def runtime_dir(create: bool = False) -> Path:
    """The per-user directory for sockets and discovery files (created 0700 on request)."""
    env = os.environ.get("LOOPMON_RUNTIME_DIR")
    if env:
        path = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR") and os.path.isdir(os.environ["XDG_RUNTIME_DIR"]):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "loopmon"
    else:
        uid = os.getuid() if hasattr(os, "getuid") else 0
        path = Path(tempfile.gettempdir()) / f"loopmon-{uid}"
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass
        _check_private(path)
    return path


def _check_private(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"loopmon runtime dir {path} is not a directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"loopmon runtime dir {path} belongs to uid {st.st_uid}, not us")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def entry_path(pid: int) -> Path:
    return runtime_dir() / f"{pid}.json"


def socket_path(pid: int) -> Path:
    return runtime_dir() / f"{pid}.sock"


def write_entry(entry: ProcessEntry) -> Path:
    """Write (atomically, 0600) the discovery file of this process."""
    directory = runtime_dir(create=True)
    final = directory / f"{entry.pid}.json"
    tmp = directory / f".{entry.pid}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(entry), f)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return final


def remove_entry(pid: int) -> None:
    for p in (entry_path(pid), socket_path(pid)):
        try:
            os.unlink(p)
        except OSError:
            pass


def _alive(pid: int, started_wall: float) -> bool:
    try:
        import psutil
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # a reused pid belongs to a process created after the entry was written
        return proc.create_time() <= started_wall + 5.0
    except Exception:
        try:
            os.kill(pid, 0)
            return True
        except PermissionError:
            return True
        except OSError:
            return False


def _load(path: Path) -> Optional[ProcessEntry]:
    try:
        with open(path) as f:
            d = json.load(f)
        return ProcessEntry(pid=int(d["pid"]), command=str(d.get("command", "")),
                            backend=str(d.get("backend", "")), endpoint=str(d["endpoint"]),
                            started_wall=float(d.get("started_wall", 0.0)),
                            token=str(d.get("token", "")), argv=list(d.get("argv", [])),
                            python=str(d.get("python", "")),
                            extra_endpoints=list(d.get("extra_endpoints", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_processes(*, prune: bool = True) -> list[ProcessEntry]:
    """Live instrumented processes of this user, by pid.  Stale entries are removed."""
    directory = runtime_dir()
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.json")):
        entry = _load(path)
        if entry is None:
            continue           # half-written or foreign: leave it
        if not _alive(entry.pid, entry.started_wall):
            if prune:
                remove_entry(entry.pid)
            continue
        out.append(entry)
    return sorted(out, key=lambda e: e.pid)


def find(pid: int) -> Optional[ProcessEntry]:
    """The live entry for ``pid``, or None."""
    entry = _load(entry_path(pid))
    if entry is None or not _alive(entry.pid, entry.started_wall):
        return None
    return entry


def find_endpoint(endpoint: str) -> Optional[ProcessEntry]:
    """The live entry serving ``endpoint`` (to look up its token), or None."""
    for entry in list_processes(prune=False):
        if endpoint in (entry.endpoint, *entry.extra_endpoints):
            return entry
    return None
