"""The residency policy: one object, checked at every boundary.

A boundary is where data or control crosses into something that has a region:
a storage location being written, an event being accepted, a training job being
launched, a model being deployed, a sink receiving events. A refusal names the
resource and its region, and is written to the audit log.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlparse

from falaj.audit import AuditLog, Outcome
from falaj.errors import ResidencyViolation
from falaj.settings import Settings

LOCAL_SCHEMES = frozenset({"", "file"})
#: Schemes whose authority is a server (host:port), not a bucket: Feast's online
#: store and registry (falaj/feast_stores.py). A server declared without a port
#: covers all of its ports, and one on a loopback address is this machine.
SERVER_SCHEMES = frozenset({"redis", "rediss", "postgresql"})


class Boundary(StrEnum):
    STORAGE_WRITE = "storage-write"
    STORAGE_READ = "storage-read"
    EVENT_ACCEPT = "event-accept"
    JOB_LAUNCH = "job-launch"
    MODEL_DEPLOY = "model-deploy"
    SINK = "sink"


@dataclass(frozen=True, kw_only=True)
class ResidencyPolicy:
    allowed_regions: frozenset[str]
    local_region: str
    storage_regions: Mapping[str, str] = field(default_factory=dict)
    audit: AuditLog | None = None
    actor: str = "falaj"

    @classmethod
    def from_settings(
        cls, settings: Settings, *, audit: AuditLog | None = None, actor: str = "falaj"
    ) -> ResidencyPolicy:
        return cls(
            allowed_regions=frozenset(settings.allowed_regions),
            local_region=settings.region,
            storage_regions=dict(settings.storage_regions),
            audit=audit,
            actor=actor,
        )

    def region_of(self, location: str) -> str | None:
        """The region a storage location lives in, or None when nobody declared it."""
        scheme = urlparse(location).scheme
        # A one-letter "scheme" is a Windows drive, never a remote store.
        if scheme in LOCAL_SCHEMES or len(scheme) == 1:
            return self.local_region
        # Longest declared prefix wins, so s3://bank/eu/ can differ from s3://bank/.
        matches = [p for p in self.storage_regions if _covers(p, location)]
        if not matches:
            if scheme in SERVER_SCHEMES and _is_loopback(urlparse(location).hostname):
                # A server on this machine keeps its data where a local file would.
                return self.local_region
            return None
        return self.storage_regions[max(matches, key=len)]

    def check_region(self, region: str | None, *, resource: str, boundary: Boundary) -> None:
        """Refuse (and audit) a resource whose region is not allowed."""
        if region in self.allowed_regions:
            return
        allowed = ", ".join(sorted(self.allowed_regions))
        if region is None:
            message = (
                f"{boundary}: {resource} has no known region; declare it in "
                f"FALAJ_STORAGE_REGIONS (PREFIX=REGION) with one of: {allowed}"
            )
        else:
            message = (
                f"{boundary}: {resource} is in region {region!r}, outside the allowed "
                f"regions ({allowed}); keep it in-region or change the policy"
            )
        if self.audit is not None:
            self.audit.record(
                "policy.refused",
                actor=self.actor,
                resource=resource,
                region=region or "unknown",
                outcome=Outcome.REFUSED,
                details={"boundary": str(boundary), "reason": message},
            )
        raise ResidencyViolation(
            message, resource=resource, region=region or "unknown", boundary=str(boundary)
        )

    def check_location(self, location: str, *, boundary: Boundary = Boundary.STORAGE_WRITE) -> None:
        self.check_region(self.region_of(location), resource=location, boundary=boundary)

    def destination_region(self, url: str) -> str | None:
        """The region of a URL events or payloads are sent to.

        This machine (loopback) and the cluster itself (a ``*.svc`` host, a bare
        service name) are where this process runs; anything else has the region
        ``FALAJ_STORAGE_REGIONS`` declares for it, or none.
        """
        if stays_here(url):
            return self.local_region
        # Declared prefixes name the place, not who logs in there.
        return self.region_of(without_credentials(url, mask=""))

    def check_destination(self, url: str, *, resource: str) -> None:
        """Refuse (and audit) sending to ``url``: a sink, a subscriber, a logger."""
        self.check_region(
            self.destination_region(url),
            resource=f"{resource} -> {without_credentials(url)}",
            boundary=Boundary.SINK,
        )


def stays_here(url: str) -> bool:
    """True for this machine (loopback) and the cluster itself (a ``*.svc`` host, a bare name)."""
    host = urlparse(url).hostname or ""
    in_cluster = host.endswith((".svc", ".svc.cluster.local")) or bool(host and "." not in host)
    return _is_loopback(host) or in_cluster


def _covers(prefix: str, location: str) -> bool:
    """True when a declared prefix covers a location.

    Within a bucket a prefix is a string prefix of the key, as in S3; but a
    bucket name is whole: ``s3://bank`` covers ``s3://bank/x``, never
    ``s3://bank-eu/x``, which is another bucket and maybe another region.
    """
    if not location.startswith(prefix):
        return False
    declared = urlparse(prefix)
    if declared.path in ("", "/"):
        found = urlparse(location)
        if found.netloc == declared.netloc:
            return True
        try:
            any_port = declared.scheme in SERVER_SCHEMES and declared.port is None
        except ValueError:  # a declared port that is no number matches nothing more
            any_port = False
        return any_port and found.hostname == declared.hostname
    return True


def without_credentials(url: str, *, mask: str = "***@") -> str:
    """``url`` with its user and password replaced by ``mask`` (never shown, never matched)."""
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    netloc = mask + (parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()


def _is_loopback(host: str | None) -> bool:
    """True for a host name or address that is this machine."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
