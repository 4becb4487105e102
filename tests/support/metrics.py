"""A process's ``GET /metrics`` as the tests read it: samples by name and labels."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: What Prometheus's text format 0.0.4 is served as.
TEXT_FORMAT = "text/plain; version=0.0.4"
#: One sample: its name and its labels.
SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scraped:
    samples: dict[SampleKey, float]

    @classmethod
    def of(cls, response: httpx.Response) -> Scraped:
        """A 200 answer of ``/metrics``, parsed (fails the test on anything else)."""
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(TEXT_FORMAT)
        return cls.parse(response.text)

    @classmethod
    def parse(cls, text: str) -> Scraped:
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when there is none (nothing counted yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self, prefix: str = "falaj_") -> set[str]:
        return {name for name, _ in self.samples if name.startswith(prefix)}


def scrape(url: str, token: str) -> Scraped:
    """``GET <url>`` with a bearer token, parsed."""
    return Scraped.of(httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0))
