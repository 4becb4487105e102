"""The real RabbitMQ on 127.0.0.1:5672, as the integration tests use it: publish, count, clean up.

Counts come from a passive ``queue.declare``: ``messages`` is what is *ready*
(not handed to a consumer), ``consumers`` who is attached. A message a
consumer holds unacked counts in neither until that consumer goes away; then
it is ready again -- which is how a test tells "not acked" from "acked".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

HOST = "127.0.0.1"
PORT = 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"


@dataclass(frozen=True)
class QueueState:
    messages: int
    consumers: int


class Amqp:
    """One connection for a test; every queue and exchange it was told about is deleted at close."""

    def __init__(self, url: str = URL) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    def forget_later(
        self, *, queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()
    ) -> None:
        self._queues.extend(queues)
        self._exchanges.extend(exchanges)

    def state(self, queue: str) -> QueueState | None:
        """The queue's counts, or None while it does not exist."""
        try:
            frame = self.channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            self.channel = self.connection.channel()  # a 404 closes the channel
            return None
        return QueueState(frame.method.message_count, frame.method.consumer_count)

    def publish(
        self,
        exchange: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        **properties: Any,
    ) -> None:
        self.channel.basic_publish(
            exchange,
            routing_key="",
            body=body,
            properties=pika.BasicProperties(headers=headers, delivery_mode=2, **properties),
        )

    def close(self) -> None:
        for queue in self._queues:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._open_channel().queue_delete(queue)
        for exchange in self._exchanges:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._open_channel().exchange_delete(exchange)
        with contextlib.suppress(pika.exceptions.AMQPError):
            self.connection.close()

    def _open_channel(self) -> Any:
        if not self.channel.is_open:
            self.channel = self.connection.channel()
        return self.channel


def reachable(url: str = URL) -> str | None:
    """None when a RabbitMQ answers at ``url``; else why not, in a few words."""
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
