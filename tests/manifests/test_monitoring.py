"""manifests/base/monitoring: alerts, scrape targets and the dashboard.

Checked against what they watch: every ``falaj_*`` name is one the processes
export (``falaj.metrics.METRIC_NAMES``), every ``falaj:*`` name a recording
rule of the file, and the thresholds drawn are the alerts' and the policy's.
No Prometheus runs here, so PromQL gets a structural check; where ``promtool``
is installed (Debian's ``prometheus`` package), it parses every rule and runs
the alerts on made-up series too.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from falaj.manifest_schemas import SchemaStore
from falaj.manifests import load_topology, read_resources
from falaj.metrics import METRIC_NAMES
from falaj.settings import Settings
from tests.manifests.conftest import BASE

MONITORING = BASE / "monitoring"
SEVERITIES = {"critical", "warning", "info"}
#: An exported name, and a recorded one (level:metric:operations, level "falaj").
CATALOG_NAME = re.compile(r"\bfalaj_[a-z0-9_]+")
RECORDED_NAME = re.compile(r"\bfalaj:[a-z0-9_:]+")
DURATION = re.compile(r"^(0|([0-9]+[ywdhms]|[0-9]+ms)+)$")
ROW_TITLES = ("Events", "Ingest", "Inference", "Canary vs stable", "Drift", "Training")


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    """The folder's objects by kind/name, read through its kustomization."""
    resources = read_resources(MONITORING)
    return {f"{r.doc['kind']}/{r.doc['metadata']['name']}": dict(r.doc) for r in resources}


@pytest.fixture(scope="module")
def rules(docs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    groups = docs["PrometheusRule/falaj"]["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def alerts(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules if "alert" in rule}


@pytest.fixture(scope="module")
def dashboard(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config_map = docs["ConfigMap/falaj-grafana-dashboard"]
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    (text,) = config_map["data"].values()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and any panel a collapsed row holds."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} ({panel['title']}) {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            for key in ("query", "definition"):
                yield f"variable {variable['name']} {key}", variable[key]


def _exprs(rules: list[dict[str, Any]], dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    named = [(rule.get("alert") or rule["record"], str(rule["expr"])) for rule in rules]
    return named + list(_queries(dashboard))


# -- the objects, as a cluster checks them -----------------------------------------------------


def test_base_applies_the_monitoring_folder_and_falaj_up_reads_past_it(
    base_docs: list[dict[str, Any]], docs: dict[str, dict[str, Any]]
) -> None:
    assert sorted(docs) == [
        "ConfigMap/falaj-grafana-dashboard",
        "PodMonitor/falaj-control",
        "PodMonitor/falaj-functions",
        "PodMonitor/falaj-predictors",
        "PrometheusRule/falaj",
    ]
    in_base = {f"{doc['kind']}/{doc['metadata']['name']}" for doc in base_docs}
    assert set(docs) <= in_base
    # The local runtime has nothing to run for them, and does not choke on them.
    assert load_topology(BASE).services


def test_every_monitoring_object_validates_strictly(
    schema_store: SchemaStore, docs: dict[str, dict[str, Any]]
) -> None:
    assert [line for doc in docs.values() for line in schema_store.validate(doc)] == []


@pytest.mark.parametrize(
    ("name", "path", "wrong", "where"),
    [
        (
            "PrometheusRule/falaj",
            ("spec", "groups", 1, "rules", 1, "for"),
            "fro",
            "spec.groups[1].rules[1]",
        ),
        ("PrometheusRule/falaj", ("spec", "groups", 0, "rules"), "rule", "spec.groups[0]"),
        (
            "PodMonitor/falaj-functions",
            ("spec", "podMetricsEndpoints"),
            "podMetricEndpoints",
            "spec",
        ),
        (
            "PodMonitor/falaj-predictors",
            ("spec", "podMetricsEndpoints", 0, "authorization"),
            "authorisation",
            "spec.podMetricsEndpoints[0]",
        ),
    ],
)
def test_a_misspelt_field_fails(
    schema_store: SchemaStore,
    docs: dict[str, dict[str, Any]],
    name: str,
    path: tuple[str | int, ...],
    wrong: str,
    where: str,
) -> None:
    bad = copy.deepcopy(docs[name])
    parent: Any = bad
    for part in path[:-1]:
        parent = parent[part]
    parent[wrong] = parent.pop(path[-1])

    problems = schema_store.validate(bad)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{name}: {where}: ")
    assert repr(wrong) in problems[0]


def test_a_rule_is_an_alert_or_a_recording_and_durations_are_prometheus_durations(
    schema_store: SchemaStore, docs: dict[str, dict[str, Any]]
) -> None:
    bad = copy.deepcopy(docs["PrometheusRule/falaj"])
    alert = bad["spec"]["groups"][1]["rules"][1]
    alert["for"] = "30 minutes"
    record = bad["spec"]["groups"][0]["rules"][0]
    record["for"] = "5m"

    problems = schema_store.validate(bad)

    assert problems[0].startswith("PrometheusRule/falaj: spec.groups[0].rules[0]: ")
    assert "'alert' is a dependency of 'for'" in problems[0]
    assert problems[1].startswith("PrometheusRule/falaj: spec.groups[1].rules[1].for: ")
    assert len(problems) == 2


def test_the_pod_monitors_scrape_metrics_with_the_reader_token(
    docs: dict[str, dict[str, Any]],
) -> None:
    functions = docs["PodMonitor/falaj-functions"]["spec"]
    assert functions["selector"] == {"matchLabels": {"app.kubernetes.io/component": "function"}}
    predictors = docs["PodMonitor/falaj-predictors"]["spec"]
    assert predictors["selector"]["matchExpressions"] == [
        {"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}
    ]
    control = docs["PodMonitor/falaj-control"]["spec"]
    assert control["selector"] == {"matchLabels": {"app.kubernetes.io/component": "control"}}
    # Knative's name for the user container's port on every revision's pod; the control
    # API is a Deployment, scraped on its own named port.
    for spec, port in ((functions, "user-port"), (predictors, "user-port"), (control, "http")):
        (endpoint,) = spec["podMetricsEndpoints"]
        assert (endpoint["port"], endpoint["path"]) == (port, "/metrics")
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": "falaj-metrics-reader", "key": "token"},
        }


# -- the rules ---------------------------------------------------------------------------------


def test_every_alert_says_how_long_how_bad_what_and_what_to_do(
    docs: dict[str, dict[str, Any]], alerts: dict[str, dict[str, Any]]
) -> None:
    groups = docs["PrometheusRule/falaj"]["spec"]["groups"]
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names))
    assert {"falaj-drift", "falaj-canary", "falaj-latency-slo", "falaj-events"} <= set(names)
    in_rules = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    assert len(in_rules) == len(alerts) >= 12
    for name, alert in alerts.items():
        assert name.startswith("Falaj"), name
        assert DURATION.match(alert["for"]), name
        assert alert["labels"]["severity"] in SEVERITIES, name
        for key in ("summary", "description", "runbook"):
            assert alert["annotations"][key].strip(), f"{name}: {key}"


def test_every_metric_name_is_one_the_processes_export(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    unknown = {
        (where, name)
        for where, expr in _exprs(rules, dashboard)
        for name in CATALOG_NAME.findall(expr)
        if name not in METRIC_NAMES
    }
    assert unknown == set()
    # And nothing exported goes unwatched: each family is in a rule or a panel.
    used = {name for _, expr in _exprs(rules, dashboard) for name in CATALOG_NAME.findall(expr)}
    assert {_family(n) for n in METRIC_NAMES} == {_family(n) for n in used}


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_every_recorded_name_is_recorded_here_and_read_somewhere(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    recorded = [rule["record"] for rule in rules if "record" in rule]
    assert len(recorded) == len(set(recorded))
    assert all(re.fullmatch(r"falaj:[a-z0-9_]+:[a-z0-9_]+", name) for name in recorded)
    read = {name for _, expr in _exprs(rules, dashboard) for name in RECORDED_NAME.findall(expr)}
    assert read == set(recorded)


def test_every_histogram_quantile_reads_buckets_by_le(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    seen = 0
    for where, expr in _exprs(rules, dashboard):
        for argument in _calls(expr, "histogram_quantile"):
            seen += 1
            names = CATALOG_NAME.findall(argument)
            assert names and all(n.endswith("_bucket") for n in names), (where, argument)
            assert re.search(r"\bby \(le\b", argument), (where, argument)
    assert seen >= 5
    # And buckets are read nowhere else: a bucket's rate alone means nothing.
    for where, expr in _exprs(rules, dashboard):
        outside = expr
        for argument in _calls(expr, "histogram_quantile"):
            outside = outside.replace(argument, "")
        assert "_bucket" not in outside, where


def _calls(expr: str, function: str) -> list[str]:
    """The argument text of each call of ``function`` in ``expr``."""
    found = []
    for match in re.finditer(rf"\b{function}\s*\(", expr):
        depth, start = 1, match.end()
        for index in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[index], 0)
            if depth == 0:
                found.append(expr[start:index])
                break
    return found


def test_every_query_is_well_formed(rules: list[dict[str, Any]], dashboard: dict[str, Any]) -> None:
    problems = {where: _promql_problems(expr) for where, expr in _exprs(rules, dashboard)}
    assert {where: found for where, found in problems.items() if found} == {}


def test_the_structural_check_finds_what_it_should() -> None:
    assert _promql_problems('sum(rate(x{a="b"}[5m])') == ["1 '(' left open"]
    assert _promql_problems('x{a="b)"}]') == ["']' closes nothing"]
    assert _promql_problems('x{a="b}') == ['an unterminated string: "b}']
    assert _promql_problems("  ") == ["empty"]
    assert _promql_problems('sum by (le) (rate(x_bucket{a=~"5.."}[5m])) > 0.5') == []


def _promql_problems(expr: str) -> list[str]:
    """Brackets that do not pair up and strings that do not end (quotes inside skipped)."""
    if not expr.strip():
        return ["empty"]
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    problems = []
    index = 0
    while index < len(expr):
        char = expr[index]
        if char in "\"'`":
            end = expr.find(char, index + 1)
            while end > 0 and char != "`" and expr[end - 1] == "\\":
                end = expr.find(char, end + 1)
            if end < 0:
                return [f"an unterminated string: {expr[index:]}"]
            index = end
        elif char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack[-1] != pairs[char]:
                problems.append(f"'{char}' closes nothing")
            else:
                stack.pop()
        index += 1
    problems.extend(f"{stack.count(c)} '{c}' left open" for c in "([{" if stack.count(c))
    return problems


# -- the dashboard -----------------------------------------------------------------------------


def test_the_dashboard_is_one_grafana_can_load(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "falaj-overview"
    (source,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("datasource", "prometheus")
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert [next(r for r in rows if r.startswith(t)) for t in ROW_TITLES]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":  # layout only: no query of its own
            continue
        expected = {"type": "prometheus", "uid": "${datasource}"}
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]


def _alert_threshold(expr: str) -> float:
    """The number an alert's expression compares against last (`... > 0.2`)."""
    match = re.search(r">\s*\(?([0-9.]+)\)?\s*$", expr.strip())
    assert match, expr
    return float(match.group(1))


def _red_lines(panel: Mapping[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    return [step["value"] for step in steps if step["value"] is not None]


def _panel(dashboard: Mapping[str, Any], title: str) -> dict[str, Any]:
    (found,) = [panel for panel in _panels(dashboard) if panel["title"] == title]
    return found


def test_the_lines_drawn_are_the_alerts_thresholds_and_the_policys(
    dashboard: dict[str, Any], alerts: dict[str, dict[str, Any]]
) -> None:
    psi = Settings().drift_thresholds["psi"]  # the policy's default, as a user gets it
    drift = _panel(dashboard, "PSI by feature (last closed window)")
    assert 'statistic="psi"' in drift["targets"][0]["expr"]
    assert _red_lines(drift) == [psi]
    assert _alert_threshold(alerts["FalajFeatureDriftHigh"]["expr"]) == psi

    latency = _alert_threshold(alerts["FalajInferenceLatencyP99High"]["expr"])
    assert _red_lines(_panel(dashboard, "Latency p99")) == [latency]
    assert _red_lines(_panel(dashboard, "Latency p99, canary vs stable")) == [latency]
    canary = alerts["FalajCanaryErrorRateHigh"]["expr"]
    assert _red_lines(_panel(dashboard, "5xx ratio, canary vs stable")) == [
        float(re.findall(r'variant="canary"\} > ([0-9.]+)', canary)[0])
    ]
    quarantine = _alert_threshold(alerts["FalajIngestQuarantineRatioHigh"]["expr"])
    assert _red_lines(_panel(dashboard, "Quarantined share (30 min)")) == [quarantine]
    burns = sorted(
        float(factor)
        for name in ("FalajInferenceErrorBudgetBurnSlow", "FalajInferenceErrorBudgetBurnFast")
        for factor in set(re.findall(r"\(([0-9.]+) \* \(1 - 0\.995\)\)", alerts[name]["expr"]))
    )
    budget = _panel(dashboard, "Availability error budget burn (SLO 99.5%)")
    assert _red_lines(budget) == burns == [6.0, 14.4]


# -- promtool, where it is installed ------------------------------------------------------------

#: Made-up series, and the alerts that must be firing at given minutes. Counters of
#: scale-to-zero pods are born at their first count (see prometheus-rules.yaml's header).
SCENARIOS: dict[str, tuple[dict[str, str], dict[int, set[str]]]] = {
    "a drift pod that lived for one window": (
        {'falaj_drift_detected_total{model="fraud", pod="drift-a"}': "_x20 1x3 _x40"},
        {19: set(), 22: {"FalajDriftDetected"}, 50: set()},
    ),
    "PSI above the threshold from pods that come and go": (
        {
            'falaj_drift_score{model="fraud", version="2", feature="amount", statistic="psi",'
            ' pod="a"}': "0.35x10 _x20",
            'falaj_drift_score{model="fraud", version="2", feature="amount", statistic="psi",'
            ' pod="b"}': "_x25 0.4x40",
            'falaj_drift_score{model="fraud", version="2", feature="hour", statistic="psi",'
            ' pod="b"}': "_x25 0.1x40",
        },
        {20: set(), 45: {"FalajFeatureDriftHigh"}},
    ),
    "a dead letter on a long-lived broker": (
        {'falaj_broker_dead_letters_total{broker="default", trigger="drift"}': "0x30 2x30"},
        {29: set(), 35: {"FalajDeadLetters"}, 45: set()},
    ),
    "a canary failing 10% while the stable never failed": (
        {
            'falaj_inference_requests_total{model="fraud", version="2", variant="canary",'
            ' code="200"}': "0+90x30",
            'falaj_inference_requests_total{model="fraud", version="2", variant="canary",'
            ' code="503"}': "0+10x30",
            'falaj_inference_requests_total{model="fraud", version="1", variant="stable",'
            ' code="200"}': "0+900x30",
            'falaj_inference_requests_total{model="fraud", version="1", variant="shadow",'
            ' code="500"}': "0+900x30",
        },
        {3: set(), 15: {"FalajCanaryErrorRateHigh"}},
    ),
    "a canary no worse than the stable": (
        {
            'falaj_inference_requests_total{model="fraud", version="2", variant="canary",'
            ' code="503"}': "0+2x30",
            'falaj_inference_requests_total{model="fraud", version="2", variant="canary",'
            ' code="200"}': "0+98x30",
            'falaj_inference_requests_total{model="fraud", version="1", variant="stable",'
            ' code="503"}': "0+30x30",
            'falaj_inference_requests_total{model="fraud", version="1", variant="stable",'
            ' code="200"}': "0+970x30",
        },
        {15: set()},
    ),
    "every request failing": (
        {
            'falaj_inference_requests_total{model="fraud", version="1", variant="stable",'
            ' code="503"}': "0+100x60",
        },
        {
            1: set(),
            10: {"FalajInferenceErrorBudgetBurnFast"},
            50: {
                "FalajInferenceErrorBudgetBurnFast",
                "FalajInferenceErrorBudgetBurnSlow",
            },
        },
    ),
    "a slow stable version": (
        {
            'falaj_inference_request_seconds_bucket{model="fraud", version="1", variant="stable",'
            f' le="{le}"}}': f"0+{count}x30"
            for le, count in (("0.025", 50), ("0.05", 90), ("0.1", 100), ("+Inf", 100))
        },
        {10: set(), 20: {"FalajInferenceLatencyP99High"}},
    ),
    "an ingest pod that quarantined a fifth of one file": (
        {
            'falaj_ingest_rows_total{dataset="tx", outcome="ingested", pod="i"}': "_x10 80x3",
            'falaj_ingest_rows_total{dataset="tx", outcome="quarantined", pod="i"}': "_x10 20x3",
        },
        {9: set(), 12: {"FalajIngestQuarantineRatioHigh"}, 45: set()},
    ),
    "training failing, then succeeding": (
        {
            'falaj_training_runs_total{model="fraud", outcome="failed", pod="l"}': "_x10 1x30",
            'falaj_training_runs_total{model="fraud", outcome="succeeded", pod="m"}': "_x30 1x10",
        },
        {12: {"FalajTrainingRunsFailing"}, 32: set()},
    ),
}


@pytest.fixture(scope="module")
def promtool() -> str:
    # `make test` unpacks Debian's promtool into the venv, beside this interpreter.
    found = shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI: `make test` unpacks it into .venv/bin")
        pytest.skip("promtool is not installed (`make test` unpacks Debian's into .venv/bin)")
    return found


def test_promtool_accepts_every_rule(
    promtool: str, docs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    rules_file = _rules_file(docs, tmp_path)
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_made_up_series(
    promtool: str, docs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    rules_file = _rules_file(docs, tmp_path)
    firing = 'group by (alertname) (ALERTS{alertstate="firing"})'
    tests = [
        {
            "name": name,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [
                {
                    "expr": firing,
                    "eval_time": f"{minute}m",
                    "exp_samples": [
                        {"labels": f'{{alertname="{alert}"}}', "value": 1}
                        for alert in sorted(expected)
                    ],
                }
                for minute, expected in checks.items()
            ],
        }
        for name, (series, checks) in SCENARIOS.items()
    ]
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests}
        )
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _rules_file(docs: dict[str, dict[str, Any]], folder: Path) -> Path:
    """The PrometheusRule's groups as the operator hands them to Prometheus."""
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": docs["PrometheusRule/falaj"]["spec"]["groups"]}))
    return path
