"""The functions-framework target of the rollout function.

Served by ``functions-framework --source functions/rollout/main.py --target handle``.
"""

from falaj.function import entrypoint
from functions.rollout.function import RolloutFunction

handle = entrypoint(RolloutFunction)
