"""aiohttp server + client on the same loop: routes, a large upload with checksum, a streamed
response, web.FileResponse (which uses loop.sendfile), websockets, keep-alive reuse and many
concurrent requests.  Runs on the stdlib loop (reference) and on loopmon."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _make_app(file_path: str) -> web.Application:
    async def hello(request):
        return web.Response(text="hello " + request.match_info.get("name", "world"))

    async def upload(request):
        h, n = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(65536):
            h.update(chunk)
            n += len(chunk)
        return web.json_response({"size": n, "sha256": h.hexdigest()})

    async def stream(request):
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(100):
            await resp.write(b"chunk %03d\n" % i)
        await resp.write_eof()
        return resp

    async def file(request):
        return web.FileResponse(file_path)

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(hashlib.sha256(msg.data).digest())
        return sock

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", hello)
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/upload", upload)
    app.router.add_get("/stream", stream)
    app.router.add_get("/file", file)
    app.router.add_get("/ws", ws)
    return app


@pytest.fixture
def served_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 11)
    p = tmp_path / "payload.bin"
    p.write_bytes(data)
    return str(p), data


def test_aiohttp_exchange(aloop, arun, served_file):
    path, file_data = served_file

    async def main():
        runner = web.AppRunner(_make_app(path))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/") as r:
                    assert r.status == 200 and await r.text() == "hello world"
                async with session.get(base + "/hello/loopmon") as r:
                    assert await r.text() == "hello loopmon"
                async with session.get(base + "/missing") as r:
                    assert r.status == 404
                body = os.urandom(8 * 1024 * 1024)
                async with session.post(base + "/upload", data=body) as r:
                    assert await r.json() == {"size": len(body),
                                              "sha256": hashlib.sha256(body).hexdigest()}
                async with session.get(base + "/stream") as r:
                    lines = [line async for line in r.content]
                    assert lines == [b"chunk %03d\n" % i for i in range(100)]
                async with session.get(base + "/file") as r:
                    assert r.status == 200
                    assert await r.read() == file_data
                async with session.get(base + "/file",
                                       headers={"Range": "bytes=100-199"}) as r:
                    assert r.status == 206 and await r.read() == file_data[100:200]

                async def one(i):
                    async with session.get(f"{base}/hello/{i}") as r:
                        return await r.text()
                got = await asyncio.gather(*(one(i) for i in range(100)))
                assert got == [f"hello {i}" for i in range(100)]

                async with session.ws_connect(base + "/ws") as ws:
                    for i in range(50):
                        await ws.send_str(f"msg {i}")
                        assert (await ws.receive_str()) == f"MSG {i}"
                    blob = os.urandom(1024 * 1024)
                    await ws.send_bytes(blob)
                    assert await ws.receive_bytes() == hashlib.sha256(blob).digest()
                    await ws.close()
        finally:
            await runner.cleanup()
    arun(main(), timeout=110)


def test_aiohttp_over_tls(aloop, arun, served_file, tp_tls_contexts):
    """HTTPS and WSS: aiohttp's server and client over the loop's TLS (sslproto) path,
    including FileResponse, which must fall back from sendfile under TLS."""
    path, file_data = served_file
    server_ctx, client_ctx = tp_tls_contexts

    async def main():
        runner = web.AppRunner(_make_app(path))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"https://localhost:{port}"
        try:
            conn = aiohttp.TCPConnector(ssl=client_ctx)
            async with aiohttp.ClientSession(connector=conn) as session:
                async with session.get(base + "/hello/tls") as r:
                    assert await r.text() == "hello tls"
                body = os.urandom(4 * 1024 * 1024)
                async with session.post(base + "/upload", data=body) as r:
                    assert (await r.json())["sha256"] == hashlib.sha256(body).hexdigest()
                async with session.get(base + "/file") as r:
                    assert await r.read() == file_data
                async with session.ws_connect(base.replace("https", "wss") + "/ws") as ws:
                    await ws.send_str("secure")
                    assert await ws.receive_str() == "SECURE"
                    await ws.close()
        finally:
            await runner.cleanup()
    arun(main(), timeout=110)
