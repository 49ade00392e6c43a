"""Build hook for the optional C speedups; all other metadata lives in pyproject.toml.

``_loopmon_speedups`` (loopmon/monitor/_speedups.c) is the Monitor's hot path.  It is
``optional``: where no C compiler is available the install still succeeds and loopmon runs
its pure-Python core (``loopmon.monitor.core_py``), slower but identical in behaviour.
``python -c "import loopmon.monitor as m; print(m.IMPLEMENTATION)"`` says which one runs.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("_loopmon_speedups", ["loopmon/monitor/_speedups.c"],
                             depends=["loopmon/monitor/_drain_window.h"],
                             optional=True)])
