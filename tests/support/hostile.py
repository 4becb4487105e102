"""Hostile input for the parsers facing the outside: bounded in `make test`, longer in `make fuzz`.

``FALAJ_FUZZ_EXAMPLES`` sets how many cases each property runs (``make fuzz``
raises it); the default keeps the suite fast.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
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

#: Numbers past every machine type (``float()`` of the biggest overflows), and the
#: floats at the edges: what a JSON parser may hand over as a "number".
huge_numbers: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**309, -(10**309), 1e308, -0.0, 5e-324, 3.5e38]),
    st.floats(allow_nan=True, allow_infinity=True),
)

#: Object keys as a hostile sender writes them, before or after URL-encoding:
#: traversal, absolute, backslashes, NUL, percent-escapes of all these, and
#: escapes that are not UTF-8 or not escapes at all.
TRAVERSALS = (
    "../../etc/passwd",
    "..",
    "../",
    "a/../../b.csv",
    "a/b/../../../c.csv",
    "..\\..\\windows\\win.ini",
    "/etc/passwd",
    "//etc/passwd",
    "\\\\server\\share\\x.csv",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "..%2F..%2Fsecret.csv",
    "%2Fetc%2Fpasswd",
    "..%5C..%5Cx.csv",
    "a%00.csv",
    "%00",
    "%FF%FE.csv",
    "%C0%AE%C0%AE%2Fx.csv",
    "+",
    "%",
    "%ZZ",
    "a//b.csv",
    "./a.csv",
    "~/.ssh/id_rsa",
    "C:\\x.csv",
    "file:///etc/passwd",
    "leak.csv",
    "leaks/secret.csv",
)
object_keys: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(TRAVERSALS),
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["..", ".", "", "a", "%2E%2E", "..%2F", "b.csv", "\\..", "day1.csv"]),
        min_size=1,
        max_size=8,
    ).map("/".join),
    st.integers(200, 1200).map(lambda n: "k" * n + ".csv"),
)


@st.composite
def mutated(draw: st.DrawFn, valid: Any, *, times: int = 3) -> Any:
    """``valid`` with up to ``times`` changes anywhere in it: a value replaced (by any
    JSON value or a huge number), a key removed, a key renamed to an odd one."""
    value = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, times))):
        places = list(_places(value))
        if not places:
            return draw(json_values)
        parent, at = draw(st.sampled_from(places))
        change = draw(st.sampled_from(["replace", "remove", "rename"]))
        if change == "replace" or isinstance(parent, list):
            parent[at] = draw(st.one_of(json_values, huge_numbers))
        elif change == "remove":
            del parent[at]
        else:
            parent[draw(st.text(max_size=12) | st.just("x" * 10_000))] = parent.pop(at)
    return value


def _places(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) inside a JSON value, outermost first."""
    if not isinstance(value, dict | list):
        return
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for at, inner in list(items):
        yield value, at
        yield from _places(inner)
