from __future__ import annotations

from pathlib import Path

import pytest

from falaj.idempotency import IdempotencyKeys


def _effects(keys: IdempotencyKeys) -> list[tuple[str, str]]:
    return keys.connection.execute("SELECT source, id FROM effects ORDER BY rowid").fetchall()


@pytest.fixture
def keys(tmp_path: Path) -> IdempotencyKeys:
    opened = IdempotencyKeys(tmp_path / "keys.db")
    # Deliberately no uniqueness: a second effect would show as a second row.
    opened.connection.execute("CREATE TABLE effects (source TEXT, id TEXT)")
    return opened


def test_an_event_has_its_effect_once(keys: IdempotencyKeys) -> None:
    for _ in range(3):
        with keys.once("/falaj/test", "e-1") as fresh:
            if fresh is not None:
                fresh.execute("INSERT INTO effects VALUES (?, ?)", ("/falaj/test", "e-1"))
    assert _effects(keys) == [("/falaj/test", "e-1")]
    assert keys.seen("/falaj/test", "e-1")


def test_the_same_id_from_another_source_is_another_event(keys: IdempotencyKeys) -> None:
    for source in ("/falaj/a", "/falaj/b"):
        with keys.once(source, "e-1") as fresh:
            assert fresh is not None
            fresh.execute("INSERT INTO effects VALUES (?, ?)", (source, "e-1"))
    assert len(_effects(keys)) == 2


def test_a_failure_in_the_block_leaves_neither_the_effect_nor_the_key(
    keys: IdempotencyKeys,
) -> None:
    with pytest.raises(RuntimeError, match="half way"), keys.once("/falaj/test", "e-1") as fresh:
        assert fresh is not None
        fresh.execute("INSERT INTO effects VALUES (?, ?)", ("/falaj/test", "e-1"))
        raise RuntimeError("crashed half way")
    assert _effects(keys) == []
    assert not keys.seen("/falaj/test", "e-1")
    # The redelivery does the work.
    with keys.once("/falaj/test", "e-1") as fresh:
        assert fresh is not None
        fresh.execute("INSERT INTO effects VALUES (?, ?)", ("/falaj/test", "e-1"))
    assert _effects(keys) == [("/falaj/test", "e-1")]


def test_keys_survive_reopening(tmp_path: Path) -> None:
    first = IdempotencyKeys(tmp_path / "keys.db")
    with first.once("/falaj/test", "e-1") as fresh:
        assert fresh is not None
    first.close()
    with IdempotencyKeys(tmp_path / "keys.db").once("/falaj/test", "e-1") as fresh:
        assert fresh is None
