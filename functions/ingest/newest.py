"""Each entity's newest good row across a file's chunks: what goes online.

The online store holds one row per entity, so of a file's rows only each
entity's newest can ever be served; they are kept here as the chunks go by
(memory grows with the entities, not the rows) and pushed once, at the end.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


class NewestRows:
    def __init__(self, entity: str, timestamp: str) -> None:
        self.entity = entity
        self.timestamp = timestamp
        self._table: pa.Table | None = None

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        combined = table if self._table is None else pa.concat_tables([self._table, table])
        # A stable sort: of equal (entity, time), the later row stays last and wins.
        ordered = combined.take(
            pc.sort_indices(
                combined, sort_keys=[(self.entity, "ascending"), (self.timestamp, "ascending")]
            )
        )
        entities = ordered.column(self.entity)
        n = ordered.num_rows
        last = pc.not_equal(entities.slice(0, n - 1), entities.slice(1))
        keep = pa.concat_arrays(
            [last.combine_chunks() if isinstance(last, pa.ChunkedArray) else last, pa.array([True])]
        )
        self._table = ordered.filter(keep)

    def table(self) -> pa.Table | None:
        """One row per entity, the newest; None when no row came."""
        return self._table
