"""Per-epoch ``training.progress`` from rank 0 of a Ray Train run.

The worker is a process of its own, started by Ray with the job's runtime
environment: it reads the job's settings from the ``FALAJ_*`` variables, as
the job's ``main`` does, and publishes with the job's token (from its file).
Progress is best effort: a broker that is away costs a log line, never the
run, and one failed publish turns the announcer off (so a dead broker does not
add a timeout to every epoch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from falaj.errors import FalajError
from falaj.events import EventType, TrainingProgress, TrainingStage, make_event
from falaj.logs import get_logger
from falaj.publisher import EventPublisher
from falaj.settings import Settings

#: A progress event must not hold an epoch up for long.
PUBLISH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ProgressTarget:
    """Which job's progress an epoch is: the job announces, the benchmark does not."""

    model: str
    job_id: str


class EpochAnnouncer:
    def __init__(
        self, target: ProgressTarget, *, epochs: int, environ: Mapping[str, str] | None = None
    ) -> None:
        self.target = target
        self.epochs = epochs
        self.log = get_logger(job_id=target.job_id, model=target.model)
        self._publisher: EventPublisher | None = None
        self._region = ""
        try:
            settings = Settings.from_env(os.environ if environ is None else environ)
            self._region = settings.region
            self._publisher = EventPublisher.from_settings(settings, timeout_s=PUBLISH_TIMEOUT_S)
        except FalajError as exc:
            self.log.warning("training.progress_off", error=str(exc))

    def epoch_done(self, epoch: int, train_loss: float) -> None:
        if self._publisher is None:
            return
        data = TrainingProgress(
            model=self.target.model,
            job_id=self.target.job_id,
            stage=TrainingStage.TRAINING,
            epoch=epoch,
            epochs=self.epochs,
            train_loss=train_loss,
        )
        try:
            self._publisher.publish(
                make_event(
                    EventType.TRAINING_PROGRESS,
                    data,
                    region=self._region,
                    subject=self.target.model,
                )
            )
        except Exception as exc:
            self.log.warning("training.progress_off", epoch=epoch, error=str(exc))
            self.close()

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
