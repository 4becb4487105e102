"""The router's client for its predictors: aiohttp over keep-alive connections.

A proxied prediction is about a millisecond of the predictor's time, so the
client's own cost is most of the router's overhead. httpx's async client cost
the router ~3.6 ms a request at p50 on two cores (py-spy: its connection pool
and h11); aiohttp, the broker's delivery client for the same reason, costs a
fraction of that. One session per router process, opened on its event loop.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from inference.binary_tensors import HEADER
from inference.errors import UpstreamError


@dataclass(frozen=True)
class Answer:
    status: int
    content: bytes
    content_type: str
    #: ``inference-header-content-length`` of a binary V2 answer.
    binary_header_length: int | None = None


class Upstream:
    def __init__(self, *, timeout_s: float = 30.0, verify: ssl.SSLContext | bool = True) -> None:
        self.timeout_s = timeout_s
        self.verify = verify
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            # Loopback predictors: no cookies, no proxies from the environment.
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self.verify),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        if self._session is None:
            raise UpstreamError("the router's upstream client is used before start()")
        try:
            async with self._session.post(url, data=body, headers=dict(headers)) as response:
                content = await response.read()
                binary = response.headers.get(HEADER, "")
                return Answer(
                    response.status,
                    content,
                    response.headers.get("content-type", "application/json"),
                    int(binary) if binary.isdigit() else None,
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
