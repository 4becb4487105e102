"""One Trigger's deliveries in memory: a bounded window over the durable queue.

Every delivery is in the queue first (that is what the 202 promised); the
lane reads a window of them back (``refill``) and the dispatcher works from
memory until it needs more. The ingress process says when a commit created
deliveries for this Trigger (``mark_new``); an idle lane also looks at the
queue once in a while on its own, so a lost notice delays, never loses.

The invariant that keeps a delivery from being lost or taken twice: every
pending delivery of this Trigger with an id at most ``cursor`` is in memory
(ready, waiting for a retry, or in flight), and a refill reads ids above
``cursor`` only. While ``overflow`` is set the queue may hold more above it;
a notice that arrives while a refill is reading (``dropped``) keeps it set,
so the next refill reads what that one may have missed.

Pure bookkeeping on the event loop's thread: no I/O, no locks.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from eventing.queue import PendingDelivery
from falaj.topology import DeliverySpec, TriggerSpec


@dataclass(eq=False)
class Lane:
    trigger: TriggerSpec
    delivery: DeliverySpec
    #: How many deliveries of this Trigger may be in flight at once.
    concurrency: int
    #: How many deliveries the lane holds in memory at most (ready + waiting + in flight).
    window: int
    ready: deque[PendingDelivery] = field(default_factory=deque)
    #: Deliveries waiting for their retry time: (due_at, id, delivery).
    waiting: list[tuple[float, int, PendingDelivery]] = field(default_factory=list)
    in_flight: int = 0
    #: The highest delivery id the lane has taken in.
    cursor: int = 0
    #: True when the queue may hold pending deliveries above ``cursor``: refill before idling.
    overflow: bool = True
    #: A notice of new deliveries came since the last refill began.
    dropped: bool = False
    #: Nothing is taken before this time: the subscriber has no endpoint yet.
    paused_until: float = 0.0
    #: When the lane last read the queue (``time.time()``).
    checked_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.window < self.concurrency:
            raise ValueError(
                f"expected 1 <= concurrency <= window, got concurrency={self.concurrency}, "
                f"window={self.window}"
            )

    @property
    def name(self) -> str:
        return self.trigger.name

    def held(self) -> int:
        return len(self.ready) + len(self.waiting) + self.in_flight

    def room(self) -> int:
        return max(0, self.window - self.held())

    # -- taking deliveries in -------------------------------------------------------

    def mark_new(self) -> None:
        """The queue has new deliveries for this Trigger: read them before idling."""
        self.overflow = True
        self.dropped = True
        self.wake.set()

    def begin_refill(self) -> tuple[int, int]:
        """Start reading back from the queue: (after this id, at most this many)."""
        self.dropped = False
        return self.cursor, self.room()

    def refilled(self, deliveries: Sequence[PendingDelivery], limit: int) -> None:
        """What a refill read, oldest first; ``limit`` is what it asked for."""
        for delivery in deliveries:
            if delivery.id > self.cursor:
                self.schedule(delivery)
                self.cursor = delivery.id
        if len(deliveries) < limit and not self.dropped:
            self.overflow = False
        if deliveries:
            self.wake.set()

    def requeue(self, delivery: PendingDelivery) -> None:
        """A replayed dead letter: back in, unless a refill will read it anyway."""
        if delivery.id > self.cursor:
            self.mark_new()  # not read yet: the next refill has it
            return
        self.schedule(delivery)
        self.wake.set()

    def schedule(self, delivery: PendingDelivery) -> None:
        heapq.heappush(self.waiting, (delivery.due_at, delivery.id, delivery))

    def pause(self, delivery: PendingDelivery, until: float) -> None:
        """No endpoint yet: put the delivery back first in line and take nothing until then."""
        self.paused_until = until
        self.ready.appendleft(delivery)

    # -- handing deliveries out -------------------------------------------------------

    def take(self, now: float) -> PendingDelivery | None:
        """The next delivery that is due, or None."""
        if now < self.paused_until:
            return None
        while self.waiting and self.waiting[0][0] <= now:
            self.ready.append(heapq.heappop(self.waiting)[2])
        if not self.ready:
            return None
        self.in_flight += 1
        return self.ready.popleft()

    def finished(self) -> None:
        """A delivery taken out is done with (delivered, dead, or back in ``waiting``)."""
        self.in_flight -= 1

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the lane may sleep before something is due, at most ``idle_s``."""
        due = [self.paused_until] if now < self.paused_until else []
        if self.waiting:
            due.append(self.waiting[0][0])
        return min(idle_s, max(0.0, min(due) - now)) if due else idle_s
