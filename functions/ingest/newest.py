"""Each entity's newest good row across a file's chunks: what goes online.

The online store holds one row per entity, so of a file's rows only each
entity's newest can ever be served; they are kept here as the chunks go by
(memory grows with the entities, not the rows) and pushed once, at the end.
"""

from __future__ import annotations

import numpy as np
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
        # The chunk shrinks to its entities first, so what is merged with the
        # rows kept so far is at most one row per entity, never a whole chunk.
        newest = self._newest(table)
        if self._table is not None:
            newest = self._newest(pa.concat_tables([self._table, newest]))
        self._table = newest

    def table(self) -> pa.Table | None:
        """One row per entity, the newest; None when no row came."""
        return self._table

    def _newest(self, table: pa.Table) -> pa.Table:
        """Of each entity's rows the newest; of equal times, the one that came last.

        Integer codes for the entities and one stable sort by (code, time):
        sorting the strings themselves cost several times more.
        """
        entities = pc.dictionary_encode(table.column(self.entity).combine_chunks())
        codes = entities.indices.to_numpy(zero_copy_only=False)
        times = table.column(self.timestamp).cast(pa.int64()).to_numpy()
        order = np.lexsort((times, codes))  # stable: the later of equal keys stays last
        ordered_codes = codes[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = ordered_codes[1:] != ordered_codes[:-1]
        return table.take(order[last])
