"""Group commit: the broker writes its queue in few commits, however many callers there are.

A commit with ``synchronous=FULL`` costs a fsync (~0.25 ms here). New events
asked for in the same turn of the event loop go into one commit, made right
after that turn; the dispatcher's acks (outcomes of deliveries) wait up to
``UPDATE_LINGER_S`` to ride along with the next one, since nothing waits on
them but the queue's bookkeeping.

The commit runs on the event loop's own thread. A writer thread was tried
first: the fsync then overlapped the next request's parsing, but each commit
cost two GIL hand-offs between the threads, and at 1,000 single events a
second the broker spent more on those than the fsync blocks the loop
(benchmarks/broker.py, README).

Only this writer appends, so new deliveries reach ``on_appended`` in commit
order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from eventing.queue import Appended, Batch, DeliveryUpdate, EventQueue, PendingDelivery
from falaj.logs import get_logger

#: Called after each commit with the deliveries it created.
AppendedHandler = Callable[[list[PendingDelivery]], None]
#: How long acks may wait for the next commit of new events before they get their own.
UPDATE_LINGER_S = 0.01


class QueueWriter:
    def __init__(
        self,
        queue: EventQueue,
        on_appended: AppendedHandler,
        *,
        update_linger_s: float = UPDATE_LINGER_S,
    ) -> None:
        self.queue = queue
        self.on_appended = on_appended
        self.update_linger_s = update_linger_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: list[tuple[Batch, asyncio.Future[Appended]]] = []
        self._updates: list[tuple[Sequence[DeliveryUpdate], asyncio.Future[dict[int, int]]]] = []
        self._soon: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None
        self._stopped = False
        self.log = get_logger(component="broker.writer")

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def alive(self) -> bool:
        return self._loop is not None and not self._stopped

    def stop(self) -> None:
        """Write what was asked for already; take nothing after."""
        self._flush()
        self._stopped = True

    # -- requests ---------------------------------------------------------------

    async def append(self, batch: Batch) -> Appended:
        """Store events and their deliveries; returns once they are on disk."""
        future = self._running_loop().create_future()
        self._batches.append((batch, future))
        self._commit_soon()
        return await future

    def submit_update(self, updates: Sequence[DeliveryUpdate]) -> asyncio.Future[dict[int, int]]:
        """Record outcomes with the next commit; the future gives the dead letters' ids."""
        future = self._running_loop().create_future()
        self._updates.append((updates, future))
        if self._soon is None and self._later is None:
            self._later = self._running_loop().call_later(self.update_linger_s, self._flush)
        return future

    async def update(self, updates: Sequence[DeliveryUpdate]) -> dict[int, int]:
        return await self.submit_update(updates)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._stopped or self._loop is None:
            raise RuntimeError("the broker's queue writer is not running; nothing more is stored")
        return self._loop

    def _commit_soon(self) -> None:
        if self._soon is None:
            # After the callbacks of this turn: what they ask for joins the commit.
            self._soon = self._running_loop().call_soon(self._flush)

    def catch_up_threadsafe(self) -> None:
        """From the checkpoint thread: finish the checkpoint between two commits."""
        loop = self._loop
        if loop is not None and not self._stopped:
            with contextlib.suppress(RuntimeError):  # a closing loop: the next start does it
                loop.call_soon_threadsafe(self._catch_up)

    def _catch_up(self) -> None:
        if self._stopped:
            return
        try:
            self.queue.checkpoint()
        except Exception as exc:
            self.log.warning("finishing a checkpoint failed", error=str(exc))

    # -- the commit -------------------------------------------------------------

    def _flush(self) -> None:
        self._soon = None
        if self._later is not None:
            self._later.cancel()
            self._later = None
        batches, self._batches = self._batches, []
        updates, self._updates = self._updates, []
        if not batches and not updates:
            return
        try:
            appended, dead_letters = self.queue.write(
                [batch for batch, _ in batches],
                [update for requested, _ in updates for update in requested],
            )
        except Exception as exc:
            # A full disk or a broken file: every caller learns it (ingress
            # answers 5xx, so the producer retries); nothing was stored.
            self.log.error("queue write failed", error=str(exc))
            waiting: list[asyncio.Future[Any]] = [f for _, f in batches]
            waiting += [f for _, f in updates]
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        new = [delivery for result in appended for delivery in result.deliveries]
        if new:
            try:
                self.on_appended(new)
            except Exception:
                # They are stored: the dispatcher reads them back anyway.
                self.log.exception("telling the dispatcher about new deliveries failed")
        for (_, stored), result in zip(batches, appended, strict=True):
            if not stored.done():
                stored.set_result(result)
        for requested, written in updates:
            if not written.done():
                mine = {u.delivery_id for u in requested}
                written.set_result({k: v for k, v in dead_letters.items() if k in mine})
