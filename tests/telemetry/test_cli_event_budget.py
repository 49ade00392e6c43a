"""``loopmon run --event-budget N``: the per-client op-event budget, set from the command line.

The option is ``LOOPMON_EVENT_BUDGET=N`` for the run (``loopmon/runner.py``), so both mean
the same (op events/s per client, 0 = unlimited) and the option wins over an inherited
variable.  Real ``python -m loopmon run`` children; the budget is read back where a client
sees it: the ``event_budget`` counter of its Samples (absent when unlimited, because then no
events are thinned).
"""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from loopmon import client as lmclient
from loopmon.telemetry.messages import OpEvents, Sample
from telemetry_helpers import REPO, WORKLOAD, child_env, run_async, wait_discovered

pytestmark = pytest.mark.timeout(120)


def _samples_and_events(pid: int, n_samples: int = 3) -> tuple[list[Sample], int]:
    """Connect to ``pid`` and read until ``n_samples`` live Samples: (those, op events seen)."""
    async def collect() -> tuple[list[Sample], int]:
        c = await lmclient.connect(pid)
        samples: list[Sample] = []
        events = 0
        try:
            async def read() -> None:
                nonlocal events
                async for msg in c:
                    if isinstance(msg, Sample):
                        samples.append(msg)
                        if len(samples) >= n_samples:
                            return
                    elif isinstance(msg, OpEvents):
                        events += len(msg.events)
            await asyncio.wait_for(read(), 30)
        finally:
            await c.close()
        return samples, events
    return run_async(collect(), timeout=60)


@pytest.mark.parametrize("option, env_value, expected", [
    ("1234", "99999", 1234),     # the option wins over an inherited LOOPMON_EVENT_BUDGET
    ("0", "500", 0),             # 0 = unlimited, as for the variable
    (None, "777", 777),          # no option: the variable still decides
], ids=["option-wins", "zero-is-unlimited", "env-alone"])
def test_run_event_budget_reaches_each_client(children, option, env_value, expected):
    run_opts = ("--event-budget", option) if option is not None else ()
    p = children.workload("--duration", "30", run_opts=run_opts,
                          env=child_env(LOOPMON_EVENT_BUDGET=env_value))
    wait_discovered(p.pid)
    samples, events = _samples_and_events(p.pid)
    last = samples[-1].counters
    if expected:
        assert last["event_budget"] == expected, last
        assert "events_omitted" in last
    else:                                   # unlimited: nothing is thinned, nothing counted
        assert "event_budget" not in last and "events_omitted" not in last, last
    assert events > 0                       # the workload's echo traffic streams either way
    p.kill()


def test_run_event_budget_with_module_and_equals_form(children, tmp_path):
    """``--event-budget=N`` and ``--event-budget N -m module``: N is never taken for the program."""
    (tmp_path / "budget_probe.py").write_text(
        "import os, sys\nprint(os.environ.get('LOOPMON_EVENT_BUDGET'), sys.argv[1:])\n")
    env = child_env()
    env["PYTHONPATH"] = str(tmp_path) + ":" + env["PYTHONPATH"]
    for opts in (["--event-budget", "42", "-m", "budget_probe", "a"],
                 ["--event-budget=42", "-m", "budget_probe", "a"]):
        r = subprocess.run([sys.executable, "-m", "loopmon", "run", *opts], env=env,
                           capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "42 ['a']", (opts, r.stdout, r.stderr)


@pytest.mark.parametrize("value, message", [
    ("-1", "must be 0 (unlimited) or more: '-1'"),
    ("abc", "not a whole number of events per second: 'abc'"),
    ("1.5", "not a whole number of events per second: '1.5'"),
    ("", "not a whole number of events per second: ''"),
])
def test_bad_event_budget_is_a_one_line_error_and_the_program_never_runs(value, message):
    r = subprocess.run([sys.executable, "-m", "loopmon", "run", "--event-budget", value,
                        str(WORKLOAD), "--duration", "0.1"], env=child_env(),
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert r.returncode == 2
    assert r.stdout == ""                   # the workload would have printed "ready"
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert errors == [f"loopmon run: error: argument --event-budget: {message}"
                      + (" (0 = unlimited)" if "whole number" in message else "")], r.stderr


def test_run_help_documents_event_budget():
    r = subprocess.run([sys.executable, "-m", "loopmon", "run", "--help"], env=child_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--event-budget N" in text
    assert "op events per second streamed to each client" in text
    assert "0 = unlimited" in text and "$LOOPMON_EVENT_BUDGET" in text
