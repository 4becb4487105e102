"""``falaj drift status``: the drift time series of a model, from the drift history."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from falaj.cli.main import app
from falaj.context import Context
from falaj.drift_history import DriftHistory
from falaj.drift_policy import DriftPolicy
from falaj.drift_statistics import StatisticValue

runner = CliRunner()


def test_status_shows_each_window_its_worst_scores_and_its_alert(ctx: Context) -> None:
    policy = DriftPolicy(thresholds={"psi": 0.2, "ks": 0.001}, min_samples=100, cooldown_s=60)
    history = DriftHistory(ctx.paths.drift)
    for end, shift, alerted in (
        ("2026-11-24T10:00:00", 0.01, None),
        ("2026-11-24T10:05:00", 0.6, 1.0),
    ):
        scores = {
            "amount": {
                "psi": StatisticValue("psi", shift),
                "ks": StatisticValue("ks", shift / 2, p_value=0.5 if shift < 0.1 else 1e-12),
            },
            "hour": {"psi": StatisticValue("psi", 0.02)},
        }
        verdict = policy.verdict(scores, rows=400, now=1000.0, last_alert=None)
        with history.transaction():
            history.record(
                "fraud",
                1,
                window_end=end,
                rows=400,
                scores=scores,
                verdict=verdict,
                alerted_at=alerted,
            )
    history.close()

    home = ["--home", str(ctx.settings.home)]
    result = runner.invoke(app, ["drift", "status", "fraud", "--json", *home])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    first, second = status["windows"]
    assert first["drifted_features"] == [] and not first["alerted"]
    assert second["drifted_features"] == ["amount"] and second["alerted"]
    assert second["scores"]["amount"]["ks"] == {"value": 0.3, "p_value": 1e-12, "drifted": True}
    assert status["last_alert"] == {"1": 1.0}

    result = runner.invoke(
        app, ["drift", "status", "fraud", "--last", "1", *home], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "last 1 windows" in result.output and "2026-11-24T10:05:00" in result.output
    assert "10:00:00" not in result.output and "amount" in result.output

    result = runner.invoke(app, ["drift", "status", "aml", *home])
    assert result.exit_code == 1 and "no drift window of 'aml' scored yet" in result.output
