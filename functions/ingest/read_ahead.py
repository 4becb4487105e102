"""Reading a file's next chunk on a thread while the caller handles this one.

pyarrow parses CSV and decodes Parquet without the GIL, so on two cores the
next chunk's parsing overlaps this chunk's validation and writes (py-spy: the
reader was 13% of ingesting a 1M-row file, on the one thread doing everything).
One chunk waits at most, so memory holds two chunks, whatever the file's size.
An error the reader raises reaches the caller in its place, after the chunks
read before it; leaving the ``with`` block early stops the reader, waits for
its thread and closes the chunks' generator (its files).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

_T = TypeVar("_T")
#: Seconds between the reader's looks at whether the caller has stopped, while
#: it waits for room to hand a chunk over.
_POLL_S = 0.05


class ReadAhead(Generic[_T]):
    """``with ReadAhead(chunks) as ahead: for chunk in ahead: ...``"""

    def __init__(self, chunks: Iterator[_T]) -> None:
        self._chunks = chunks
        self._handoff: queue.Queue[tuple[bool, _T | BaseException | None]] = queue.Queue(1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, name="ingest-read-ahead", daemon=True)

    def __enter__(self) -> ReadAhead[_T]:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()
        close = getattr(self._chunks, "close", None)
        if close is not None:  # the reader's thread is done: safe to close here
            close()

    def __iter__(self) -> Iterator[_T]:
        while True:
            more, item = self._handoff.get()
            if isinstance(item, BaseException):
                raise item
            if not more:
                return
            yield item  # type: ignore[misc]  # a chunk, when more is True

    def _read(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._hand_over(True, chunk):
                    return
        except BaseException as error:  # raised to the caller, in its place
            self._hand_over(False, error)
            return
        self._hand_over(False, None)

    def _hand_over(self, more: bool, item: _T | BaseException | None) -> bool:
        """Put ``item`` for the caller; False when the caller stopped first."""
        while not self._stopped.is_set():
            try:
                self._handoff.put((more, item), timeout=_POLL_S)
            except queue.Full:
                continue
            return True
        return False
