"""Shared fixtures: run a test on every event loop we compare (stdlib reference and loopmon).

``aloop`` is a fresh event loop from one of the factories in ``LOOP_KINDS``; ``arun(coro)`` runs a
coroutine on it with a timeout.  The stdlib ``SelectorEventLoop`` is the reference: a test that
fails there is a wrong test, not a loopmon bug.  loopmon is imported lazily *inside* the factory,
never skipped: while loopmon (or one of its APIs) is missing, its params must fail.

After every test that passed, an instrumented loop's monitor is checked: just before close, no
buffer may outlive its op (a leak; close releases everything, so it must be looked for first);
once the loop is closed, no outstanding ops, no live buffers, no instrumentation errors, nothing
discarded, and every byte received from the OS was delivered (a test that deliberately leaves bytes unread says so with
``@pytest.mark.bytes_unread("why")``).  Tests marked ``no_bare`` (the expensive ones) skip the
uninstrumented loopmon variant: it runs the same code paths minus the recorder.
"""
from __future__ import annotations

import asyncio
import gc
from typing import Any, Awaitable, Callable

import pytest


def _stdlib_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop()


def _loopmon_loop() -> asyncio.AbstractEventLoop:
    import loopmon
    return loopmon.new_event_loop()


def _loopmon_bare_loop() -> asyncio.AbstractEventLoop:
    import loopmon
    return loopmon.new_event_loop(instrument=False)


LOOP_KINDS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stdlib": _stdlib_loop,
    "loopmon": _loopmon_loop,
    "loopmon_bare": _loopmon_bare_loop,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bytes_unread(reason): the test leaves received bytes "
                            "undelivered on purpose; skip the received == delivered check")
    config.addinivalue_line("markers", "no_bare: expensive; skip the loopmon_bare loop variant")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item._loop_call_failed = rep.failed  # the monitor is only checked after a clean workload


@pytest.fixture(params=list(LOOP_KINDS))
def loop_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "loopmon_bare" and request.node.get_closest_marker("no_bare"):
        pytest.skip("expensive test: bare loopmon variant covered by cheaper tests")
    return request.param


@pytest.fixture
def make_loop(loop_kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory itself (for asyncio.Runner / asyncio.run(loop_factory=...))."""
    return LOOP_KINDS[loop_kind]


def check_monitor(loop: Any, *, bytes_unread: bool = False) -> None:
    """The post-close invariants of an instrumented loop (no-op for other loops)."""
    monitor = getattr(loop, "monitor", None)
    if monitor is None:
        return
    assert loop.is_closed()
    snap = monitor.snapshot()
    problems = []
    if snap.ops_outstanding != 0:
        problems.append(f"ops_outstanding={snap.ops_outstanding} {snap.ops_outstanding_by_kind}")
    if snap.buffers_live != 0:
        problems.append(f"buffers_live={snap.buffers_live} ({snap.buffer_bytes_live} B)")
    if not bytes_unread and snap.bytes_received != snap.bytes_delivered:
        problems.append(f"bytes_received={snap.bytes_received} != "
                        f"bytes_delivered={snap.bytes_delivered} "
                        f"(discarded={snap.bytes_discarded})")
    if not bytes_unread and snap.bytes_discarded:
        problems.append(f"bytes_discarded={snap.bytes_discarded} (received, never deliverable)")
    if snap.instrumentation_errors:
        problems.append(f"instrumentation_errors={snap.instrumentation_errors}: "
                        f"{snap.last_instrumentation_error}")
    assert not problems, "monitor after close: " + "; ".join(problems)


@pytest.fixture
def monitor_check() -> Callable[..., None]:
    return check_monitor


def leaked_buffers(loop: Any) -> list:
    """Buffers that outlived their op while the loop is still open (bpo-32710's signature).

    Checked *before* close: at close the backend releases everything it still holds, so a
    leak is invisible afterwards."""
    monitor = getattr(loop, "monitor", None)
    if monitor is None or loop.is_closed():
        return []
    return [b for b in monitor.live_buffers() if b.held_after_op_end > 0]


def close_loop(loop: asyncio.AbstractEventLoop) -> list:
    """Cancel what is left, shut down generators and the executor, close.

    Returns the leaked buffers seen just before ``close()``."""
    if loop.is_closed():
        return []
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=10))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        return leaked_buffers(loop)
    finally:
        loop.close()


@pytest.fixture
def aloop(request: pytest.FixtureRequest, loop_kind: str):
    loop = LOOP_KINDS[loop_kind]()
    if loop_kind == "loopmon_bare":
        assert getattr(loop, "monitor", "missing") is None, "a bare loop has loop.monitor is None"
    elif loop_kind == "loopmon":
        assert loop.monitor is not None
    asyncio.set_event_loop(loop)
    leaked: list = []
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        leaked = close_loop(loop)
        gc.collect()  # transports left open are finalised now, not during the next test
    if not getattr(request.node, "_loop_call_failed", True):
        assert not leaked, f"buffers held after their op ended (leak), before close: {leaked[:5]}"
        check_monitor(loop, bytes_unread=request.node.get_closest_marker("bytes_unread") is not None)


@pytest.fixture
def arun(aloop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """``arun(coro, timeout=60)``: run ``coro`` to completion on ``aloop``, bounded."""
    def run(coro: Awaitable, timeout: float = 60.0) -> Any:
        return aloop.run_until_complete(asyncio.wait_for(coro, timeout))
    return run


@pytest.fixture
def quiescent(aloop: asyncio.AbstractEventLoop) -> Callable[[], Awaitable[None]]:
    """``await quiescent()`` at the end of a workload that closed everything it opened: on an
    instrumented loop, no op may stay in flight and no buffer stay pinned (checked while the
    loop still runs: close() would end and release them all and hide the leak).  A cancelled
    op may need a loop iteration or two for its own completion, so this waits a little."""
    async def check() -> None:
        monitor = getattr(aloop, "monitor", None)
        if monitor is None:
            return
        for _ in range(500):
            ops, bufs = monitor.outstanding(), monitor.live_buffers()
            if not ops and not bufs:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"workload closed, yet in flight: {ops[:5]}; pinned: {bufs[:5]}")
    return check

