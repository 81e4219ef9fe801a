"""The fence index's checkpoint: a restart reads the saved table instead of
every row, replays what changed since, and falls back to the rows whenever
the file cannot be trusted (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from geopunch.adapters.db.fence_rows import ArrowFenceReader
from geopunch.adapters.db.store import fence_snapshot_reader, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT as A
from geopunch.domain.locations import FenceRows
from geopunch.domain.models import ExitDetectionSettings, GeofenceDraft, Job, TimeClock
from geopunch.domain.ports import FenceSnapshot, FenceSnapshotReader
from geopunch.geo.engine import AccountFences
from geopunch.service import admin, geofences, index_checkpoint
from geopunch.service.index_checkpoint import load_index, save_checkpoint
from geopunch.service.index_feed import prune_index_changes
from tests.helpers import AccountStore

JOBS = (Job("a", "A"), Job("b", "B"), Job("b1", "B one", parent_id="b"))
RNG_SEED = 20261203


def _clock(tc_id: int, **changes: Any) -> TimeClock:
    tc = TimeClock(
        id=tc_id,
        name=f"Clock {tc_id}",
        timezone="Europe/Berlin",
        jobs=JOBS,
        user_ids=frozenset({1, 2}),
        accuracy_tolerance_m=10.0,
    )
    return replace(tc, **changes)


def _site(tc_id: int) -> tuple[float, float]:
    return 48.0 + tc_id * 0.01, 11.0 - tc_id * 0.01


def _fill(uows: AccountStore, clock_ids: range, per_clock: int, index: AccountFences) -> None:
    rng = np.random.default_rng(RNG_SEED + clock_ids.start)
    for tc_id in clock_ids:
        admin.create_time_clock(
            uows, A, _clock(tc_id), ["a", "b", "b/b1"], assign_id=False, listener=index
        )
        lat, lon = _site(tc_id)
        drafts = [
            GeofenceDraft(
                f"Fence {k}",
                "1 Road",
                lat + float(rng.normal(0, 0.002)),
                lon + float(rng.normal(0, 0.002)),
                fence_size_m=int(rng.integers(75, 400)),
                job_ids=(("a",), ("b",), ())[k % 3],
                is_enabled=k % 7 != 6,
            )
            for k in range(per_clock)
        ]
        geofences.create_geofences(uows, A, tc_id, drafts, listener=index)


def _answers(index: AccountFences, clock_ids: list[int]) -> list[tuple[Any, ...]]:
    """Every answer a batch check gives near each clock's site, fences by id."""
    rng = np.random.default_rng(RNG_SEED)
    tcs = np.repeat(np.asarray(clock_ids, np.int64), 60)
    sites = np.asarray([_site(t) for t in tcs.tolist()])
    lats = sites[:, 0] + rng.normal(0, 0.003, tcs.size)
    lons = sites[:, 1] + rng.normal(0, 0.003, tcs.size)
    accuracy = rng.uniform(0, 40, tcs.size)
    jobs = rng.integers(-1, 3, tcs.size).astype(np.int32)
    v = index.view(A).check(lats, lons, tcs, jobs, ["a", "b", "b1"], accuracy, with_distance=True)
    ids = v.ids.tolist()
    assert v.nearest is not None and v.distance_m is not None
    return [
        (
            int(v.status[i]),
            bool(v.inside[i]),
            bool(v.allowed[i]),
            sorted(ids[j] for j in v.fences[v.offsets[i] : v.offsets[i + 1]]),
            None if v.nearest[i] < 0 else ids[v.nearest[i]],
            round(float(v.distance_m[i]), 6),
        )
        for i in range(tcs.size)
    ]


def _fresh(uows: AccountStore) -> AccountFences:
    """An index read from the rows, as the reference."""
    index = AccountFences()
    assert load_index(uows, index, None).source == "rows"
    return index


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return tmp_path / "store.fence-index"


def test_a_restart_reads_the_checkpoint_and_answers_as_a_full_load(
    engine: Engine, saved: Path
) -> None:
    uows = AccountStore(engine)
    _fill(uows, range(1, 9), 40, AccountFences())
    first = AccountFences()
    loaded = load_index(uows, first, saved)  # no file yet
    assert loaded.source == "rows"
    assert save_checkpoint(uows, first, saved, loaded.cursor) is not None

    again = AccountFences()
    loaded = load_index(uows, again, saved)
    assert (loaded.source, loaded.as_saved) == ("checkpoint", True)
    assert again.totals() == first.totals()
    assert _answers(again, list(range(1, 9))) == _answers(first, list(range(1, 9)))
    # It keeps taking changes as an index built from rows does.
    (made,) = geofences.create_geofences(
        uows, A, 3, [GeofenceDraft("Late", "2 Road", *_site(3), fence_size_m=900)], listener=again
    )
    assert _answers(again, [3]) == _answers(_fresh(uows), [3])
    assert made.id in {f for a in _answers(again, [3]) for f in a[3]}


def test_changes_made_after_the_checkpoint_are_replayed_from_the_feed(
    engine: Engine, saved: Path
) -> None:
    uows = AccountStore(engine)
    elsewhere = AccountFences()  # another process's index: it writes the changes
    _fill(uows, range(1, 7), 30, elsewhere)
    index = AccountFences()
    assert save_checkpoint(uows, index, saved, load_index(uows, index, saved).cursor) is not None

    _fill(uows, range(7, 9), 20, elsewhere)  # new clocks
    fences = geofences.list_geofences(uows, A, 2)
    geofences.delete_geofence(uows, A, 2, fences[0].id, listener=elsewhere)
    draft = GeofenceDraft("More", "3 Road", *_site(4), fence_size_m=300, job_ids=("b",))
    geofences.create_geofences(uows, A, 4, [draft], listener=elsewhere)
    wider = ExitDetectionSettings(buffer_unknown_accuracy_m=250.0)
    admin.update_time_clock(
        uows, A, _clock(5, exit_detection=wider), ["a", "b", "b/b1"], listener=elsewhere
    )

    restarted = AccountFences()
    loaded = load_index(uows, restarted, saved)
    assert (loaded.source, loaded.as_saved) == ("checkpoint", False)
    reference = _fresh(uows)
    assert restarted.totals() == reference.totals()
    assert _answers(restarted, list(range(1, 9))) == _answers(reference, list(range(1, 9)))


def test_clocks_edited_behind_the_feed_are_read_again(engine: Engine, saved: Path) -> None:
    """A clock whose jobs or margins differ from what its saved rows were
    built with is read again, even when the feed does not name it."""
    uows = AccountStore(engine)
    _fill(uows, range(1, 4), 20, AccountFences())
    index = AccountFences()
    assert save_checkpoint(uows, index, saved, load_index(uows, index, saved).cursor) is not None
    with uows() as uow:  # an operator's edit: no feed entry
        tc = uow.time_clocks.get(2)
        assert tc is not None
        uow.time_clocks.replace(
            replace(tc, accuracy_tolerance_m=300.0, jobs=(JOBS[1], JOBS[0], JOBS[2]))
        )
        uow.commit()
    restarted = AccountFences()
    loaded = load_index(uows, restarted, saved)
    assert (loaded.source, loaded.as_saved) == ("checkpoint", False)
    assert _answers(restarted, [1, 2, 3]) == _answers(_fresh(uows), [1, 2, 3])


def _expect_rows(
    uows: AccountStore, saved: Path, caplog: pytest.LogCaptureFixture, why: str
) -> None:
    index = AccountFences()
    with caplog.at_level(logging.INFO, logger=index_checkpoint.__name__):
        loaded = load_index(uows, index, saved)
    assert loaded.source == "rows"
    reasons = [f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records]
    assert any(why in f for f in reasons), reasons
    caplog.clear()
    assert _answers(index, [1, 2]) == _answers(_fresh(uows), [1, 2])


def test_a_checkpoint_older_than_the_pruned_feed_is_not_used(
    engine: Engine, saved: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uows = AccountStore(engine)
    _fill(uows, range(1, 3), 10, AccountFences())
    index = AccountFences()
    assert save_checkpoint(uows, index, saved, load_index(uows, index, saved).cursor) is not None
    draft = GeofenceDraft("Pruned", "4 Road", *_site(1), fence_size_m=500)
    geofences.create_geofences(uows, A, 1, [draft], listener=AccountFences())
    assert prune_index_changes(uows, before=2**62) > 0
    _expect_rows(uows, saved, caplog, "pruned")


def test_too_many_changes_since_and_a_foreign_store_mean_the_rows(
    engine: Engine,
    saved: Path,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uows = AccountStore(engine)
    _fill(uows, range(1, 3), 10, AccountFences())
    index = AccountFences()
    assert save_checkpoint(uows, index, saved, load_index(uows, index, saved).cursor) is not None
    for k in range(2):
        draft = GeofenceDraft(f"Busy {k}", "5 Road", *_site(2), fence_size_m=150)
        geofences.create_geofences(uows, A, 2, [draft], listener=AccountFences())
    monkeypatch.setattr(index_checkpoint, "REPLAY_LIMIT", 1)
    _expect_rows(uows, saved, caplog, "too many changes")
    monkeypatch.undo()

    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    migrate(other)
    try:
        foreign = AccountStore(other)
        _fill(foreign, range(1, 3), 10, AccountFences())
        _expect_rows(foreign, saved, caplog, "another store")
    finally:
        other.dispose()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "garbage", "empty"])
def test_a_damaged_file_means_the_rows(
    engine: Engine, saved: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    uows = AccountStore(engine)
    _fill(uows, range(1, 3), 30, AccountFences())
    index = AccountFences()
    assert save_checkpoint(uows, index, saved, load_index(uows, index, saved).cursor) is not None
    data = bytearray(saved.read_bytes())
    if damage == "flipped byte":
        data[len(data) * 2 // 3] ^= 0x10
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint at all" * 100)
    else:
        data = bytearray()
    saved.write_bytes(bytes(data))
    _expect_rows(uows, saved, caplog, "unreadable")


def test_a_store_restored_from_an_older_copy_does_not_use_a_newer_checkpoint(
    tmp_path: Path, saved: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "store.db"
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    uows = AccountStore(engine)
    _fill(uows, range(1, 3), 10, AccountFences())
    engine.dispose()
    shutil.copy(db, tmp_path / "backup.db")
    engine = make_engine(f"sqlite:///{db}")
    uows = AccountStore(engine)
    _fill(uows, range(3, 5), 10, AccountFences())
    index = AccountFences()
    assert save_checkpoint(uows, index, saved, load_index(uows, index, saved).cursor) is not None
    engine.dispose()

    shutil.copy(tmp_path / "backup.db", db)  # the backup is back: its feed is shorter
    engine = make_engine(f"sqlite:///{db}")
    try:
        uows = AccountStore(engine)
        _expect_rows(uows, saved, caplog, "newer than the store")
        # Other changes bring the feed past the checkpoint's seq: a history it never saw.
        _fill(uows, range(5, 9), 3, AccountFences())
        _expect_rows(uows, saved, caplog, "history differs")
    finally:
        engine.dispose()


def test_the_migration_counts_older_changes_as_pruned(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows(readonly=True) as uow:
        feed, pruned = uow.index_changes.identity()
    assert len(feed) == 32 and pruned == 0  # a new store: nothing was ever pruned
    _fill(uows, range(1, 3), 2, AccountFences())
    with uows(readonly=True) as uow:
        newest = uow.index_changes.last()
    assert prune_index_changes(uows, before=2**62) > 0
    with uows(readonly=True) as uow:
        assert uow.index_changes.identity() == (feed, newest)


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_behind(
    engine: Engine, tmp_path: Path
) -> None:
    uows = AccountStore(engine)
    _fill(uows, range(1, 3), 5, AccountFences())
    index = AccountFences()
    cursor = load_index(uows, index, None).cursor
    taken = tmp_path / "store.fence-index"
    (taken / "something").mkdir(parents=True)  # a directory where the file should go
    with pytest.raises(OSError):
        save_checkpoint(uows, index, taken, cursor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.fence-index"]  # no temp file
    with pytest.raises(OSError):  # no such directory
        save_checkpoint(uows, index, tmp_path / "gone" / "store.fence-index", cursor)
    assert load_index(uows, AccountFences(), taken).source == "rows"


def _read_in_a_unit_of_work(uows: AccountStore) -> FenceSnapshotReader:
    """A reader beside the load on any store: the driver cursor's read."""

    def read(accounts: Sequence[int]) -> FenceSnapshot:
        with uows(readonly=True) as uow:
            rows = {a: uow.for_account(a).geofences.enabled_rows() for a in accounts}
            return FenceSnapshot(uow.index_changes.last(), rows)

    return read


def test_fences_read_beside_the_load_build_the_same_index(
    engine: Engine, saved: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read beside it (on SQLite through ADBC too), an account's fences give
    the index a read in the unit of work gives; with a usable checkpoint
    nothing is read beside."""
    uows = AccountStore(engine)
    _fill(uows, range(1, 9), 40, AccountFences())
    want = _answers(_fresh(uows), list(range(1, 9)))
    readers = [_read_in_a_unit_of_work(uows)]
    monkeypatch.setattr(ArrowFenceReader, "MIN_FENCES", 1)  # a child process for these few
    if (adbc := fence_snapshot_reader(engine)) is not None:
        readers.append(adbc)
    asked: list[list[int]] = []
    warmed: list[int] = []
    for reader in readers:
        asked.clear()
        warmed.clear()

        def counted(
            accounts: Sequence[int], reader: FenceSnapshotReader = reader
        ) -> FenceSnapshot | None:
            asked.append(list(accounts))
            return reader(accounts)

        index = AccountFences()
        with caplog.at_level(logging.INFO, logger=index_checkpoint.__name__):
            loaded = load_index(uows, index, saved, counted, meanwhile=lambda: warmed.append(1))
        assert (loaded.source, asked, warmed) == ("rows", [[A]], [1])
        assert not [r for r in caplog.records if "fence rows" in r.getMessage()]  # they were used
        assert _answers(index, list(range(1, 9))) == want
    assert save_checkpoint(uows, index, saved, loaded.cursor) is not None
    asked.clear()
    assert load_index(uows, AccountFences(), saved, counted).source == "checkpoint"
    assert asked == []


@pytest.mark.parametrize("trouble", ["the store moved", "the read failed"])
def test_fences_read_beside_are_not_used_when_the_store_moved_or_the_read_failed(
    engine: Engine, caplog: pytest.LogCaptureFixture, trouble: str
) -> None:
    """Rows from another snapshot than the load's (a change committed in
    between), or none at all, and the unit of work reads them itself."""
    uows = AccountStore(engine)
    _fill(uows, range(1, 5), 30, AccountFences())
    want = _answers(_fresh(uows), list(range(1, 5)))

    def beside(accounts: Sequence[int]) -> FenceSnapshot:
        if trouble == "the read failed":
            raise RuntimeError("driver gone")
        with uows(readonly=True) as uow:  # a newer change than the load saw, and no rows
            return FenceSnapshot(
                uow.index_changes.last() + 1, {a: FenceRows.of(()) for a in accounts}
            )

    index = AccountFences()
    with caplog.at_level(logging.INFO, logger=index_checkpoint.__name__):
        assert load_index(uows, index, None, beside).source == "rows"
    assert _answers(index, list(range(1, 5))) == want
    said = " ".join(r.getMessage() for r in caplog.records)
    expected = "not read beside" if trouble == "the read failed" else "the store changed"
    assert expected in said
