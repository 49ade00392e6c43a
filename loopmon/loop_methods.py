"""The loop methods an instrumented proactor loop shares on every platform.

``sock_*`` coroutines with asyncio's own argument checks (an ``ssl.SSLSocket`` is a
TypeError; in debug mode a blocking socket is a ValueError; a closed loop is a
RuntimeError) and the results ``SelectorEventLoop`` gives (``sock_sendall`` and
``sock_connect`` return None, ``sock_connect`` resolves host names first).  When the loop
is instrumented, what a receive returns to its caller is counted as *delivered*.

The transport factories build ``loopmon.transports`` classes, which count what they hand to
protocols.  ``loopmon.loop.ProactorEventLoop`` (POSIX) and the IOCP loop of
``loopmon.backends.iocp`` (Windows) both mix this in, so the accounting is identical.
"""
from __future__ import annotations

import socket
from asyncio import base_events, sslproto
from typing import Any

from .transports import SocketTransport

_check_ssl_socket = base_events._check_ssl_socket
_HAS_IPv6 = hasattr(socket, "AF_INET6")


class ProactorLoopMethodsMixin:
    """Needs ``self.monitor`` (a Monitor or None) and ``self._proactor``."""

    # ------------------------------------------------------------------ transports
    def _track_transport(self, sock, transport):
        """Remember which transport owns an fd, so add_reader() on it is refused."""
        transports = getattr(self, "_transports", None)
        if transports is not None:
            try:
                transports[sock.fileno()] = transport
            except (AttributeError, OSError, ValueError):
                pass
        return transport

    def _make_socket_transport(self, sock, protocol, waiter=None, extra=None, server=None):
        return self._track_transport(
            sock, SocketTransport(self, sock, protocol, waiter, extra, server))

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None,
                            server=None, **timeouts):
        ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                            server_hostname, **timeouts)
        self._track_transport(
            rawsock, SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server))
        return ssl_protocol._app_transport

    # ------------------------------------------------------------------ sock_* methods
    def _check_sock(self, sock: Any) -> None:
        _check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        self._check_closed()

    async def sock_recv(self, sock, n):
        self._check_sock(sock)
        data = await self._proactor.recv(sock, n)
        mon = self.monitor
        if mon is not None:
            mon.delivered(len(data))
        return data

    async def sock_recv_into(self, sock, buf):
        self._check_sock(sock)
        nbytes = await self._proactor.recv_into(sock, buf)
        mon = self.monitor
        if mon is not None:
            mon.delivered(nbytes)
        return nbytes

    async def sock_recvfrom(self, sock, bufsize):
        self._check_sock(sock)
        res = await self._proactor.recvfrom(sock, bufsize)
        mon = self.monitor
        if mon is not None:
            mon.delivered(len(res[0]))
        return res

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        res = await self._proactor.recvfrom_into(sock, buf, nbytes)
        mon = self.monitor
        if mon is not None:
            mon.delivered(res[0])
        return res

    async def sock_sendall(self, sock, data):
        self._check_sock(sock)
        await self._proactor.send(sock, data)

    async def sock_sendto(self, sock, data, address):
        self._check_sock(sock)
        return await self._proactor.sendto(sock, data, 0, address)

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        if sock.family == socket.AF_INET or (_HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        await self._proactor.connect(sock, address)

    async def sock_accept(self, sock):
        self._check_sock(sock)
        return await self._proactor.accept(sock)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        self._check_closed()
        return await super()._sock_sendfile_native(sock, file, offset, count)
