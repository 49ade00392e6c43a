"""Built-in workload programs for demos, screenshots and detector tests.

Each module is a plain asyncio program — ``main()`` run by ``asyncio.run`` — that knows nothing
about loopmon, so it behaves the same alone and under ``python -m loopmon run -m
loopmon.workloads.<name>``.  All traffic stays on 127.0.0.1.

* ``demo`` — echo traffic with bursts, connection churn and a slow reader (``loopmon-gui --demo``);
* ``cancel_race`` — receives cancelled while a peer streams (``--demo cancel-race``, bpo-33694);
* ``send_leak`` — sends that fail at submission (``--demo send-leak``, bpo-32710);
* ``echo`` — the plain echo handler the workloads and ``bench/echo.py`` share.
"""
