"""The drift function: windows, every statistic against the stored profile, the policy."""

from __future__ import annotations

import dataclasses
import http.server
import json
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary
from onnx import TensorProto, helper

from falaj.auth import Role
from falaj.context import Context
from falaj.drift_history import DriftHistory
from falaj.drift_policy import DriftPolicy
from falaj.errors import EventError, RegistryError, SignatureInvalid
from falaj.events import (
    DriftDetected,
    EventData,
    EventType,
    InferenceLogged,
    ParsedEvent,
    make_event,
    parse_event,
)
from falaj.profile import PREDICTION, ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.runtime.processes import free_port
from falaj.settings import Settings
from functions.drift.function import DriftFunction
from functions.drift.store import WindowStore
from tests.support.functions import start_function

WINDOW = 400
BATCH = 100


def tiny_onnx() -> bytes:
    """A logistic regression over (amount, hour)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [0.5, -0.25])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def training_columns(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    return {"amount": rng.normal(100.0, 10.0, rows), "hour": rng.uniform(0.0, 24.0, rows)}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / ".falaj", drift_window=WINDOW, drift_cooldown_s=60.0)


@pytest.fixture
def registered(ctx: Context) -> int:
    rng = np.random.default_rng(0)
    profile = ReferenceProfile.from_columns(
        training_columns(rng, 2000), predictions=rng.uniform(0.0, 0.2, 2000)
    )
    entry = ModelRegistry(ctx).register(
        "fraud",
        onnx_bytes=tiny_onnx(),
        profile=profile,
        metrics={"auc": 0.9},
        lineage={"training_job_id": "job-1"},
        feature_names=("amount", "hour"),
    )
    return entry.version


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class CapturingDrift(DriftFunction):
    """The real function, with what it emits kept instead of sent to a broker."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.emitted: list[tuple[EventType, EventData]] = []

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        self.emitted.append((event_type, data))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def drift(ctx: Context, registered: int, clock: Clock) -> Iterator[CapturingDrift]:
    function = CapturingDrift(clock)
    function.start(ctx)
    yield function
    function.stop()


def logged(ctx: Context, inputs: dict[str, np.ndarray], *, version: int = 1) -> ParsedEvent:
    rows = len(next(iter(inputs.values())))
    data = InferenceLogged(
        inference_id=str(uuid.uuid4()),
        model="fraud",
        version=version,
        variant="stable",
        inputs={name: [float(v) for v in values] for name, values in inputs.items()},
        outputs=[0.1] * rows,
    )
    event = make_event(EventType.INFERENCE_LOGGED, data, region=ctx.settings.region)
    return parse_event(event, ctx.policy)


def feed(function: DriftFunction, ctx: Context, rng: np.random.Generator, *, shift: float) -> None:
    """One window's worth of batches; ``shift`` moves the amount distribution."""
    for _ in range(WINDOW // BATCH):
        columns = training_columns(rng, BATCH)
        columns["amount"] = columns["amount"] + shift
        function.handle(logged(ctx, columns))


def window_rows(ctx: Context, version: int = 1) -> int:
    return WindowStore(DriftHistory(ctx.paths.drift)).state("fraud", version).rows


def history(ctx: Context) -> DriftHistory:
    return DriftHistory(ctx.paths.drift)


def drift_audits(ctx: Context) -> list[dict[str, object]]:
    return [e for e in ctx.audit.entries() if e["action"] == "drift.detected"]


def test_window_fills_then_scores_without_alert_when_stable(
    drift: CapturingDrift, ctx: Context
) -> None:
    rng = np.random.default_rng(1)
    for filled in range(1, WINDOW // BATCH):
        drift.handle(logged(ctx, training_columns(rng, BATCH)))
        assert window_rows(ctx) == filled * BATCH
        assert history(ctx).windows("fraud") == []
    drift.handle(logged(ctx, training_columns(rng, BATCH)))

    [window] = history(ctx).windows("fraud")
    assert (window.version, window.rows, window.alerted) == (1, WINDOW, False)
    assert set(window.scores) == {"amount", "hour", PREDICTION}
    for feature in ("amount", "hour", PREDICTION):
        assert set(window.scores[feature]) == {"psi", "ks", "wasserstein"}
    ks_value, ks_p_value, ks_drifted = window.scores["amount"]["ks"]
    assert 0 < ks_value < 0.1 and ks_p_value is not None and ks_p_value > 0.01
    assert not ks_drifted
    assert window.drifted_features() == []
    assert window_rows(ctx) == 0
    assert drift.emitted == []
    assert drift_audits(ctx) == []


def test_drift_is_announced_once_per_cooldown(
    drift: CapturingDrift, ctx: Context, clock: Clock
) -> None:
    rng = np.random.default_rng(2)
    feed(drift, ctx, rng, shift=40.0)
    assert len(drift.emitted) == 1
    event_type, data = drift.emitted[0]
    assert event_type == EventType.DRIFT_DETECTED
    assert isinstance(data, DriftDetected)
    assert data.drifted_features == ["amount"]
    assert data.threshold == ctx.settings.drift_thresholds["psi"]
    assert data.scores["amount"] > data.threshold
    assert {(f.feature, f.statistic) for f in data.findings} == {
        ("amount", "psi"),
        ("amount", "ks"),
        ("amount", "wasserstein"),
    }
    assert data.window_size == WINDOW
    assert (data.model, data.version) == ("fraud", 1)

    clock.now += 30.0  # inside the cool-down: scored, stored, not announced again
    feed(drift, ctx, rng, shift=40.0)
    assert len(drift.emitted) == 1
    first, second = history(ctx).windows("fraud")
    assert first.alerted and not second.alerted
    assert second.held_back.startswith("cooling down")
    assert second.drifted_features() == ["amount"]

    clock.now += 31.0  # past the cool-down
    feed(drift, ctx, rng, shift=40.0)
    assert len(drift.emitted) == 2
    audits = drift_audits(ctx)
    assert len(audits) == 2
    assert audits[0]["resource"] == "model/fraud/1"
    assert audits[0]["actor"] == "test"


def test_window_and_cooldown_survive_a_restart(ctx: Context, registered: int, clock: Clock) -> None:
    rng = np.random.default_rng(3)
    first = CapturingDrift(clock)
    first.start(ctx)
    feed(first, ctx, rng, shift=40.0)
    assert len(first.emitted) == 1
    first.handle(logged(ctx, training_columns(rng, BATCH)))
    first.stop()

    second = CapturingDrift(clock)
    second.start(ctx)
    assert window_rows(ctx) == BATCH
    clock.now += 1.0
    feed(second, ctx, rng, shift=40.0)  # closes the window the first instance began
    second.stop()
    assert [w.rows for w in history(ctx).windows("fraud")] == [WINDOW, WINDOW]
    assert second.emitted == []  # the cool-down outlived the restart


def test_a_redelivered_event_is_counted_once(drift: CapturingDrift, ctx: Context) -> None:
    event = logged(ctx, training_columns(np.random.default_rng(4), BATCH))
    drift.handle(event)
    drift.handle(event)
    assert window_rows(ctx) == BATCH


def test_profile_is_verified_once_and_reused(drift: CapturingDrift, ctx: Context) -> None:
    rng = np.random.default_rng(5)
    drift.handle(logged(ctx, training_columns(rng, BATCH)))
    # Tampering after the profile was verified and cached does not change the
    # reference mid-stream; a fresh instance refuses the tampered version.
    metadata = ctx.paths.registry / "fraud" / "1" / "metadata.json"
    metadata.write_text(metadata.read_text().replace('"auc": 0.9', '"auc": 0.99'))
    drift.handle(logged(ctx, training_columns(rng, BATCH)))
    assert window_rows(ctx) == 2 * BATCH
    fresh = CapturingDrift(Clock())
    fresh.start(ctx)
    with pytest.raises(SignatureInvalid, match="signature check"):
        fresh.handle(logged(ctx, training_columns(rng, BATCH)))
    fresh.stop()
    assert window_rows(ctx) == 2 * BATCH


def test_unknown_version_is_refused_before_anything_is_stored(
    drift: CapturingDrift, ctx: Context
) -> None:
    with pytest.raises(RegistryError, match="known versions: 1"):
        drift.handle(logged(ctx, training_columns(np.random.default_rng(6), BATCH), version=9))
    assert window_rows(ctx, version=9) == 0


def test_ragged_batch_is_refused(drift: CapturingDrift, ctx: Context) -> None:
    with pytest.raises(EventError, match="equal-length"):
        drift.handle(logged(ctx, {"amount": np.ones(3), "hour": np.ones(2)}))
    assert window_rows(ctx) == 0


def test_a_shift_on_one_feature_is_named_within_two_windows(
    drift: CapturingDrift, ctx: Context
) -> None:
    rng = np.random.default_rng(11)
    feed(drift, ctx, rng, shift=0.0)
    # A moderate shift (half a standard deviation) of the amount alone.
    for _ in range(2):
        feed(drift, ctx, rng, shift=5.0)
        if drift.emitted:
            break
    [(_, data)] = drift.emitted
    assert isinstance(data, DriftDetected)
    assert data.drifted_features == ["amount"]
    windows = history(ctx).windows("fraud")
    assert windows[0].drifted_features() == []
    assert "hour" not in data.drifted_features


def test_ten_windows_of_unshifted_traffic_raise_nothing(
    drift: CapturingDrift, ctx: Context
) -> None:
    rng = np.random.default_rng(12)
    for _ in range(10):
        feed(drift, ctx, rng, shift=0.0)
    windows = history(ctx).windows("fraud")
    assert len(windows) == 10
    assert [w.drifted_features() for w in windows] == [[]] * 10
    assert drift.emitted == []
    assert drift_audits(ctx) == []


def test_a_window_closes_by_age_and_too_few_rows_never_alert(
    ctx: Context, registered: int, clock: Clock
) -> None:
    timed = ctx.settings.model_copy(update={"drift_window_s": 60.0, "drift_min_samples": 150})
    ctx = dataclasses.replace(ctx, settings=timed)
    function = CapturingDrift(clock)
    function.start(ctx)
    try:
        rng = np.random.default_rng(13)
        shifted = training_columns(rng, BATCH)
        shifted["amount"] = shifted["amount"] + 40.0
        function.handle(logged(ctx, shifted))
        assert history(ctx).windows("fraud") == []
        clock.now += 61.0  # the window's first row is now older than drift_window_s
        function.handle(logged(ctx, {"amount": np.full(10, 140.0), "hour": np.full(10, 12.0)}))
        [window] = history(ctx).windows("fraud")
        assert window.rows == BATCH + 10
        assert window.drifted_features() == ["amount"]
        assert not window.alerted
        assert window.held_back == f"{BATCH + 10} rows < minimum 150"
        assert function.emitted == []
    finally:
        function.stop()


def test_categorical_features_are_scored_by_chi_square_and_jensen_shannon(
    ctx: Context, clock: Clock
) -> None:
    rng = np.random.default_rng(14)
    profile = ReferenceProfile.from_columns(
        {"amount": rng.normal(100.0, 10.0, 2000), "hour": rng.integers(0, 24, 2000)},
        categorical=["hour"],
    )
    ModelRegistry(ctx).register(
        "fraud",
        onnx_bytes=tiny_onnx(),
        profile=profile,
        metrics={"auc": 0.9},
        lineage={"training_job_id": "job-2"},
        feature_names=("amount", "hour"),
    )
    function = CapturingDrift(clock)
    function.start(ctx)
    try:
        for _ in range(WINDOW // BATCH):
            # Night hours only: a categorical shift the amount does not share.
            columns = {"amount": rng.normal(100.0, 10.0, BATCH), "hour": rng.integers(0, 6, BATCH)}
            function.handle(logged(ctx, columns))
    finally:
        function.stop()
    [window] = history(ctx).windows("fraud")
    assert set(window.scores["hour"]) == {"psi", "chi_square", "jensen_shannon"}
    assert window.drifted_features() == ["hour"]
    [(_, data)] = function.emitted
    assert isinstance(data, DriftDetected)
    assert {f.statistic for f in data.findings} == {"psi", "chi_square", "jensen_shannon"}


def test_a_window_another_writer_closed_is_read_back_not_taken_from_memory(
    ctx: Context,
) -> None:
    first = WindowStore(DriftHistory(ctx.paths.drift))
    second = WindowStore(DriftHistory(ctx.paths.drift))

    def add(store: WindowStore, event: str, value: float) -> None:
        store.append("fraud", 1, event, {"amount": [value] * 5}, [None] * 5, now=0.0)

    add(first, "e1", 1.0)
    add(second, "e2", 2.0)
    window = second.window("fraud", 1)
    second.close_window(
        "fraud",
        1,
        window_end="t1",
        rows=window.rows,
        scores={},
        verdict=DriftPolicy(thresholds={"psi": 0.2}, min_samples=1, cooldown_s=0).verdict(
            {}, rows=window.rows, now=0.0, last_alert=None
        ),
        alerted_at=None,
    )
    add(first, "e3", 3.0)  # the first store's copy still holds e1, which was scored
    add(second, "e4", 4.0)
    assert sorted(set(first.window("fraud", 1).columns["amount"])) == [3.0, 4.0]


def test_a_first_format_history_is_carried_over(ctx: Context) -> None:
    import sqlite3

    ctx.paths.drift.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(ctx.paths.drift / "drift.db") as old:
        old.execute(
            "CREATE TABLE scores (model TEXT, version INTEGER, window_end TEXT, feature TEXT, "
            "score REAL, window_rows INTEGER)"
        )
        old.execute(
            "INSERT INTO scores VALUES ('fraud', 1, '2026-01-01T00:00:00', 'amount', 0.3, 200)"
        )
    [window] = history(ctx).windows("fraud")
    assert window.rows == 200
    assert window.scores == {"amount": {"psi": (0.3, None, False)}}


@dataclass
class Receiver:
    """A stand-in broker ingress that keeps every CloudEvent posted to it."""

    port: int
    received: queue.Queue[tuple[str, dict[str, object]]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received: queue.Queue[tuple[str, dict[str, object]]] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put((self.headers["ce-type"], json.loads(body)))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(port=server.server_address[1], received=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_served_by_functions_framework_emits_to_the_broker(
    ctx: Context, registered: int, receiver: Receiver, tmp_path: Path
) -> None:
    token = ctx.tokens.issue("drift-test", Role.SERVICE)
    served = ctx.settings.model_copy(update={"broker_port": receiver.port, "token": token})
    process, url = start_function("drift", served, tmp_path)
    try:
        rng = np.random.default_rng(7)
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            for _ in range(WINDOW // BATCH):
                columns = training_columns(rng, BATCH)
                columns["amount"] = columns["amount"] + 40.0
                event = logged(ctx, columns).event
                headers, body = to_binary(event)
                response = client.post(url, headers=headers, content=body)
                assert response.status_code == 200, response.text
            ragged = logged(ctx, {"amount": np.ones(2), "hour": np.ones(1)}).event
            headers, body = to_binary(ragged)
            refused = client.post(url, headers=headers, content=body)
            assert refused.status_code == 400
            assert "equal-length" in refused.json()["error"]
        event_type, data = receiver.received.get(timeout=30)
        assert event_type == EventType.DRIFT_DETECTED
        assert data["drifted_features"] == ["amount"]
        assert receiver.received.empty()
    finally:
        process.stop()
    assert not process.alive()
