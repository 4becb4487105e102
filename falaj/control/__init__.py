"""The control API and dashboard: one place that shows the whole loop (``falaj up``, port 8090).

    python -m falaj.control            (FALAJ_* settings; listens on host:control_port)

Pages for people (login by token, a session cookie) and the same views as JSON
under ``/api`` for scripts (``Authorization: Bearer``). What a role sees and
may press follows the access table in ``falaj.auth``.
"""
