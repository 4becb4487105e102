"""Kubernetes NetworkPolicies, evaluated offline: may this pod reach that one on this port?

No cluster (and no CNI) runs in the tests, so ``PolicySet`` answers with the
semantics of ``networking.k8s.io/v1`` as the Kubernetes documentation states
them:

- a pod selected by any policy whose ``policyTypes`` include a direction is
  isolated in that direction; a pod no policy selects is not;
- an isolated pod's connection passes when *any* rule of *any* policy
  selecting it allows it (policies only add allows);
- a connection needs the sender's egress and the receiver's ingress: each
  side is judged by the policies of its own namespace;
- a rule without ``from``/``to`` matches every peer, without ``ports`` every
  port; a peer with a ``podSelector`` alone means pods of the policy's own
  namespace, a ``namespaceSelector`` (with an optional ``podSelector``) pods
  of the matching namespaces, an ``ipBlock`` addresses outside the cluster.

``policyTypes`` left out default as the API server defaults them (Ingress,
plus Egress when the policy has egress rules). Named ports are not modelled:
``PolicySet`` refuses them rather than guess. (The kind's strict schema is
``falaj.manifest_schemas``', with the other core kinds.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["Ingress", "Egress"]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (namespace + labels) or an address outside the cluster."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Only for addresses outside the cluster (``namespace`` is None then).
    ip: str | None = None

    def __post_init__(self) -> None:
        if (self.namespace is None) == (self.ip is None):
            raise ValueError(f"{self.name}: give a pod's namespace or an outside address, not both")

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None

    def __str__(self) -> str:
        return self.name


def pod(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> Endpoint:
    return Endpoint(name, namespace=namespace, labels=dict(labels or {}))


def outside(name: str, ip: str) -> Endpoint:
    return Endpoint(name, ip=ip)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels; ``{}`` matches everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            raise ValueError(f"unknown label selector operator {operator!r}")
        if not ok:
            return False
    return True


def policy_types(policy: Mapping[str, Any]) -> set[str]:
    """The directions a policy isolates, defaulted as the API server defaults them."""
    spec = policy.get("spec", {})
    declared = spec.get("policyTypes")
    if declared is not None:
        return set(declared)
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


class PolicySet:
    """The NetworkPolicies of some namespaces, asked about connections."""

    def __init__(
        self,
        docs: Iterable[Mapping[str, Any]],
        *,
        namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.policies = [doc for doc in docs if doc.get("kind") == "NetworkPolicy"]
        for policy in self.policies:
            if not policy.get("metadata", {}).get("namespace"):
                raise ValueError(
                    f"NetworkPolicy {policy['metadata'].get('name')!r} has no namespace; "
                    f"evaluate rendered manifests (kustomize sets it)"
                )
        self._namespace_labels = dict(namespace_labels or {})

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        # Kubernetes sets kubernetes.io/metadata.name on every namespace.
        return {**self._namespace_labels.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}

    def selecting(self, endpoint: Endpoint, direction: Direction) -> list[Mapping[str, Any]]:
        """The policies that select ``endpoint`` for ``direction`` (isolating it there)."""
        if not endpoint.is_pod:
            return []
        return [
            policy
            for policy in self.policies
            if policy["metadata"]["namespace"] == endpoint.namespace
            and direction in policy_types(policy)
            and selector_matches(policy["spec"].get("podSelector", {}), endpoint.labels)
        ]

    def isolated(self, endpoint: Endpoint, direction: Direction) -> bool:
        return bool(self.selecting(endpoint, direction))

    def allows(self, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether a connection from ``source`` to ``target``'s ``port`` passes both sides."""
        return self.egress_allows(source, target, port, protocol) and self.ingress_allows(
            source, target, port, protocol
        )

    def egress_allows(self, source: Endpoint, target: Endpoint, port: int, protocol: str) -> bool:
        return self._side_allows(source, target, port, protocol, "Egress")

    def ingress_allows(self, source: Endpoint, target: Endpoint, port: int, protocol: str) -> bool:
        return self._side_allows(target, source, port, protocol, "Ingress")

    def rules_allowing(
        self, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
    ) -> list[str]:
        """The policies whose rules let this connection out of ``source`` or into ``target``."""
        sides: tuple[tuple[Endpoint, Endpoint, Direction], ...] = (
            (source, target, "Egress"),
            (target, source, "Ingress"),
        )
        names = []
        for subject, peer, direction in sides:
            for policy in self.selecting(subject, direction):
                if self._policy_allows(policy, peer, port, protocol, direction):
                    names.append(f"{direction.lower()}:{policy['metadata']['name']}")
        return names

    # -- the semantics ---------------------------------------------------------------------

    def _side_allows(
        self, subject: Endpoint, peer: Endpoint, port: int, protocol: str, direction: Direction
    ) -> bool:
        policies = self.selecting(subject, direction)
        if not policies:
            return True  # not isolated in this direction
        return any(self._policy_allows(p, peer, port, protocol, direction) for p in policies)

    def _policy_allows(
        self,
        policy: Mapping[str, Any],
        peer: Endpoint,
        port: int,
        protocol: str,
        direction: Direction,
    ) -> bool:
        spec = policy["spec"]
        rules = spec.get("ingress" if direction == "Ingress" else "egress") or []
        peers_key = "from" if direction == "Ingress" else "to"
        namespace = policy["metadata"]["namespace"]
        for rule in rules:
            peers = rule.get(peers_key) or []
            if peers and not any(self._peer_matches(p, peer, namespace) for p in peers):
                continue
            if _ports_match(rule.get("ports") or [], port, protocol):
                return True
        return False

    def _peer_matches(
        self, peer_spec: Mapping[str, Any], endpoint: Endpoint, policy_namespace: str
    ) -> bool:
        if "ipBlock" in peer_spec:
            if endpoint.is_pod:
                # Pod IPs are cluster-internal: this evaluator treats ipBlocks as meant,
                # addresses outside the cluster only.
                return False
            block = peer_spec["ipBlock"]
            address = ipaddress.ip_address(endpoint.ip or "")
            inside = address in ipaddress.ip_network(block["cidr"])
            excepted = any(address in ipaddress.ip_network(c) for c in block.get("except", []))
            return inside and not excepted
        if not endpoint.is_pod:
            return False
        assert endpoint.namespace is not None
        if "namespaceSelector" in peer_spec:
            namespace_ok = selector_matches(
                peer_spec["namespaceSelector"], self.namespace_labels(endpoint.namespace)
            )
        else:
            namespace_ok = endpoint.namespace == policy_namespace
        return namespace_ok and selector_matches(peer_spec.get("podSelector"), endpoint.labels)


def _ports_match(ports: Sequence[Mapping[str, Any]], port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if not isinstance(wanted, int):
            raise ValueError(f"named port {wanted!r}: PolicySet only evaluates port numbers")
        if wanted <= port <= entry.get("endPort", wanted):
            return True
    return False
