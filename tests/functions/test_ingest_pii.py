"""PII never leaks: not to a store, the quarantine, a log line, an event or the audit log.

The schema here adds three columns marked ``pii: true`` to the demo's: a card
holder's name, title and IBAN. Every PII value in the files is a distinctive
string, and every byte ingest writes is searched for them.

One exception, by decision: a file that cannot be read at all is copied whole
to ``<quarantine>/<key>-<version>.original``, raw, because it cannot be parsed to
find its PII columns and it is the evidence of what came; it stays in-region
like the landing bucket it came from. Everything ingest parses is pseudonymized
before it is written anywhere, quarantined rows included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import structlog
import yaml

from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.events import DataIngested, DataRejected, EventType
from falaj.schema import DATASETS_DIR
from falaj.settings import PROJECT_ROOT, Settings
from functions.ingest.function import STREAM_QUARANTINE
from functions.ingest.pii import pii_key, token
from tests.functions.test_ingest import CapturingIngest, created, land, offline_files
from tests.functions.test_ingest_stream import record as stream_record

pytestmark = pytest.mark.timeout(120)

#: Every PII value below contains one of these; none may appear outside the landed files.
MARKERS = ("PIINAME", "PIIBAN", "PIITITLE")
TOKEN = re.compile(r"^pii_[0-9a-f]{32}$")
ROWS = 30


@pytest.fixture
def pii_ctx(tmp_path: Path) -> Context:
    """A platform whose schema has the demo's columns and three PII ones."""
    demo = PROJECT_ROOT / "feature_repo" / DATASETS_DIR / "transactions.yaml"
    contract = yaml.safe_load(demo.read_text())
    contract["columns"] += [
        {"name": "holder_name", "dtype": "string", "pii": True},
        {"name": "holder_title", "dtype": "string", "allowed": ["mr", "ms", "dr"], "pii": True},
        {"name": "iban", "dtype": "string", "nullable": True, "pii": True},
    ]
    repo = tmp_path / "feature_repo"
    (repo / DATASETS_DIR).mkdir(parents=True)
    (repo / DATASETS_DIR / "transactions.yaml").write_text(yaml.safe_dump(contract))
    return Context.create(Settings(home=tmp_path / ".falaj", feature_repo=repo), actor="test")


@pytest.fixture
def function(pii_ctx: Context) -> Iterator[CapturingIngest]:
    started = CapturingIngest()
    started.start(pii_ctx)
    try:
        yield started
    finally:
        started.stop()


def with_pii(n: int, *, seed: int) -> pd.DataFrame:
    rows = generate_transactions(n, seed=seed, cards=n).astype(str)
    rows["card_id"] = [f"card-{i:03d}" for i in range(n)]
    rows["holder_name"] = [f"Holder PIINAME-{seed}-{i:03d}" for i in range(n)]
    rows["holder_title"] = ["mr", "ms", "dr"] * (n // 3) + ["mr"] * (n % 3)
    rows["iban"] = [f"AE07PIIBAN{seed}{i:013d}" for i in range(n)]
    return rows


def leaks(text: str) -> list[str]:
    return [marker for marker in MARKERS if marker in text]


def test_pii_reaches_no_store_quarantine_log_event_or_audit_entry(
    pii_ctx: Context,
    function: CapturingIngest,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ctx = pii_ctx
    rows = with_pii(ROWS, seed=1)
    rows.loc[5, "amount"] = "-1"  # a bad row whose PII is valid
    rows.loc[9, "holder_title"] = "PIITITLE-sir"  # a bad PII value: its reason must not quote it
    rows.loc[13, "holder_name"] = "  "  # a PII value missing
    rows.loc[17, ["card_id", "event_timestamp"]] = rows.loc[2, ["card_id", "event_timestamp"]]
    lines = rows.to_csv(index=False).splitlines()
    lines[22] = "card-x,Holder PIINAME-1-ragged,AE07PIIBAN"  # row 22: a line that does not split
    land(ctx, "day1.csv", ("\n".join(lines) + "\n").encode())
    # A file refused whole, PII in it: its reason says why without quoting a row.
    land(ctx, "day2.csv", (lines[0] + "\ncard-y,Holder PIINAME-2-x\n").encode())

    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logged:
        function.handle(created(ctx, "day1.csv"))
        function.handle(created(ctx, "day2.csv"))

    (ingested_type, ingested), (rejected_type, rejected) = function.emitted
    assert ingested_type is EventType.DATA_INGESTED and isinstance(ingested, DataIngested)
    assert rejected_type is EventType.DATA_REJECTED and isinstance(rejected, DataRejected)
    assert (ingested.rows_ingested, ingested.rows_quarantined) == (ROWS - 5, 5)
    assert "none of its 1 rows could be split" in rejected.reason

    # The stores hold tokens: the same card, the same token (joins and counts still work).
    stored = pd.concat(pd.read_parquet(p) for p in offline_files(ctx))
    for column in ("holder_name", "holder_title", "iban"):
        assert stored[column].str.match(TOKEN).all(), column
    assert stored["holder_name"].nunique() == ROWS - 5
    assert stored["holder_title"].nunique() == 3

    # The quarantine too: tokens where PII was, reasons that quote no PII value.
    assert ingested.quarantine_location is not None
    entries = [json.loads(x) for x in Path(ingested.quarantine_location).read_text().splitlines()]
    by_row = {e["row_number"]: e for e in entries}
    assert sorted(by_row) == [6, 10, 14, 18, 22]
    assert by_row[10]["reasons"] == [
        "holder_title: expected one of mr, ms, dr; got a value withheld (pii)"
    ]
    assert by_row[14]["reasons"] == ["holder_name: missing; expected a value of type string"]
    assert TOKEN.match(by_row[22]["row"]["_line"])
    for entry in (by_row[6], by_row[10], by_row[18]):
        assert all(TOKEN.match(entry["row"][c]) for c in ("holder_name", "holder_title", "iban"))
    assert by_row[6]["row"]["amount"] == "-1"  # what is not PII stays as it came
    assert by_row[6]["row"]["card_id"] == "card-005"
    # A quarantined value's token is its token in the stores (row 18 repeats row 3's holder).
    assert by_row[18]["row"]["holder_title"] in set(stored["holder_title"])

    # Every byte written under the platform's home, but the landing bucket (where the
    # files came) and the raw copy of the refused file (see the module's docstring).
    written = [
        p
        for p in ctx.paths.home.rglob("*")
        if p.is_file() and ctx.paths.landing not in p.parents and p.suffix != ".original"
    ]
    # The online store is among them, and holds the tokens where the values were.
    online = (ctx.paths.feast / "online.db").read_bytes()
    assert stored["holder_name"].iloc[0].encode() in online
    for path in written:
        found = [m for m in MARKERS if m.encode() in path.read_bytes()]
        assert not found, f"expected no PII in {path.relative_to(ctx.paths.home)}, found {found}"

    events: list[Any] = [data for _, data in function.emitted] + list(function.quality)
    for data in events:
        assert not leaks(data.model_dump_json()), f"PII in {type(data).__name__}"
    for entry in ctx.audit.entries():
        assert not leaks(json.dumps(entry)), f"PII in the audit entry {entry['action']}"
    assert logged, "expected ingest to log (ingested, rejected), captured nothing"
    for event in logged:
        assert not leaks(json.dumps(event, default=str)), f"PII in the log line {event}"
    for record in caplog.records:
        assert not leaks(record.getMessage()), f"PII in the log record {record.name}"
    out, err = capfd.readouterr()
    assert not leaks(out + err), "PII printed"


def test_a_quarantined_record_from_a_queue_holds_tokens_not_pii(
    pii_ctx: Context, function: CapturingIngest
) -> None:
    ctx = pii_ctx
    good, bad, unfit = with_pii(3, seed=4).to_dict("records")
    bad["amount"] = "-1"
    unfit.pop("amount")  # a record missing a column can never fit
    for row in (good, bad, unfit):
        function.handle(stream_record(ctx, row))
    function.roll()

    quarantined = (ctx.paths.quarantine / STREAM_QUARANTINE).read_text().splitlines()
    entries = [json.loads(line) for line in quarantined]
    assert entries[0]["reasons"] == ["amount: expected > 0, got -1"]
    assert "missing columns ['amount']" in entries[1]["reasons"][0]
    for entry in entries:
        assert all(TOKEN.match(entry["row"][c]) for c in ("holder_name", "holder_title", "iban"))
    stored = pd.concat(pd.read_parquet(p) for p in offline_files(ctx))
    assert stored["holder_name"].str.match(TOKEN).all() and len(stored) == 1
    for path in ctx.paths.home.rglob("*"):
        if path.is_file():
            found = [m for m in MARKERS if m.encode() in path.read_bytes()]
            assert not found, (
                f"expected no PII in {path.relative_to(ctx.paths.home)}, found {found}"
            )


def test_a_token_is_the_keyed_hmac_sha256_of_the_value(tmp_path: Path) -> None:
    key = pii_key(tmp_path / "keys" / "pii.key")
    assert pii_key(tmp_path / "keys" / "pii.key") == key  # created once, then read
    mac = hmac.new(key, b"Holder PIINAME-1", hashlib.sha256).hexdigest()
    assert token("Holder PIINAME-1", key) == "pii_" + mac[:32]
    assert token("Holder PIINAME-1", b"another key") != token("Holder PIINAME-1", key)
