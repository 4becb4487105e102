"""manifests/base/network-policies.yaml and components/mesh-mtls, checked flow by flow.

No cluster runs here, so the policies are checked twice over: structurally
(their shape, and that each selects pods the manifests really make) and by
behaviour, with ``tests.support.network_policy.PolicySet`` evaluating them
with Kubernetes' semantics against the pods the controllers create from the
rendered base (Knative, KServe, KubeRay and eventing-rabbitmq each add labels
of their own; ``workload_pods`` puts them on as those controllers do).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from falaj.manifest_schemas import SchemaStore
from falaj.manifests import load_topology, render_overlay
from tests.manifests.conftest import BASE, LOCAL_OVERLAY, MANIFESTS
from tests.manifests.validation import CoreSchemas, doc_problems, group_of
from tests.support.network_policy import (
    NAMESPACE_NAME_LABEL,
    Endpoint,
    PolicySet,
    outside,
    pod,
    policy_types,
    selector_matches,
)

NAMESPACE = "falaj"
POLICY_FILE = BASE / "network-policies.yaml"
MESH_COMPONENT = MANIFESTS / "components" / "mesh-mtls"

#: Kinds (API group, kind) of the base that make pods in the falaj namespace, and those that
#: make none there (a PingSource's adapter and a KafkaSource's dispatcher run in
#: knative-eventing; the core Service only gives the control API an address).
POD_KINDS = {
    ("serving.knative.dev", "Service"),
    ("sources.knative.dev", "ContainerSource"),
    ("sources.knative.dev", "RabbitmqSource"),
    ("serving.kserve.io", "InferenceService"),
    ("ray.io", "RayJob"),
    ("apps", "Deployment"),
}
PODLESS_KINDS = {
    ("", "Namespace"),
    ("", "ConfigMap"),
    ("", "ServiceAccount"),
    ("", "Service"),
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("", "PersistentVolumeClaim"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("eventing.knative.dev", "Broker"),
    ("eventing.knative.dev", "Trigger"),
    ("sources.knative.dev", "PingSource"),
    ("serving.kserve.io", "ServingRuntime"),
    ("monitoring.coreos.com", "PrometheusRule"),
    ("monitoring.coreos.com", "PodMonitor"),
}

#: Feast's stores and RabbitMQ: their addresses are secrets, so any in-cluster namespace.
STORE_PORTS = {6379, 5432, 5672}
#: The API server, reachable only through an ipBlock.
API_SERVER_PORTS = {443, 6443}

# -- the rest of the cluster, as the upstream installs label it --------------------------------

KUBE_DNS = pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
ISTIOD = pod("istiod", "istio-system", {"app": "istiod", "istio": "pilot"})
GATEWAY = pod(
    "knative-local-gateway",
    "istio-system",
    {"app": "istio-ingressgateway", "istio": "ingressgateway"},
)
ACTIVATOR = pod("activator", "knative-serving", {"app": "activator"})
AUTOSCALER = pod("autoscaler", "knative-serving", {"app": "autoscaler"})
BROKER_INGRESS = pod(
    "broker-ingress", "knative-eventing", {"eventing.knative.dev/brokerRole": "ingress"}
)
BROKER_FILTER = pod(
    "broker-filter", "knative-eventing", {"eventing.knative.dev/brokerRole": "filter"}
)
PROMETHEUS = pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
GRAFANA = pod("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"})
KUBERAY_OPERATOR = pod(
    "kuberay-operator", "ray-system", {"app.kubernetes.io/name": "kuberay-operator"}
)
REDIS = pod("redis", "data", {"app": "redis"})
POSTGRES = pod("postgres", "data", {"app": "postgres"})
RABBITMQ = pod("rabbitmq", "rabbitmq-system", {"app.kubernetes.io/name": "rabbitmq"})
STRANGER = pod("stranger", "tenant-b", {"app": "web"})
#: kind's control plane, where the `kubernetes` Service's ClusterIP leads.
API_SERVER = outside("kube-apiserver", "172.18.0.2")
ELSEWHERE = outside("elsewhere", "203.0.113.10")

CLUSTER = {
    endpoint.name: endpoint
    for endpoint in (
        KUBE_DNS,
        ISTIOD,
        GATEWAY,
        ACTIVATOR,
        AUTOSCALER,
        BROKER_INGRESS,
        BROKER_FILTER,
        PROMETHEUS,
        GRAFANA,
        KUBERAY_OPERATOR,
        REDIS,
        POSTGRES,
        RABBITMQ,
        STRANGER,
        API_SERVER,
        ELSEWHERE,
    )
}

HEAD = "ray/fraud-training/head"
WORKER = "ray/fraud-training/cpu-workers"
FUNCTIONS = ["function/ingest", "function/training-launcher", "function/rollout", "function/drift"]
PREDICTORS = ["predictor/fraud", "predictor/fraud-gpu"]
CONTROL = "deployment/control"


# -- the pods, as the controllers make them ----------------------------------------------------


def _template_labels(template: Mapping[str, Any]) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


def workload_pods(docs: list[dict[str, Any]]) -> dict[str, Endpoint]:
    """Every pod the rendered manifests make in the namespace, with the labels it gets."""
    pods: dict[str, Endpoint] = {}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        namespace = doc["metadata"]["namespace"] if kind != "Namespace" else name
        spec = doc.get("spec", {})
        match kind:
            case "Service" if group_of(doc) == "":
                continue  # a core Service: an address, no pods
            case "Service":  # Knative Serving: the template's labels, then its own
                revision = f"{name}-00001"
                labels = {
                    **_template_labels(spec["template"]),
                    "serving.knative.dev/service": name,
                    "serving.knative.dev/configuration": name,
                    "serving.knative.dev/revision": revision,
                    "app": revision,
                }
                pods[f"function/{name}"] = pod(f"function/{name}", namespace, labels)
            case "ContainerSource":  # Knative Eventing keeps the template's labels
                labels = {
                    **_template_labels(spec["template"]),
                    "sources.knative.dev/source": "container-source-controller",
                    "sources.knative.dev/containerSource": name,
                }
                pods[f"source/{name}"] = pod(f"source/{name}", namespace, labels)
            case "Deployment":  # its ReplicaSet's pods: the template's labels and a hash
                labels = {**_template_labels(spec["template"]), "pod-template-hash": "5d4f8b7c9"}
                pods[f"deployment/{name}"] = pod(f"deployment/{name}", namespace, labels)
            case "RabbitmqSource":  # eventing-rabbitmq's receive adapter
                labels = {
                    "eventing.knative.dev/source": "rabbitmq-source-controller",
                    "eventing.knative.dev/SourceName": name,
                }
                pods[f"source/{name}"] = pod(f"source/{name}", namespace, labels)
            case "InferenceService":  # KServe (Serverless): a Knative Service <name>-predictor
                predictor = spec["predictor"]
                revision = f"{name}-predictor-00001"
                labels = {
                    **doc["metadata"].get("labels", {}),
                    **predictor.get("labels", {}),
                    "serving.kserve.io/inferenceservice": name,
                    "component": "predictor",
                    "serving.knative.dev/service": f"{name}-predictor",
                    "serving.knative.dev/revision": revision,
                    "app": revision,
                }
                pods[f"predictor/{name}"] = pod(f"predictor/{name}", namespace, labels)
            case "RayJob":  # KubeRay: a RayCluster named after the job, plus a suffix
                cluster = spec["rayClusterSpec"]
                ray = {"ray.io/is-ray-node": "yes", "ray.io/cluster": f"{name}-x7k2p"}
                head = cluster["headGroupSpec"]["template"]
                pods[f"ray/{name}/head"] = pod(
                    f"ray/{name}/head",
                    namespace,
                    {
                        **_template_labels(head),
                        **ray,
                        "ray.io/node-type": "head",
                        "ray.io/group": "headgroup",
                    },
                )
                for group in cluster["workerGroupSpecs"]:
                    key = f"ray/{name}/{group['groupName']}"
                    pods[key] = pod(
                        key,
                        namespace,
                        {
                            **_template_labels(group["template"]),
                            **ray,
                            "ray.io/node-type": "worker",
                            "ray.io/group": group["groupName"],
                        },
                    )
    return pods


def _gpu_docs() -> list[dict[str, Any]]:
    """The opt-in GPU endpoint, applied to the base's namespace (its header says how)."""
    text = (BASE / "inference-service-gpu.yaml").read_text()
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    for doc in docs:
        doc["metadata"]["namespace"] = NAMESPACE
    return docs


@pytest.fixture(scope="module")
def docs(base_rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return base_rendered + _gpu_docs()


@pytest.fixture(scope="module")
def policies(base_rendered: list[dict[str, Any]]) -> PolicySet:
    return PolicySet(base_rendered)


@pytest.fixture(scope="module")
def pods(docs: list[dict[str, Any]]) -> dict[str, Endpoint]:
    return workload_pods(docs)


@pytest.fixture(scope="module")
def endpoints(pods: dict[str, Endpoint]) -> dict[str, Endpoint]:
    assert not set(pods) & set(CLUSTER)
    return {**pods, **CLUSTER}


def _policy_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == "NetworkPolicy"]


# -- structure ---------------------------------------------------------------------------------


def test_every_kind_in_the_base_is_known_to_make_pods_or_not(docs: list[dict[str, Any]]) -> None:
    kinds = {(group_of(doc), doc["kind"]) for doc in docs}
    assert kinds - POD_KINDS - PODLESS_KINDS == set(), "a new kind: does it make pods here?"
    assert kinds >= POD_KINDS


def test_the_pods_are_the_ones_the_manifests_make(pods: dict[str, Endpoint]) -> None:
    assert sorted(pods) == sorted(
        [
            *FUNCTIONS,
            "source/storage-source",
            "source/records",
            *PREDICTORS,
            HEAD,
            WORKER,
            CONTROL,
        ]
    )
    assert {endpoint.namespace for endpoint in pods.values()} == {NAMESPACE}


def test_policies_validate_strictly_and_sit_in_the_namespace(
    schema_store: SchemaStore, base_rendered: list[dict[str, Any]]
) -> None:
    found = _policy_docs(base_rendered)
    assert len(found) >= 10
    for policy in found:
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["metadata"]["namespace"] == NAMESPACE
        assert schema_store.validate(policy, strict=True) == []
    names = [policy["metadata"]["name"] for policy in found]
    assert len(names) == len(set(names))


def test_a_misspelt_policy_field_fails_strict_validation(
    schema_store: SchemaStore, base_rendered: list[dict[str, Any]]
) -> None:
    [policy] = [
        copy.deepcopy(p)
        for p in _policy_docs(base_rendered)
        if p["metadata"]["name"] == "allow-dns"
    ]
    rule = policy["spec"]["egress"][0]
    rule["too"] = rule.pop("to")

    problems = schema_store.validate(policy, strict=True)

    assert problems == [
        "NetworkPolicy/allow-dns: spec.egress[0]: Additional properties are not allowed "
        "('too' was unexpected)"
    ]


def _rules(policy: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        for rule in policy["spec"].get(direction, []):
            yield peers, rule


def test_each_policy_is_well_formed(base_rendered: list[dict[str, Any]]) -> None:
    for policy in _policy_docs(base_rendered):
        name, spec = policy["metadata"]["name"], policy["spec"]
        assert isinstance(spec["podSelector"], dict), name
        # policyTypes are spelt out, and cover every direction the policy has rules for.
        declared = spec["policyTypes"]
        assert declared and set(declared) <= {"Ingress", "Egress"}, name
        assert ("ingress" in spec) <= ("Ingress" in declared), name
        assert ("egress" in spec) <= ("Egress" in declared), name
        for peers_key, rule in _rules(policy):
            peers = rule.get(peers_key)
            assert peers, f"{name}: a rule without {peers_key} would match every peer"
            ports = rule.get("ports")
            if ports is None:
                # Only Ray pods talk on every port, to each other (Ray picks ports at random).
                assert peers == [{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}], (
                    name
                )
                continue
            for port in ports:
                assert port["protocol"] in ("TCP", "UDP"), name
                assert type(port["port"]) is int and 0 < port["port"] < 65536, name
                assert "endPort" not in port, name
            numbers = {port["port"] for port in ports}
            for peer in peers:
                if "ipBlock" in peer:
                    # Only the API server is out of selectors' reach.
                    assert numbers == API_SERVER_PORTS, name
                    continue
                selector = peer.get("namespaceSelector")
                if selector == {}:
                    # Any in-cluster namespace: only for the stores, whose addresses are secrets.
                    assert numbers <= STORE_PORTS, name
                elif selector is not None:
                    assert set(selector) == {"matchLabels"}, name
                    assert list(selector["matchLabels"]) == [NAMESPACE_NAME_LABEL], name


def test_every_policy_says_why_in_a_comment() -> None:
    chunks = POLICY_FILE.read_text().split("\n---\n")
    assert len(chunks) == len([d for d in yaml.safe_load_all(POLICY_FILE.read_text()) if d])
    for chunk in chunks:
        comments = [line for line in chunk.splitlines() if line.lstrip().startswith("#")]
        assert comments, chunk.splitlines()[:6]


def test_every_policy_selects_pods_the_manifests_make(
    base_rendered: list[dict[str, Any]], pods: dict[str, Endpoint]
) -> None:
    for policy in _policy_docs(base_rendered):
        name = policy["metadata"]["name"]
        selected = [
            p for p in pods.values() if selector_matches(policy["spec"]["podSelector"], p.labels)
        ]
        assert selected, f"{name} selects no pod the manifests make"
        # A peer in this namespace (a podSelector alone) names pods that exist too.
        for peers_key, rule in _rules(policy):
            for peer in rule[peers_key]:
                if set(peer) == {"podSelector"}:
                    assert any(
                        selector_matches(peer["podSelector"], p.labels) for p in pods.values()
                    )


def test_every_pod_is_isolated_both_ways_by_the_default_deny(
    base_rendered: list[dict[str, Any]], policies: PolicySet, pods: dict[str, Endpoint]
) -> None:
    [deny] = [p for p in _policy_docs(base_rendered) if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for endpoint in pods.values():
        assert selector_matches(deny["spec"]["podSelector"], endpoint.labels)
        assert policies.isolated(endpoint, "Ingress"), endpoint
        assert policies.isolated(endpoint, "Egress"), endpoint
    # Policy types default as the API server defaults them.
    assert policy_types({"spec": {"podSelector": {}}}) == {"Ingress"}
    assert policy_types({"spec": {"podSelector": {}, "egress": []}}) == {"Ingress", "Egress"}


# -- behaviour: what must pass -------------------------------------------------------------------

ALLOWED = [
    # Publishing CloudEvents at the Broker's ingress (Knative's pods listen on 8080).
    *[(name, "broker-ingress", 8080, "the function announces its outcome") for name in FUNCTIONS],
    ("source/storage-source", "broker-ingress", 8080, "a landed file becomes an event"),
    ("source/records", "broker-ingress", 8080, "a RabbitMQ message becomes an event"),
    *[(name, "broker-ingress", 8080, "payload logging: inference.logged") for name in PREDICTORS],
    (HEAD, "broker-ingress", 8080, "the driver announces training.started/completed"),
    (WORKER, "broker-ingress", 8080, "rank 0 announces training.progress"),
    # Knative's data plane into the Knative Service pods.
    ("knative-local-gateway", "predictor/fraud", 8012, "predictions come in through the mesh"),
    ("knative-local-gateway", "predictor/fraud-gpu", 8013, "h2c (gRPC) predictions"),
    ("activator", "predictor/fraud", 8012, "requests held while scaling from zero"),
    ("autoscaler", "predictor/fraud", 9090, "the autoscaler scrapes queue-proxy"),
    ("autoscaler", "function/ingest", 9090, "the autoscaler scrapes queue-proxy"),
    # Feast's stores and RabbitMQ.
    ("function/ingest", "redis", 6379, "ingest pushes the newest rows online"),
    ("function/ingest", "postgres", 5432, "ingest reads Feast's registry"),
    ("predictor/fraud", "redis", 6379, "requests by entity id read the online store"),
    ("predictor/fraud", "postgres", 5432, "Feast resolves the feature service in the registry"),
    (HEAD, "postgres", 5432, "the job's driver reads Feast's registry"),
    (HEAD, "redis", 6379, "the job's driver gets the online store's secret too"),
    ("source/records", "rabbitmq", 5672, "the RabbitmqSource consumes its queue"),
    # Kubernetes API: the two functions with RBAC rights.
    ("function/training-launcher", "kube-apiserver", 6443, "creates and watches RayJobs"),
    ("function/training-launcher", "kube-apiserver", 443, "managed clusters serve on 443"),
    ("function/rollout", "kube-apiserver", 443, "patches the traffic split"),
    # Ray.
    ("function/training-launcher", HEAD, 8265, "the ray backend's Jobs API"),
    ("kuberay-operator", HEAD, 8265, "HTTPMode submission and status polling"),
    (WORKER, HEAD, 6379, "a worker joins the GCS"),
    (HEAD, WORKER, 10002, "tasks on a worker's worker port"),
    (WORKER, WORKER, 45123, "object transfer between raylets (a random port)"),
    # Prometheus.
    ("prometheus", "function/ingest", 8080, "Falaj's /metrics, with a read token"),
    ("prometheus", "function/ingest", 9091, "queue-proxy's request metrics"),
    ("prometheus", "function/drift", 15020, "the sidecar's merged metrics"),
    ("prometheus", "predictor/fraud", 8080, "KServe's /metrics"),
    ("prometheus", "predictor/fraud", 15020, "the sidecar's merged metrics"),
    ("prometheus", HEAD, 8080, "Ray's metrics export port"),
    ("prometheus", WORKER, 8080, "Ray's metrics export port"),
    ("prometheus", CONTROL, 8090, "the control API's /metrics, with a read token"),
    # The control API and dashboard.
    ("knative-local-gateway", CONTROL, 8090, "people come in through the ingress gateway"),
    (CONTROL, "broker-ingress", 8080, "model.deployed after a promote or rollback"),
    (CONTROL, "knative-local-gateway", 8081, "an endpoint's cluster-local address"),
    (CONTROL, "knative-local-gateway", 8080, "istio-ingressgateway's HTTP port"),
    (CONTROL, "kube-apiserver", 443, "replaces an InferenceService's split"),
    (CONTROL, "kube-apiserver", 6443, "kubeadm, kind and k3d serve on 6443"),
]


@pytest.mark.parametrize(("source", "target", "port", "why"), ALLOWED)
def test_a_needed_flow_is_allowed(
    policies: PolicySet,
    endpoints: dict[str, Endpoint],
    source: str,
    target: str,
    port: int,
    why: str,
) -> None:
    assert policies.allows(endpoints[source], endpoints[target], port), why


def test_every_pod_resolves_names_and_reaches_istiod(
    policies: PolicySet, pods: dict[str, Endpoint]
) -> None:
    for endpoint in pods.values():
        assert policies.allows(endpoint, KUBE_DNS, 53, "UDP"), endpoint
        assert policies.allows(endpoint, KUBE_DNS, 53, "TCP"), endpoint
        assert policies.allows(endpoint, ISTIOD, 15012), endpoint
        # DNS is kube-dns's: not any pod of kube-system, not port 53 anywhere.
        assert not policies.allows(
            endpoint, pod("etcd", "kube-system", {"component": "etcd"}), 53, "UDP"
        )
        assert not policies.allows(endpoint, ELSEWHERE, 53, "UDP"), endpoint


def test_the_broker_delivers_to_every_triggers_subscriber(
    docs: list[dict[str, Any]], policies: PolicySet, pods: dict[str, Endpoint]
) -> None:
    """Deliveries enter through knative-local-gateway, or the activator while scaled to zero."""
    subscribers = {
        doc["spec"]["subscriber"]["ref"]["name"] for doc in docs if doc["kind"] == "Trigger"
    }
    assert subscribers == {"ingest", "training-launcher", "rollout", "drift"}
    for name in subscribers:
        function = pods[f"function/{name}"]
        for sender in (GATEWAY, ACTIVATOR):
            assert policies.allows(sender, function, 8012), (sender, name)
            assert policies.allows(sender, function, 8013), (sender, name)


def test_every_source_in_the_namespace_reaches_its_broker(
    docs: list[dict[str, Any]], policies: PolicySet, pods: dict[str, Endpoint]
) -> None:
    sources = [
        doc
        for doc in docs
        if doc["kind"] in ("ContainerSource", "RabbitmqSource")
        and doc["spec"]["sink"]["ref"]["kind"] == "Broker"
    ]
    assert len(sources) == 2
    for doc in sources:
        assert policies.allows(pods[f"source/{doc['metadata']['name']}"], BROKER_INGRESS, 8080)


# -- behaviour: what must not ------------------------------------------------------------------

DENIED = [
    # Ray's dashboard and client are the launcher's and the operator's only.
    *[
        (name, HEAD, 8265, "only the launcher submits jobs")
        for name in FUNCTIONS[:1] + FUNCTIONS[2:]
    ],
    ("function/training-launcher", HEAD, 10001, "the launcher uses the Jobs API, not Ray Client"),
    ("function/training-launcher", HEAD, 6379, "nor the GCS"),
    ("predictor/fraud", HEAD, 6379, "a predictor has no business with Ray"),
    ("knative-local-gateway", HEAD, 8265, "the dashboard is not exposed through the mesh"),
    ("kuberay-operator", WORKER, 8265, "the operator talks to the head only"),
    # Stores, to those that use them only.
    ("function/drift", "postgres", 5432, "drift scores windows, it reads no Feast"),
    ("function/rollout", "postgres", 5432, "rollout reads no Feast"),
    ("function/training-launcher", "redis", 6379, "the launcher only passes the secrets on"),
    ("source/storage-source", "postgres", 5432, "the source only emits events"),
    ("predictor/fraud", "rabbitmq", 5672, "a predictor consumes no queue"),
    ("function/ingest", "rabbitmq", 5672, "the RabbitmqSource consumes, not ingest"),
    (WORKER, "postgres", 5432, "the driver, on the head, reads Feast"),
    # The Kubernetes API, to the two functions with RBAC rights only.
    ("function/ingest", "kube-apiserver", 6443, "ingest has no Kubernetes rights"),
    ("predictor/fraud", "kube-apiserver", 443, "a predictor has no Kubernetes rights"),
    (HEAD, "kube-apiserver", 6443, "no in-tree autoscaler"),
    # Workloads reach each other only through the Broker.
    ("function/ingest", "function/drift", 8012, "events go through the Broker"),
    ("function/ingest", "predictor/fraud", 8012, "predictions come through the gateway"),
    ("predictor/fraud", "function/drift", 8012, "inference.logged goes through the Broker"),
    ("function/drift", "broker-filter", 8080, "the Broker's filter is no publisher's target"),
    # Another namespace reaches nothing here directly.
    ("stranger", "function/ingest", 8012, "only the gateway and the activator"),
    ("stranger", "predictor/fraud", 8012, "predictions come through the gateway"),
    ("stranger", "predictor/fraud", 8080, "not even the model server's port"),
    ("stranger", HEAD, 8265, "the Ray dashboard runs any code it is sent"),
    ("stranger", HEAD, 10001, "Ray Client"),
    ("stranger", HEAD, 6379, "the GCS"),
    ("stranger", WORKER, 10002, "a Ray worker port"),
    # Monitoring scrapes metrics, nothing else, and only Prometheus does.
    ("prometheus", "function/ingest", 8012, "Prometheus sends no events"),
    ("prometheus", HEAD, 8265, "the dashboard is not a metrics port"),
    ("grafana", "function/ingest", 9091, "only Prometheus scrapes"),
    # The control API: people through the gateway; it reads state, not Ray or Feast.
    *[(name, CONTROL, 8090, "functions talk through the Broker") for name in FUNCTIONS],
    ("predictor/fraud", CONTROL, 8090, "a predictor has nothing to ask the dashboard"),
    (HEAD, CONTROL, 8090, "a training run reports through the Broker"),
    ("stranger", CONTROL, 8090, "another namespace only through the gateway"),
    ("activator", CONTROL, 8090, "no Knative Service: the activator never fronts it"),
    ("grafana", CONTROL, 8090, "only Prometheus scrapes"),
    (CONTROL, HEAD, 8265, "the dashboard submits no Ray jobs"),
    (CONTROL, HEAD, 6379, "nor joins Ray's GCS"),
    (CONTROL, "postgres", 5432, "it reads state from the registry volume, not Feast"),
    (CONTROL, "redis", 6379, "nor the online store"),
    (CONTROL, "function/rollout", 8012, "a rollout step is applied, not sent to rollout"),
    (CONTROL, "predictor/fraud", 8012, "endpoints only through the gateway"),
    (CONTROL, "broker-filter", 8080, "the Broker's filter is no publisher's target"),
    (CONTROL, "istiod", 8080, "istiod only on its xDS port"),
]


@pytest.mark.parametrize(("source", "target", "port", "why"), DENIED)
def test_a_flow_nobody_needs_is_denied(
    policies: PolicySet,
    endpoints: dict[str, Endpoint],
    source: str,
    target: str,
    port: int,
    why: str,
) -> None:
    allowed_by = policies.rules_allowing(endpoints[source], endpoints[target], port)
    assert not policies.allows(endpoints[source], endpoints[target], port), (why, allowed_by)


def test_nothing_leaves_the_cluster_but_api_calls_of_the_pods_with_rights(
    policies: PolicySet, pods: dict[str, Endpoint]
) -> None:
    """The API server has no labels, so it is an ipBlock: the one rule to an outside address.

    The pods with RBAC rights: the launcher, rollout and the control API."""
    api_clients = {"function/training-launcher", "function/rollout", CONTROL}
    for name, endpoint in pods.items():
        for port in (22, 53, 80, 443, 5432, 6379, 6443, 8080, 8443):
            expected = name in api_clients and port in API_SERVER_PORTS
            assert policies.allows(endpoint, ELSEWHERE, port) is expected, (name, port)
        assert policies.allows(endpoint, API_SERVER, 6443) is (name in api_clients), name
        # And nothing outside the cluster connects in.
        assert not policies.allows(ELSEWHERE, endpoint, 8012), name


def test_the_broker_ingress_is_not_isolated_by_these_policies(policies: PolicySet) -> None:
    """Knative's multi-tenant ingress lives in knative-eventing: who may post to it is
    Knative's to decide (EventPolicies, OIDC), not a NetworkPolicy of the falaj namespace."""
    assert not policies.isolated(BROKER_INGRESS, "Ingress")
    assert not policies.isolated(STRANGER, "Egress")


# -- the evaluator itself ------------------------------------------------------------------------


def test_the_evaluator_follows_kubernetes_semantics() -> None:
    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "a"},
            "spec": spec,
        }

    web = pod("web", "a", {"app": "web"})
    db = pod("db", "a", {"app": "db"})
    other = pod("other", "b", {"app": "web"})
    deny_ingress = policy("deny", {"podSelector": {}})
    db_from_web = policy(
        "db",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"port": 5432}],
                }
            ],
        },
    )
    # No policy: everything passes.
    assert PolicySet([]).allows(web, db, 5432)
    # Isolated for ingress (policyTypes default to Ingress), nothing allowed.
    assert not PolicySet([deny_ingress]).allows(web, db, 5432)
    # Allows add up; a podSelector alone means the policy's own namespace.
    both = PolicySet([deny_ingress, db_from_web])
    assert both.allows(web, db, 5432)
    assert not both.allows(web, db, 5433)
    assert not both.allows(other, db, 5432)
    assert not both.allows(web, db, 5432, "UDP")
    # Egress of the sender counts too, in its own namespace.
    deny_egress = policy("deny-out", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert not PolicySet([db_from_web, deny_egress]).allows(web, db, 5432)
    # A namespaceSelector with a podSelector: both must match; ipBlock for outside addresses.
    egress = policy(
        "out",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "b"}},
                            "podSelector": {"matchLabels": {"app": "web"}},
                        },
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8010}],
                }
            ],
        },
    )
    out = PolicySet([egress])
    assert out.allows(web, other, 8005)
    assert not out.allows(web, pod("x", "b", {"app": "db"}), 8005)
    assert not out.allows(web, other, 8011)
    assert out.allows(web, outside("in", "10.2.3.4"), 8000)
    assert not out.allows(web, outside("excepted", "10.1.2.3"), 8000)
    assert out.rules_allowing(web, other, 8005) == ["egress:out"]
    # Expressions.
    assert selector_matches({"matchExpressions": [{"key": "k", "operator": "Exists"}]}, {"k": ""})
    assert selector_matches(
        {"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["v"]}]}, {}
    )
    assert not selector_matches(
        {"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}, {"k": "w"}
    )


# -- the mesh: injection in the base, STRICT mTLS as a component ------------------------------


def _mesh_overlay(folder: Path) -> Path:
    """An overlay of the base plus the component (kustomize wants paths relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{os.path.relpath(BASE, folder)}]\n"
        f"components: [{os.path.relpath(MESH_COMPONENT, folder)}]\n"
    )
    return folder


PEER_AUTHENTICATION_SPEC = {"selector", "mtls", "portLevelMtls"}
MTLS_MODES = {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}


def test_the_namespace_is_in_the_mesh(base_rendered: list[dict[str, Any]]) -> None:
    [namespace] = [doc for doc in base_rendered if doc["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def test_the_mesh_component_renders_strict_mtls_for_the_namespace(
    schema_store: SchemaStore,
    core_schemas: CoreSchemas,
    tmp_path: Path,
    base_rendered: list[dict[str, Any]],
    pods: dict[str, Endpoint],
) -> None:
    docs = render_overlay(_mesh_overlay(tmp_path / "overlay"))

    added = [doc for doc in docs if doc["kind"] == "PeerAuthentication"]
    rest = [doc for doc in docs if doc["kind"] != "PeerAuthentication"]
    # The component adds PeerAuthentications and changes nothing else.
    assert rest == base_rendered
    assert [line for doc in rest for line in doc_problems(doc, schema_store, core_schemas)] == []
    for doc in added:
        assert doc["apiVersion"] == "security.istio.io/v1"
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert set(doc["spec"]) <= PEER_AUTHENTICATION_SPEC
        assert doc["spec"]["mtls"]["mode"] in MTLS_MODES
    by_name = {doc["metadata"]["name"]: doc["spec"] for doc in added}
    # Namespace-wide (no selector, named `default`): STRICT.
    assert by_name.pop("default") == {"mtls": {"mode": "STRICT"}}
    # The one exception is the Ray pods', and it selects nothing else.
    assert list(by_name) == ["ray-nodes"]
    exception = by_name["ray-nodes"]
    assert exception["mtls"] == {"mode": "PERMISSIVE"}
    relaxed = {
        name for name, p in pods.items() if selector_matches(exception["selector"], p.labels)
    }
    assert relaxed == {HEAD, WORKER}


def test_the_mesh_component_is_opt_in() -> None:
    """`falaj up` reads the base (no components, no PeerAuthentication locally), and a
    development cluster's activator runs outside the mesh (the component's header)."""
    kustomization = yaml.safe_load((MESH_COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    assert "mesh-mtls" not in (BASE / "kustomization.yaml").read_text()
    assert "mesh-mtls" not in (LOCAL_OVERLAY / "kustomization.yaml").read_text()
    # The local runtime still reads the base, policies and all.
    assert sorted(load_topology(BASE).services) == [
        "drift",
        "ingest",
        "rollout",
        "training-launcher",
    ]
