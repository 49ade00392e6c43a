"""Listen addresses for the agent: parsing, and the loopback-only policy.

The telemetry stream shows a program's internals (peers, sizes, timings) and is not
encrypted, so TCP is opt-in and loopback-only: ``127.0.0.1:PORT``, ``[::1]:PORT`` or
``localhost:PORT``.  Anything else -- including the wildcard ``0.0.0.0`` / ``[::]`` and any
host name other than localhost -- is refused unless the user says ``--listen-any``.
"""
from __future__ import annotations

import ipaddress


def parse_listen(addr: str, *, listen_any: bool = False) -> tuple[str, int]:
    """``127.0.0.1:PORT`` / ``[::1]:PORT`` / ``localhost:PORT`` -> (host, port).

    Non-loopback addresses raise ValueError unless ``listen_any``.
    """
    addr = addr.strip()
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad listen address {addr!r}: expected [IPv6]:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = addr.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad listen address {addr!r}: expected HOST:PORT")
    try:
        port = int(port_s)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"bad port in listen address {addr!r}") from None
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not listen_any:
            raise ValueError(f"listen address {addr!r} is not a loopback IP; use 127.0.0.1 or "
                             f"[::1], or pass --listen-any to expose the agent") from None
        return host, port
    if not ip.is_loopback and not listen_any:
        raise ValueError(f"refusing to listen on non-loopback address {host}: the telemetry "
                         f"stream would be reachable from the network; pass --listen-any "
                         f"if you really mean it")
    return host, port


def format_tcp_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
