"""A small client for a running platform: the broker's event log and the router.

The demo, the CLI and the end-to-end test use it exactly as a user's script
would, over HTTP with a bearer token.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx

from falaj.closeable import Closeable
from falaj.errors import FalajError, PlatformRequestError
from falaj.events import EventType
from falaj.settings import Settings
from falaj.tls import client_verify

POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Prediction:
    probabilities: list[float]
    version: int
    variant: str
    #: The router's id of this answer: the key an outcome is reported under.
    inference_id: str = ""


class PlatformClient(Closeable):
    def __init__(
        self,
        *,
        broker_url: str,
        router_url: str,
        token: str,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        self.broker_url = broker_url.rstrip("/")
        self.router_url = router_url.rstrip("/")
        self._http = httpx.Client(
            timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}, verify=verify
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, token: str, timeout_s: float = 30.0
    ) -> PlatformClient:
        """A client of the platform these settings describe (its URLs, its TLS trust)."""
        return cls(
            broker_url=settings.broker_ingress,
            router_url=settings.router_url,
            token=token,
            verify=client_verify(settings),
            timeout_s=timeout_s,
        )

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """One request; a ``PlatformRequestError`` when it is refused or nothing answers."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise PlatformRequestError(
                f"cannot {what}: {url} does not answer ({type(exc).__name__}); "
                "is 'falaj up' running?",
                status=HTTPStatus.SERVICE_UNAVAILABLE,
            ) from None
        _raise_for(response, what)
        return response

    # -- events ----------------------------------------------------------------

    def events(
        self, event_type: EventType | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if event_type is not None:
            params["type"] = str(event_type)
        response = self._request("GET", f"{self.broker_url}/events", "list events", params=params)
        events: list[dict[str, Any]] = response.json()
        return events

    def wait_for(
        self,
        event_type: EventType,
        *,
        timeout_s: float,
        where: Callable[[Mapping[str, Any]], bool] = lambda _: True,
        failure: EventType | None = None,
        alive: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the broker's log until an event of ``event_type`` matching ``where`` arrives.

        ``failure`` names an event type that ends the wait with its reason;
        ``alive`` may raise when a process the wait depends on has died.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events(event_type):
                if where(event.get("data") or {}):
                    return event
            if failure is not None:
                for event in self.events(failure):
                    if where(event.get("data") or {}):
                        raise FalajError(f"{failure}: {event.get('data')}")
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise FalajError(f"no {event_type} event within {timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)  # polling the event log, as `kubectl wait` does

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        response = self._request(
            "GET", f"{self.broker_url}/dead-letters", "list dead letters", params={"limit": limit}
        )
        letters: list[dict[str, Any]] = response.json()
        return letters

    def replay(self, dead_letter_id: int) -> dict[str, Any]:
        """Send a dead letter's delivery again, with a fresh retry budget."""
        response = self._request(
            "POST",
            f"{self.broker_url}/dead-letters/{dead_letter_id}/replay",
            f"replay dead letter {dead_letter_id}",
        )
        result: dict[str, Any] = response.json()
        return result

    # -- inference ---------------------------------------------------------------

    def predict(
        self, model: str, rows: Sequence[Sequence[float]], feature_count: int | None = None
    ) -> Prediction:
        """One V2 (Open Inference Protocol) request with the rows as one FP32 tensor."""
        width = feature_count or (len(rows[0]) if rows else 0)
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(rows), width],
                    "datatype": "FP32",
                    "data": [float(v) for row in rows for v in row],
                }
            ]
        }
        response = self._http.post(f"{self.router_url}/v2/models/{model}/infer", json=body)
        _raise_for(response, f"predict with {model}")
        outputs = response.json()["outputs"]
        return Prediction(
            probabilities=[float(v) for v in outputs[0]["data"]],
            version=int(response.headers.get("x-falaj-model-version", "0")),
            variant=response.headers.get("x-falaj-variant", "stable"),
            inference_id=response.headers.get("x-falaj-inference-id", ""),
        )

    def report_outcomes(self, model: str, outcomes: Sequence[tuple[str, float]]) -> dict[str, int]:
        """What really happened to earlier predictions: (inference id, label) pairs."""
        body = [{"inference_id": i, "label": label} for i, label in outcomes]
        response = self._http.post(f"{self.router_url}/v2/models/{model}/outcomes", json=body)
        _raise_for(response, f"report outcomes of {model}")
        counts: dict[str, int] = response.json()
        return counts

    def ab_report(self, model: str) -> dict[str, Any]:
        """The router's live comparison of the variants of ``model``."""
        response = self._request(
            "GET", f"{self.router_url}/v2/models/{model}/ab", f"read the A/B report of {model}"
        )
        report: dict[str, Any] = response.json()
        return report

    def model_ready(self, model: str, versions: set[int]) -> bool:
        """True when the router serves ``model`` with exactly these versions, all loaded."""
        try:
            response = self._http.get(f"{self.router_url}/v2/models/{model}/ready")
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        return {int(v) for v in response.json().get("versions", {})} == versions

    def close(self) -> None:
        self._http.close()


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code < 300:
        return
    # Falaj's endpoints answer errors as {"error": "..."}; say that, not the raw body.
    try:
        reason = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        reason = response.text[:300]
    code = response.status_code
    status = HTTPStatus(code) if 400 <= code < 500 else HTTPStatus.BAD_GATEWAY
    raise PlatformRequestError(f"cannot {what} (HTTP {code}): {reason}", status=status)
