"""The lean loop iteration (``loopmon.loop_iteration``) behaves as ``BaseEventLoop``'s.

``ProactorEventLoop`` builds ``call_soon``'s handles itself and runs plain handles in place
instead of through ``Handle._run``; everything observable must stay as in the stdlib: the
handle ``call_soon`` returns, the context a callback runs in, what a failing callback hands
the exception handler, ``Handle`` subclasses that override ``_run``, debug mode, and
``KeyboardInterrupt`` leaving the rest of the ready queue for later.  Each test runs on the
stdlib selector loop and on loopmon (bare), and compares.
"""
from __future__ import annotations

import asyncio
import contextvars

import pytest

import loopmon

LOOPS = {
    "stdlib": asyncio.SelectorEventLoop,
    "loopmon": lambda: loopmon.new_event_loop(instrument=False),
}
var = contextvars.ContextVar("var", default="unset")


@pytest.fixture(params=sorted(LOOPS))
def loop(request):
    lp = LOOPS[request.param]()
    yield lp
    lp.close()


def test_call_soon_handle_context_and_order(loop):
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")
    var.set("outer")
    h1 = loop.call_soon(lambda: seen.append(("a", var.get())))
    h2 = loop.call_soon(lambda x: seen.append((x, var.get())), "b", context=ctx)
    h3 = loop.call_soon(seen.append, ("c", None))
    h3.cancel()
    assert type(h1) is asyncio.Handle and not h1.cancelled() and h3.cancelled()
    assert "lambda" in repr(h1) and h1._context is not ctx and h2._context is ctx
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [("a", "outer"), ("b", "given")]


def test_failing_callback_reported_like_stdlib(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, c: contexts.append(c))

    def bad(arg):
        raise ZeroDivisionError(arg)

    handle = loop.call_soon(bad, "boom")
    timer = loop.call_later(0, bad, "late")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert [sorted(c) for c in contexts] == [["exception", "handle", "message"]] * 2
    assert contexts[0]["handle"] is handle and contexts[1]["handle"] is timer
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert "bad" in contexts[0]["message"]
    assert [str(c["exception"]) for c in contexts] == ["boom", "late"]


def test_handle_subclass_run_is_honoured(loop):
    ran = []

    class Traced(asyncio.Handle):
        __slots__ = ()

        def _run(self):
            ran.append("traced")
            super()._run()

    loop._ready.append(Traced(ran.append, ("callback",), loop, None))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["traced", "callback"]


def test_keyboard_interrupt_leaves_the_rest_queued(loop):
    ran = []

    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_soon(ran.append, "after")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert ran == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["after"]


def test_debug_mode_checks_and_tracebacks(loop):
    loop.set_debug(True)
    try:
        handle = loop.call_soon(lambda: None)
        assert handle._source_traceback          # debug: where the callback was scheduled
        with pytest.raises(TypeError):
            loop.call_soon(asyncio.sleep)        # a coroutine function is refused in debug
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.set_debug(False)


def test_closed_loop_refuses_call_soon():
    for factory in LOOPS.values():
        lp = factory()
        lp.close()
        with pytest.raises(RuntimeError, match="closed"):
            lp.call_soon(print)
