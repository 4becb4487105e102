"""A subscriber that fails at random, for the exactly-once tests.

Run as ``python -m tests.support.flaky_subscriber``.

Each request draws one fate from a seeded generator:

* ``503`` or ``429`` before doing anything (retried by the broker);
* ``hang``: no answer for ``--hang-s`` (longer than the broker's delivery
  timeout), then the work is done anyway, after the broker gave up;
* ``lost``: the work is done and committed, then ``500`` (a response lost
  after the effect: the broker retries an event that already had its effect);
* ``rollback``: the work is written, then the handler fails inside its
  transaction (``500``; the effect is rolled back);
* otherwise the work is done and answered ``200``.

The work is one row in ``effects``, written through ``IdempotencyKeys.once``
so a duplicate has no second effect. ``effects`` has no uniqueness of its
own: a second effect would show as a second row. ``GET /stats`` counts fates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from falaj.idempotency import IdempotencyKeys

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FATES = (("503", 0.10), ("429", 0.05), ("hang", 0.02), ("lost", 0.08), ("rollback", 0.05))


class RolledBack(Exception):
    """Raised inside the transaction on purpose."""


class FlakySubscriber:
    def __init__(self, db: Path, token: str, seed: int, hang_s: float) -> None:
        self.keys = IdempotencyKeys(db)
        self.keys.connection.execute(
            "CREATE TABLE IF NOT EXISTS effects (source TEXT, id TEXT, at REAL)"
        )
        self.expected = f"Bearer {token}".encode()
        self.random = random.Random(seed)
        self.hang_s = hang_s
        self.fates: Counter[str] = Counter()

    def fate(self) -> str:
        draw = self.random.random()
        for fate, share in FATES:
            if draw < share:
                return fate
            draw -= share
        return "ok"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["path"] == "/stats":
            effects = self.keys.connection.execute("SELECT count(*) FROM effects").fetchone()[0]
            await _answer(send, 200, {"fates": dict(self.fates), "effects": effects})
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization") != self.expected:
            self.fates["401"] += 1
            await _answer(send, 401, {"error": "not the broker's token"})
            return
        source, event_id = headers[b"ce-source"].decode(), headers[b"ce-id"].decode()
        fate = self.fate()
        self.fates[fate] += 1
        if fate in ("503", "429"):
            await _answer(send, int(fate), {"error": f"scripted {fate}"})
            return
        if fate == "hang":
            await asyncio.sleep(self.hang_s)  # the behaviour under test: slower than the timeout
        status = 500 if fate == "lost" else 200
        try:
            with self.keys.once(source, event_id) as fresh:
                if fresh is None:
                    self.fates["duplicate"] += 1
                else:
                    fresh.execute(
                        "INSERT INTO effects VALUES (?, ?, julianday('now'))", (source, event_id)
                    )
                    if fate == "rollback":
                        raise RolledBack
        except RolledBack:
            status = 500
        await _answer(send, status, {"fate": fate})


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.flaky_subscriber")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hang-s", type=float, default=0.6)
    args = parser.parse_args(argv)
    app = FlakySubscriber(args.db, args.token_file.read_text().strip(), args.seed, args.hang_s)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
