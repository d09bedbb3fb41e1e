"""The SQLite disk outbox: FIFO order, acknowledged deletes, the bound, quarantine, restarts."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.telemetry.outbox import Outbox

NOW = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)


def _lines(n: int, start: int = 0) -> list[str]:
    return [f"m,site=s v={i}.0 {i}" for i in range(start, start + n)]


def test_fifo_ack_deletes_only_the_batch(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_points=100)
    box.append(_lines(10))
    batch = box.oldest(4)
    assert batch.lines == tuple(_lines(4))
    box.append(_lines(2, start=10))          # arrives while the batch is in flight
    box.ack(batch)
    assert box.oldest(100).lines == tuple(_lines(8, start=4))
    stats = box.stats()
    assert (stats.depth, stats.sent_total, stats.dropped_total) == (8, 4, 0)
    box.close()


def test_unacknowledged_batch_is_read_again(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_points=100)
    box.append(_lines(5))
    first = box.oldest(3)
    assert box.oldest(3) == first            # a failed write leaves the outbox as it was
    box.close()


def test_bound_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_points=10)
    assert box.append(_lines(8)) == 0
    assert box.append(_lines(5, start=8)) == 3
    assert box.oldest(100).lines == tuple(_lines(10, start=3))
    assert box.stats().dropped_total == 3
    box.close()


def test_survives_reopen_with_counters(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "o.sqlite"
    box = Outbox(path, max_points=5)
    box.append(_lines(7))
    box.ack(box.oldest(2))
    box.close()
    again = Outbox(path, max_points=5)
    assert again.oldest(100).lines == tuple(_lines(3, start=4))
    stats = again.stats()
    assert (stats.depth, stats.dropped_total, stats.sent_total) == (3, 2, 2)
    again.close()


def test_wal_mode(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_points=5)
    mode = sqlite3.connect(tmp_path / "o.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    box.close()


def test_quarantine_moves_points_with_reason(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_points=100)
    box.append(_lines(3))
    bad = box.oldest(3).split()[1].split()[0]   # the middle line
    box.quarantine(bad, "HTTP 400: unable to parse", NOW)
    assert box.oldest(10).lines == (_lines(3)[0], _lines(3)[2])
    assert box.quarantined() == [(_lines(3)[1], "HTTP 400: unable to parse")]
    assert box.stats().quarantined_total == 1
    box.close()


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["append", "ack"]), st.integers(1, 7)), max_size=30))
def test_model_equivalence(tmp_path_factory, ops: list[tuple[str, int]]) -> None:
    """Against a list model: the outbox is a bounded FIFO that loses only its oldest points."""
    box = Outbox(tmp_path_factory.mktemp("h") / "o.sqlite", max_points=12)
    model: list[str] = []
    counter = 0
    for op, n in ops:
        if op == "append":
            new = _lines(n, start=counter)
            counter += n
            box.append(new)
            model = (model + new)[-12:]
        else:
            batch = box.oldest(n)
            assert list(batch.lines) == model[:n]
            box.ack(batch)
            model = model[len(batch):]
    assert list(box.oldest(100).lines) == model
    assert box.stats().depth == len(model)
    box.close()
