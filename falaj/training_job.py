"""The contract between the training launcher and the training job it starts.

The job announces its own end (``training.completed`` or ``training.failed``)
and then exits. Its exit code tells the launcher whether that announcement
went out, so the launcher speaks for a job only when the job could not: killed,
out of memory, misconfigured, stopped, or lost with the Ray head.
"""

from __future__ import annotations

from enum import IntEnum


class JobExit(IntEnum):
    #: Trained, registered and announced.
    SUCCEEDED = 0
    #: Failed, and ``training.failed`` was published with the reason.
    FAILED_ANNOUNCED = 1
    #: The job's settings were unusable; nothing could be announced.
    CONFIG = 2
    #: Failed, and the broker did not take ``training.failed``.
    FAILED_UNANNOUNCED = 3


#: How many times a request is retried after its job was lost (the Ray head
#: restarted, a spot node took the driver) before it is given up as failed.
MAX_ATTEMPTS = 3
