"""loopmon: an instrumented asyncio proactor event loop and its live monitor.

    import asyncio, loopmon
    with asyncio.Runner(loop_factory=loopmon.new_event_loop) as runner:
        runner.run(main())
        print(runner.get_loop().monitor.snapshot())

``new_event_loop(instrument=False)`` is the same loop without a monitor.  Only the standard
library (and psutil, for telemetry) is imported here: never a GUI toolkit.
"""
from .monitor import Monitor
from .policy import EventLoopPolicy, install, new_event_loop

__version__ = "0.1.0"


def __getattr__(name: str):
    # ProactorEventLoop imports asyncio.unix_events: load it on first use (and not on Windows)
    if name == "ProactorEventLoop":
        import sys
        if sys.platform == "win32":  # pragma: no cover - the IOCP loop subclasses the stdlib's
            import asyncio
            return asyncio.ProactorEventLoop
        from .loop import ProactorEventLoop
        return ProactorEventLoop
    if name == "serve":
        # the agent (a thread, sockets, psutil) loads only when a program asks to be served
        from .runner import serve
        return serve
    raise AttributeError(f"module 'loopmon' has no attribute {name!r}")


__all__ = ["new_event_loop", "EventLoopPolicy", "install", "ProactorEventLoop", "Monitor",
           "serve", "__version__"]
