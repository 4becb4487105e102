"""The training launcher: events in, one Ray training job at a time per model."""

from functions.training_launcher.function import TrainingLauncherFunction
from functions.training_launcher.jobs import TrainingJobs, TrainingRequest, TrainingRun

__all__ = ["TrainingJobs", "TrainingLauncherFunction", "TrainingRequest", "TrainingRun"]
