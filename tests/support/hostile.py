"""Hostile input for the parsers facing the outside: bounded in `make test`, longer in `make fuzz`.

``FALAJ_FUZZ_EXAMPLES`` sets how many cases each property runs (``make fuzz``
raises it); the default keeps the suite fast.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FALAJ_FUZZ_EXAMPLES", "150"))
#: Every property test runs this many cases, without a per-case deadline (a shared machine).
bounded = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(st.binary(max_size=300), json_values.map(json_bytes))
