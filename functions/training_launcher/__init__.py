"""The training launcher: events in, Ray training jobs out, each followed to its end."""

from functions.training_launcher.function import TrainingLauncherFunction

__all__ = ["TrainingLauncherFunction"]
