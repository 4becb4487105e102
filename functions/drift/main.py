"""The functions-framework target of the drift function.

Served by ``functions-framework --source functions/drift/main.py --target handle``.
"""

from falaj.function import entrypoint
from functions.drift.function import DriftFunction

handle = entrypoint(DriftFunction)
