"""Payload logging, like KServe's logger: every prediction becomes an event.

The router hands each successful prediction (the raw request and response
bodies) to ``PayloadLogger.submit``, which only enqueues it: decoding, building
the ``inference.logged`` CloudEvent and posting it to the broker happen on one
background thread, off the request path. The queue is bounded; when it is full,
or the broker is down, the prediction still succeeds and the loss is counted
and logged, never raised to the caller.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent

from falaj.errors import FalajError
from falaj.events import EventType, InferenceLogged, make_event
from falaj.logs import get_logger
from falaj.publisher import EventPublisher
from inference.binary_tensors import read_body
from inference.errors import InvalidPayload
from inference.inputs import (
    OUTPUT_NAME,
    Matrix,
    feature_columns,
    matrix_from_instances,
    matrix_from_tensors,
    tensor_from_json,
)

DEFAULT_CAPACITY = 1000
#: Predictions sent to the broker in one batched request. One request per
#: prediction cost the router ~40% of its CPU (py-spy), contending with the
#: request path for the GIL.
MAX_BATCH = 200
#: How long the worker waits for a batch to fill after its first prediction:
#: the delay of the payload log, never of a prediction.
LINGER_S = 0.05


class Protocol(StrEnum):
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class Prediction:
    """One successful prediction, as it went through the router."""

    model: str
    version: int
    variant: str
    protocol: Protocol
    request: bytes
    response: bytes
    #: The id the router gave the request (``x-falaj-inference-id``): outcomes refer to it.
    inference_id: str = ""
    #: ``inference-header-content-length`` of a binary V2 request and response.
    request_header_length: int | None = None
    response_header_length: int | None = None


@dataclass
class PayloadStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    skipped: int = 0


def decode(prediction: Prediction, features: tuple[str, ...]) -> InferenceLogged:
    """The event data of one prediction: inputs by feature name, one output per row."""
    try:
        if prediction.protocol is Protocol.V1:
            request: Any = json.loads(prediction.request)
            response: Any = json.loads(prediction.response)
        else:
            request = read_body(prediction.request, prediction.request_header_length, "inputs")
            response = read_body(prediction.response, prediction.response_header_length, "outputs")
    except ValueError:
        raise InvalidPayload("the request or response is neither JSON nor binary V2") from None
    matrix: Matrix
    try:
        if prediction.protocol is Protocol.V1:
            matrix = matrix_from_instances(request.get("instances"), features)
            outputs = [float(v) for v in np.asarray(response["predictions"]).reshape(-1)]
        else:
            matrix = matrix_from_tensors(
                [tensor_from_json(raw) for raw in request.get("inputs") or []], features
            )
            (output,) = [o for o in response["outputs"] if o.get("name") == OUTPUT_NAME]
            outputs = [float(v) for v in np.asarray(output["data"]).reshape(-1)]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        # The predictor answered 2xx, so this is a body no KServe client sends.
        raise InvalidPayload(
            f"expected a {prediction.protocol} request with {', '.join(features)} and its "
            f"answer; got another shape ({type(exc).__name__})"
        ) from None
    return InferenceLogged(
        inference_id=prediction.inference_id or str(uuid.uuid4()),
        model=prediction.model,
        version=prediction.version,
        variant=prediction.variant,
        inputs=feature_columns(matrix, features),
        outputs=outputs,
    )


class PayloadLogger:
    def __init__(
        self,
        publisher: EventPublisher,
        *,
        region: str,
        features: Callable[[str, int], tuple[str, ...]],
        capacity: int = DEFAULT_CAPACITY,
        on_logged: Callable[[InferenceLogged], None] | None = None,
    ) -> None:
        self.publisher = publisher
        #: Called on the worker thread with each decoded prediction (the router's metrics).
        self._on_logged = on_logged
        self.region = region
        self._features = features
        # A version's feature names never change once it is registered.
        self._feature_names: dict[tuple[str, int], tuple[str, ...]] = {}
        self._queue: queue.Queue[Prediction | None] = queue.Queue(maxsize=capacity)
        self.stats = PayloadStats()
        self._thread: threading.Thread | None = None
        self.log = get_logger(component="router.payload-log")

    def submit(self, prediction: Prediction) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(prediction)
        except queue.Full:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                self.log.warning("payload.dropped", dropped=self.stats.dropped)
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (within ``timeout_s``), then stop the worker."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            self.log.warning("payload.stop.queue-full", pending=self._queue.qsize())
        self._thread.join(timeout=timeout_s)
        self.publisher.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # Block for the first prediction, then gather for LINGER_S.
            batch = [self._queue.get()]
            deadline = time.monotonic() + LINGER_S
            while len(batch) < MAX_BATCH and batch[-1] is not None:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=max(remaining, 0.0)))
                except queue.Empty:
                    break
            stopping = None in batch
            self._send([p for p in batch if p is not None])

    def _send(self, predictions: list[Prediction]) -> None:
        events = [event for p in predictions if (event := self._event(p)) is not None]
        if not events:
            return
        try:
            self.publisher.publish_batch(events)
        except FalajError as exc:
            self.stats.failed += len(events)
            self.log.error("payload.failed", failed=self.stats.failed, error=str(exc))
            return
        self.stats.sent += len(events)

    def _event(self, prediction: Prediction) -> CloudEvent | None:
        try:
            data = decode(prediction, self._features_of(prediction.model, prediction.version))
        except (FalajError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.stats.skipped += 1
            self.log.warning(
                "payload.skipped",
                model=prediction.model,
                version=prediction.version,
                error=f"{type(exc).__name__}: {exc}",
            )
            return None
        if self._on_logged is not None:
            self._on_logged(data)
        return make_event(
            EventType.INFERENCE_LOGGED,
            data,
            region=self.region,
            subject=f"{prediction.model}/{prediction.version}",
        )

    def _features_of(self, model: str, version: int) -> tuple[str, ...]:
        key = (model, version)
        if key not in self._feature_names:
            self._feature_names[key] = self._features(model, version)
        return self._feature_names[key]
