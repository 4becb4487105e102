"""The functions-framework target of the training launcher.

Served by ``functions-framework --source functions/training_launcher/main.py --target handle``.
"""

from falaj.function import entrypoint
from functions.training_launcher.function import TrainingLauncherFunction

handle = entrypoint(TrainingLauncherFunction)
