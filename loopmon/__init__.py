"""loopmon: an instrumented asyncio proactor event loop and its live monitor.

(The public API — new_event_loop, EventLoopPolicy, install — is filled in by the core loop.)
"""
__version__ = "0.1.0"
