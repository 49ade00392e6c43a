"""Run an unmodified asyncio program under loopmon, with the agent serving -- like cProfile.

``loopmon run script.py args`` must behave as ``python script.py args`` would: same
``sys.argv``, ``__main__`` semantics (``runpy`` with ``run_name="__main__"``), ``sys.path[0]``
(the script's directory, or the current directory for ``-m``), stdout/stderr untouched, the
same exit code, and Ctrl-C handled by the program (asyncio.run's own SIGINT handling runs
on the main thread as usual).  Uncaught exceptions -- KeyboardInterrupt included -- propagate
out of ``run_program`` after clean-up, so the interpreter reports them and picks the exit
status exactly as it would have for the program alone.

How the program gets the instrumented loop without being modified: we install an event-loop
policy, a subclass of ``loopmon.EventLoopPolicy`` whose ``new_event_loop`` also attaches each
new loop's Monitor to the agent.  ``asyncio.run()``, ``asyncio.Runner`` and
``asyncio.new_event_loop()`` all create loops through the policy.  Programs already written
for loopmon (``loop_factory=loopmon.new_event_loop``, or their own ``loopmon.install()``) are
caught by wrapping ``loopmon.new_event_loop`` for the run.  (A program that installs some
other policy, or passes another ``loop_factory``, runs unmonitored; that is its right.)

Options that configure the monitor inside the program travel as the environment variables
the library reads, set for the run: ``--fault`` is ``LOOPMON_FAULTS``, ``--event-budget N``
is ``LOOPMON_EVENT_BUDGET=N`` (op events/s per client, 0 = unlimited), so the option and the
variable mean exactly the same thing and the option wins over an inherited variable.  The
program's own child processes inherit them, as they would have inherited the variables.

The agent is bound *before* the program starts, so a bad ``--listen`` is a clean CLI error
and not a failure inside the program; it is closed in a ``finally`` (socket and discovery
file removed, clients told ``Goodbye``).
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import os
import runpy
import sys
from typing import Any, Callable, Iterable, Optional

from .telemetry.agent import Agent

KNOWN_FAULTS = ("cancel-drops-data", "send-keeps-buffer")
EVENT_BUDGET_ENV = "LOOPMON_EVENT_BUDGET"     # read by telemetry.event_budget.budget_from_env


def _policy_class() -> type:
    try:
        import loopmon
        return loopmon.EventLoopPolicy          # provided by the core loop
    except AttributeError:
        raise RuntimeError("loopmon.EventLoopPolicy is not available in this build") from None


def make_policy(agent: Agent) -> asyncio.AbstractEventLoopPolicy:
    """An instance of loopmon's policy that attaches every new instrumented loop to ``agent``."""
    base = _policy_class()

    class AttachingPolicy(base):  # type: ignore[misc, valid-type]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            loop = super().new_event_loop()
            monitor = getattr(loop, "monitor", None)
            if monitor is not None:
                try:
                    agent.attach(monitor)
                except Exception as exc:   # telemetry must never break the program
                    print(f"loopmon: cannot attach the loop to the agent: {exc}",
                          file=sys.stderr)
            return loop

    return AttachingPolicy()


def _hook_loop_factories(agent: Agent) -> Callable[[], None]:
    """Also attach loops a program makes itself: ``loop_factory=loopmon.new_event_loop``, or
    its own ``loopmon.install()`` (whose policy calls ``loopmon.policy.new_event_loop``).
    Returns a function that undoes the patch."""
    import loopmon
    import loopmon.policy as policy_mod
    original = policy_mod.new_event_loop

    @functools.wraps(original)
    def new_event_loop(*args: Any, **kwargs: Any) -> Any:
        loop = original(*args, **kwargs)
        monitor = getattr(loop, "monitor", None)
        if monitor is not None:
            try:
                agent.attach(monitor)
            except Exception:       # telemetry must never break the program
                pass
        return loop

    saved = (loopmon.__dict__.get("new_event_loop"), policy_mod.new_event_loop)
    loopmon.new_event_loop = new_event_loop
    policy_mod.new_event_loop = new_event_loop

    def restore() -> None:
        if saved[0] is not None:
            loopmon.new_event_loop = saved[0]
        policy_mod.new_event_loop = saved[1]
    return restore


def start_agent(*, listen: Optional[str] = None, listen_any: bool = False,
                record: Optional[str] = None, sample_ms: float = 50.0,
                argv: Optional[list[str]] = None) -> Agent:
    return Agent(listen=listen, listen_any=listen_any, record=record,
                 sample_period=sample_ms / 1000.0, argv=argv).start()


def run_program(*, script: Optional[str] = None, module: Optional[str] = None,
                args: Iterable[str] = (), listen: Optional[str] = None, listen_any: bool = False,
                record: Optional[str] = None, sample_ms: float = 50.0,
                faults: Iterable[str] = (), event_budget: Optional[int] = None) -> Any:
    """Run the program in this process.  Returns normally, or lets its exceptions through.

    ``event_budget``: op events/s streamed to each client, 0 = unlimited; None leaves
    ``LOOPMON_EVENT_BUDGET`` (or the default) in charge.
    """
    args = list(args)
    faults = list(faults)
    if event_budget is not None:
        if type(event_budget) is not int or event_budget < 0:
            raise ValueError(f"event_budget must be an int >= 0 (0 = unlimited), "
                             f"not {event_budget!r}")
        os.environ[EVENT_BUDGET_ENV] = str(event_budget)
    if faults:
        os.environ["LOOPMON_FAULTS"] = ",".join(faults)
    if script is not None:
        argv = [script] + args
    else:
        argv = [module or ""] + args           # runpy replaces argv[0] by the module's path
    agent = start_agent(listen=listen, listen_any=listen_any, record=record,
                        sample_ms=sample_ms, argv=argv)
    restore = _hook_loop_factories(agent)
    try:
        asyncio.set_event_loop_policy(make_policy(agent))
        sys.argv = argv
        if script is not None:
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            runpy.run_path(script, run_name="__main__")
        else:
            sys.path[0] = os.getcwd()
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        restore()
        try:
            agent.close("program exited")
        finally:
            try:
                sys.stdout.flush()
            except Exception:
                pass


def serve(*, listen: Optional[str] = None, listen_any: bool = False,
          record: Optional[str] = None, sample_ms: float = 50.0,
          install_policy: bool = True) -> Agent:
    """Start the agent from inside a program (the code alternative to ``loopmon run``).

    Attaches the running loop's monitor if called from an instrumented loop; with
    ``install_policy`` (the default) loops created later through asyncio's policy are
    instrumented and attached too.  The agent closes at interpreter exit.
    """
    agent = start_agent(listen=listen, listen_any=listen_any, record=record,
                        sample_ms=sample_ms, argv=list(sys.argv))
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and getattr(running, "monitor", None) is not None:
        agent.attach(running.monitor)
    if install_policy:
        asyncio.set_event_loop_policy(make_policy(agent))
    atexit.register(agent.close, "program exited")
    return agent
