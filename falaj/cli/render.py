"""Rich tables for the demo's final report."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from falaj.runtime.demo import DemoReport


def render_report(report: DemoReport, console: Console) -> None:
    versions = Table(title="Model versions", title_justify="left")
    for column in ("version", "AUC", "accuracy", "log-loss", "digest (sha256)", "training job"):
        versions.add_column(column)
    for v in report.versions:
        metrics = v.get("metrics", {})
        versions.add_row(
            str(v["version"]),
            _num(metrics.get("auc")),
            _num(metrics.get("accuracy")),
            _num(metrics.get("log_loss")),
            str(v.get("digest", ""))[:12],
            str(v.get("training_job_id") or ""),
        )
    console.print(versions)

    split = Table(
        title=f"Traffic split (InferenceService {report.split.get('model')})", title_justify="left"
    )
    for column in ("variant", "version", "configured", "observed"):
        split.add_column(column)
    total = sum(report.observed_split.values()) or 1
    stable = report.split.get("stable_version")
    canary = report.split.get("canary_version")
    percent = int(report.split.get("canary_percent", 0))
    for variant, version, configured in (
        ("stable", stable, 100 - percent),
        ("canary", canary, percent),
    ):
        seen = report.observed_split.get(f"v{version} ({variant})", 0)
        split.add_row(
            variant, str(version), f"{configured}%", f"{100 * seen / total:.1f}% ({seen})"
        )
    console.print(split)

    drift = Table(
        title=f"Drift (window of {report.drift.get('window_size')} requests on version "
        f"{report.drift.get('version')})",
        title_justify="left",
    )
    for column in ("feature", "PSI", "past its threshold"):
        drift.add_column(column)
    scores: dict[str, float] = report.drift.get("scores", {})
    found: dict[str, list[str]] = {}
    for finding in report.drift.get("findings", []):
        found.setdefault(finding["feature"], []).append(
            f"{finding['statistic']} {_num(finding.get('value'))}"
            + (f" (p={finding['p_value']:.2g})" if finding.get("p_value") is not None else "")
        )
    for feature, score in sorted(scores.items(), key=lambda kv: -kv[1]):
        drift.add_row(feature, f"{score:.3f}", ", ".join(found.get(feature, [])))
    console.print(drift)

    if report.verdict:
        verdict = report.verdict
        outcome = "promoted" if verdict.get("action") == "promote" else "rolled back"
        console.print(
            f"[bold]Canary {outcome}[/bold]: stable version {verdict.get('stable_version')} "
            f"now. {verdict.get('reason', '')}"
        )
        for variant, outcomes in report.canary_accuracy.items():
            if outcomes:
                console.print(
                    f"  {variant}: accuracy {_num(outcomes.get('accuracy'))} "
                    f"over {outcomes.get('count')} outcomes"
                )

    ingest = Table(title="Ingestion and quarantine", title_justify="left")
    for column in ("file", "rows", "ingested", "quarantined"):
        ingest.add_column(column)
    for batch in report.ingested:
        ingest.add_row(
            str(batch.get("location", "")).rsplit("/", 1)[-1],
            str(batch.get("rows_total")),
            str(batch.get("rows_ingested")),
            str(batch.get("rows_quarantined")),
        )
    console.print(ingest)
    reasons = Table(title="Quarantined rows (first 5)", title_justify="left")
    reasons.add_column("row")
    reasons.add_column("reasons")
    for row in report.quarantine[:5]:
        reasons.add_row(str(row.get("row_number")), "; ".join(row.get("reasons", [])))
    console.print(reasons)

    audit = Table(
        title=(
            f"Audit log: {report.audit_entries} entries, hash chain "
            + ("verified" if report.audit_verified else "BROKEN")
        ),
        title_justify="left",
    )
    audit.add_column("action")
    audit.add_column("entries")
    for action, count in report.audit_actions.items():
        audit.add_row(action, str(count))
    console.print(audit)


def _num(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"
