"""Telemetry: how a program's Monitor is seen from outside.

``collector`` samples a Monitor on a thread; ``wire`` encodes frames; ``agent`` serves them
to clients (``loopmon.client``); ``discovery`` finds served processes; ``recording`` writes
and replays streams.  The message types live in ``messages``.
"""


def serve(**kwargs):
    """Start the telemetry agent from inside a program; see ``loopmon.runner.serve``."""
    from ..runner import serve as _serve
    return _serve(**kwargs)
