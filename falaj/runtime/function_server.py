"""A function's container command, served over TLS on one machine.

    python -m falaj.runtime.function_server --source=functions/ingest/main.py \\
        --target=handle --signature-type=cloudevent --host=127.0.0.1 --port=8091

functions-framework's CLI has no TLS options (on a cluster the mesh encrypts
between pods). With ``FALAJ_TLS_CERT_FILE`` and ``FALAJ_TLS_KEY_FILE`` set,
``falaj up`` runs a Knative Service's ``functions-framework`` command through
this module instead: the same flags parsed by functions-framework's own command
(so every flag and environment variable it knows means the same), the same
``create_app`` and server, with the certificate and key handed to gunicorn.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import functions_framework
from functions_framework._cli import _cli as functions_framework_command
from functions_framework._http import create_server

from falaj.errors import ConfigError
from falaj.settings import Settings
from falaj.tls import listener_files

#: The container command this module stands in for.
COMMAND = "functions-framework"


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_env(os.environ)
    files = listener_files(settings)
    if files is None:
        raise ConfigError(
            "falaj.runtime.function_server serves TLS: set FALAJ_TLS_CERT_FILE and "
            f"FALAJ_TLS_KEY_FILE, or run '{COMMAND}' itself for plain HTTP"
        )
    given = sys.argv[1:] if argv is None else list(argv)
    parsed = functions_framework_command.make_context(COMMAND, given).params
    if parsed["asgi"]:
        raise ConfigError(f"{COMMAND} --asgi: Falaj's functions are Flask (WSGI) apps")
    app = functions_framework.create_app(
        parsed["target"], parsed["source"], parsed["signature_type"]
    )
    certfile, keyfile = files
    server = create_server(app, parsed["debug"], certfile=str(certfile), keyfile=str(keyfile))
    server.run(parsed["host"], parsed["port"])


if __name__ == "__main__":
    main()
