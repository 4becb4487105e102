"""The functions-framework target of the ingest function.

Served by ``functions-framework --source functions/ingest/main.py --target handle
--signature-type cloudevent``.
"""

from falaj.function import entrypoint
from functions.ingest.function import IngestFunction

handle = entrypoint(IngestFunction)
