"""The outbox: real SQLite files, real DICOM files (hand-made and converted from a slide)."""

from __future__ import annotations

import itertools
import random
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from edge.convert import convert
from edge.errors import EdgeError, InputError
from edge.forward.protocol import Outcome, Verdict
from edge.outbox import (
    BreakerState,
    CircuitBreaker,
    DatabaseCorrupt,
    Outbox,
    OutboxReader,
    RetryPolicy,
    SchemaTooNew,
    instance_priority,
    open_database,
    schema,
)

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
VOLUME = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
T0 = 1_700_000_000.0


def make_dicom(
    path: Path,
    image_type: tuple[str, ...] = VOLUME,
    sop_class: str = WSI,
    side: int = 100,
    uid: str | None = None,
) -> Path:
    uid = uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.ImageType = list(image_type)
    ds.TotalPixelMatrixColumns = side
    ds.TotalPixelMatrixRows = side
    ds.PatientComment = "x" * 2000  # some bytes to truncate
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.db", rng=random.Random(7))
    yield box
    box.close()


@pytest.fixture(scope="module")
def converted(synthetic_svs: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    result = convert(synthetic_svs, tmp_path_factory.mktemp("converted"))
    return sorted(Path(result.output).glob("*.dcm"))


# --- schema -------------------------------------------------------------------------------


def test_migrations_from_empty_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    conn = open_database(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"instances", "deliveries", "events"} <= tables
    conn.execute("INSERT INTO events (at, event) VALUES (1, 'kept')")
    conn.close()
    again = open_database(db)  # no migration re-runs, data kept
    assert [tuple(r) for r in again.execute("SELECT event FROM events")] == [("kept",)]
    again.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    open_database(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(schema.MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer release"):
        open_database(db)


def test_corrupt_database_detected(tmp_path: Path, outbox: Outbox) -> None:
    paths = [make_dicom(tmp_path / f"f{i}.dcm") for i in range(30)]
    outbox.enqueue(paths, ["pacs", "cloud"], "slide-1", now=T0)
    outbox.close()  # last connection: checkpoints and removes the WAL
    copy = tmp_path / "copy.db"
    shutil.copy(outbox.path, copy)
    page = 4096
    with copy.open("r+b") as f:
        f.seek(page * 2)  # page 3: a b-tree page of the schema's first tables
        f.write(b"\xa5\x17" * (page // 2))
    with pytest.raises(DatabaseCorrupt, match="refusing to run") as info:
        Outbox(copy)
    assert isinstance(info.value, EdgeError)
    Outbox(outbox.path).close()  # the original is fine


# --- priority and retry (pure) ----------------------------------------------------------------


def test_priority_order() -> None:
    sr = instance_priority(COMPREHENSIVE_SR, (), 0)
    thumb = instance_priority(WSI, ("DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"), 10_000)
    label = instance_priority(WSI, ("ORIGINAL", "PRIMARY", "LABEL", "NONE"), 10_000)
    overview = instance_priority(WSI, ("ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"), 10_000)
    small = instance_priority(WSI, VOLUME, 160 * 110)
    level0 = instance_priority(WSI, VOLUME, 100_000 * 80_000)
    assert sr < thumb < label < overview < small < level0
    assert instance_priority(WSI, VOLUME, 100_000 * 80_000, boost=1) < sr
    with pytest.raises(ValueError):
        instance_priority(WSI, VOLUME, 1, boost=-1)


def test_retry_delays_grow_capped_and_jitter_bounded() -> None:
    policy = RetryPolicy(base_s=5, factor=2, ceiling_s=3600, jitter=0.2)
    exact = [policy.next_delay(n) for n in range(1, 12)]
    assert exact[:4] == [5, 10, 20, 40]
    assert all(a <= b for a, b in itertools.pairwise(exact))
    assert exact[-1] == 3600
    assert policy.next_delay(10_000) == 3600  # no overflow
    rng = random.Random(1)
    for n in range(1, 20):
        raw = min(3600.0, 5 * 2.0 ** (n - 1))
        for _ in range(50):
            d = policy.next_delay(n, rng)
            assert raw * 0.8 - 1e-9 <= d <= min(3600.0, raw * 1.2) + 1e-9
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)


def test_circuit_breaker_transitions() -> None:
    def state(breaker: CircuitBreaker) -> BreakerState:
        return breaker.state  # read through a call: no narrowing across calls

    b = CircuitBreaker(threshold=3, cooldown_s=60)
    assert b.allow(0) and state(b) is BreakerState.CLOSED
    b.record_failure(1)
    b.record_failure(2)
    assert state(b) is BreakerState.CLOSED
    b.record_success(3)  # resets the count
    for t in (4, 5, 6):
        b.record_failure(t)
    assert state(b) is BreakerState.OPEN and b.retry_at() == 66
    assert not b.allow(30)
    assert b.allow(66) and state(b) is BreakerState.HALF_OPEN  # one trial
    assert not b.allow(67)  # no second batch while the trial is out
    b.record_failure(70)  # the trial failed: open again, new cool-down
    assert state(b) is BreakerState.OPEN and not b.allow(100)
    assert b.allow(130)
    b.record_success(131)
    assert state(b) is BreakerState.CLOSED and b.allow(132) and b.failures == 0


# --- store ------------------------------------------------------------------------------------


def test_enqueue_is_idempotent(tmp_path: Path, outbox: Outbox) -> None:
    paths = [make_dicom(tmp_path / f"f{i}.dcm") for i in range(3)]
    first = outbox.enqueue(paths, ["pacs", "cloud"], "slide-1", now=T0)
    assert len(first) == 6 and len(set(first)) == 6
    again = outbox.enqueue(paths, ["pacs", "cloud"], "slide-1", now=T0 + 5)
    assert again == first
    stats = outbox.stats()
    assert stats["instances"] == 3
    assert stats["destinations"]["pacs"]["queued"] == 3
    # a new destination for a known instance adds only that delivery
    more = outbox.enqueue(paths[:1], ["hub"], "slide-1", now=T0 + 6)
    assert len(more) == 1 and more[0] not in first
    # delivered stays delivered when enqueued again
    items = outbox.claim("pacs", 10, now=T0 + 7)
    outbox.record("pacs", [Outcome(i.id, Verdict.DELIVERED) for i in items], now=T0 + 8)
    outbox.enqueue(paths, ["pacs"], "slide-1", now=T0 + 9)
    assert outbox.claim("pacs", 10, now=T0 + 10) == []


def test_enqueue_rejects_non_dicom(tmp_path: Path, outbox: Outbox) -> None:
    good = make_dicom(tmp_path / "good.dcm")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match=r"bad\.dcm"):
        outbox.enqueue([good, bad], ["pacs"], "s")
    assert outbox.stats()["instances"] == 0  # all or nothing


def test_claim_order_thumbnail_label_before_level0(converted: list[Path], outbox: Outbox) -> None:
    outbox.enqueue(converted, ["pacs"], "slide-1", now=T0)
    names = [item.path.name for item in outbox.claim("pacs", 100, now=T0)]
    assert names[:3] == ["thumbnail.dcm", "label.dcm", "overview.dcm"]
    assert names[-1] == "level-00.dcm"
    levels = [n for n in names if n.startswith("level-")]
    assert levels == sorted(levels, reverse=True)  # smallest level first
    item = outbox.list(destination="pacs", state="sending")[0]
    header = pydicom.dcmread(item["path"], stop_before_pixels=True)
    assert item["sop_instance_uid"] == header.SOPInstanceUID


def test_claim_results_and_boost_first(tmp_path: Path, outbox: Outbox) -> None:
    level0 = make_dicom(tmp_path / "a" / "level0.dcm", side=50_000)
    thumb = make_dicom(tmp_path / "a" / "thumb.dcm", ("D", "P", "THUMBNAIL", "R"))
    sr = make_dicom(tmp_path / "a" / "sr.dcm", (), sop_class=COMPREHENSIVE_SR)
    rescan_level0 = make_dicom(tmp_path / "b" / "level0.dcm", side=50_000)
    outbox.enqueue([level0, thumb, sr], ["pacs"], "a", now=T0)
    outbox.enqueue([rescan_level0], ["pacs"], "b", boost=1, now=T0 + 1)
    order = [item.path for item in outbox.claim("pacs", 10, now=T0 + 2)]
    assert order == [rescan_level0, sr, thumb, level0]
    assert outbox.claim("pacs", 10, now=T0 + 2) == []  # all sending now


def test_claim_limit_and_destinations_are_independent(tmp_path: Path, outbox: Outbox) -> None:
    paths = [make_dicom(tmp_path / f"f{i}.dcm") for i in range(5)]
    outbox.enqueue(paths, ["pacs", "cloud"], "s", now=T0)
    assert len(outbox.claim("pacs", 2, now=T0)) == 2
    assert len(outbox.claim("pacs", 10, now=T0)) == 3
    assert len(outbox.claim("cloud", 10, now=T0)) == 5


def test_record_verdicts_and_retry_schedule(tmp_path: Path, outbox: Outbox) -> None:
    paths = [make_dicom(tmp_path / f"f{i}.dcm") for i in range(3)]
    outbox.enqueue(paths, ["pacs"], "s", now=T0)
    a, b, c = outbox.claim("pacs", 10, now=T0)
    counts = outbox.record(
        "pacs",
        [
            Outcome(a.id, Verdict.DELIVERED),
            Outcome(b.id, Verdict.RETRY, "association rejected"),
            Outcome(c.id, Verdict.PARK, "0xA900: dataset does not match SOP class"),
        ],
        now=T0 + 1,
    )
    assert counts == {Verdict.DELIVERED: 1, Verdict.RETRY: 1, Verdict.PARK: 1}
    rows = {r["id"]: r for r in outbox.list(destination="pacs")}
    assert rows[a.id]["state"] == "delivered" and rows[a.id]["delivered_at"] == T0 + 1
    assert rows[b.id]["state"] == "failed" and rows[b.id]["attempts"] == 1
    assert rows[b.id]["last_error"] == "association rejected"
    first_delay = rows[b.id]["next_attempt_at"] - (T0 + 1)
    assert 4.0 <= first_delay <= 6.0
    assert rows[c.id]["state"] == "parked" and "0xA900" in rows[c.id]["last_error"]
    assert outbox.claim("pacs", 10, now=T0 + 1) == []  # not due yet
    due = rows[b.id]["next_attempt_at"]
    (again,) = outbox.claim("pacs", 10, now=due)
    outbox.record("pacs", [Outcome(again.id, Verdict.RETRY, "timeout")], now=due)
    row = outbox.list(state="failed")[0]
    assert row["attempts"] == 2 and 8.0 <= row["next_attempt_at"] - due <= 12.0
    # a manual retry re-queues failed and parked rows at once
    assert outbox.retry([b.id, c.id, a.id], now=due + 1) == 2
    assert {i.id for i in outbox.claim("pacs", 10, now=due + 1)} == {b.id, c.id}
    events = [e["event"] for e in outbox.events()]
    assert {"queued", "sending", "delivered", "retry", "park"} <= set(events)


def test_crash_recovery_resends_but_never_delivered(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    paths = [make_dicom(tmp_path / f"f{i}.dcm") for i in range(4)]
    box = Outbox(db)
    box.enqueue(paths, ["pacs"], "s", now=T0)
    done = box.claim("pacs", 1, now=T0)
    box.record("pacs", [Outcome(done[0].id, Verdict.DELIVERED)], now=T0 + 1)
    in_flight = box.claim("pacs", 10, now=T0 + 2)
    assert len(in_flight) == 3
    box._conn.close()  # the crash: no record(), no clean shutdown
    box = Outbox(db)
    assert box.claim("pacs", 10, now=T0 + 3) == []  # still "sending" until recovered
    assert box.recover(now=T0 + 4) == 3
    again = box.claim("pacs", 10, now=T0 + 5)
    assert sorted(i.id for i in again) == sorted(i.id for i in in_flight)
    assert done[0].id not in {i.id for i in again}
    # a late answer for a row that was recovered and re-claimed still counts once
    box.record("pacs", [Outcome(i.id, Verdict.DELIVERED) for i in again], now=T0 + 6)
    assert box.stats()["destinations"]["pacs"]["delivered"] == 4
    assert box.recover(now=T0 + 7) == 0
    box.close()


def test_missing_and_truncated_files_parked(tmp_path: Path, outbox: Outbox) -> None:
    gone = make_dicom(tmp_path / "gone.dcm")
    short = make_dicom(tmp_path / "short.dcm")
    fine = make_dicom(tmp_path / "fine.dcm")
    outbox.enqueue([gone, short, fine], ["pacs"], "s", now=T0)
    expected = short.stat().st_size
    gone.unlink()
    with short.open("r+b") as f:
        f.truncate(100)
    items = outbox.claim("pacs", 10, now=T0)
    good = outbox.check_files(items, now=T0)
    assert [i.path for i in good] == [fine]
    parked = {Path(r["path"]).name: r["last_error"] for r in outbox.list(state="parked")}
    assert parked["gone.dcm"] == f"queued file deleted: {gone}"
    assert parked["short.dcm"] == f"truncated: 100 bytes, expected {expected}"


def test_purge_keeps_unsent_data(tmp_path: Path, outbox: Outbox) -> None:
    both = make_dicom(tmp_path / "both.dcm")
    half = make_dicom(tmp_path / "half.dcm")
    fresh = make_dicom(tmp_path / "fresh.dcm")
    parked = make_dicom(tmp_path / "parked.dcm")
    outbox.enqueue([both, half, parked], ["pacs", "cloud"], "s", now=T0)
    outbox.enqueue([fresh], ["pacs"], "s", now=T0)
    by_path = {i.path: i for i in outbox.claim("pacs", 10, now=T0)}
    cloud = {i.path: i for i in outbox.claim("cloud", 10, now=T0)}
    outbox.record(
        "pacs",
        [Outcome(by_path[p].id, Verdict.DELIVERED) for p in (both, half, parked)],
        now=T0 + 10,
    )
    outbox.record("pacs", [Outcome(by_path[fresh].id, Verdict.DELIVERED)], now=T0 + 1000)
    outbox.record(
        "cloud",
        [
            Outcome(cloud[both].id, Verdict.DELIVERED),
            Outcome(cloud[half].id, Verdict.RETRY, "503"),
            Outcome(cloud[parked].id, Verdict.PARK, "rejected"),
        ],
        now=T0 + 20,
    )
    removed = outbox.purge_delivered(older_than_s=100, now=T0 + 200)
    assert removed == [both]
    assert not both.exists()
    assert half.exists() and parked.exists() and fresh.exists()
    assert outbox.stats()["purged"] == 1
    assert outbox.purge_delivered(older_than_s=100, now=T0 + 200) == []
    assert outbox.stats()["unsent_instances"] == 2  # half and parked; fresh is delivered
    assert outbox.list(state="delivered", destination="cloud")[0]["purged_at"] == T0 + 200


def test_reader_reads_while_writer_holds_transaction(tmp_path: Path, outbox: Outbox) -> None:
    paths = [make_dicom(tmp_path / f"f{i}.dcm") for i in range(2)]
    outbox.enqueue(paths, ["pacs"], "s", now=T0)
    reader = OutboxReader(outbox.path)
    try:
        with outbox.transaction() as conn:
            conn.execute("UPDATE deliveries SET state = 'parked'")
            stats = reader.stats()  # does not block: WAL gives the last committed state
            assert stats["destinations"]["pacs"]["queued"] == 2
            assert reader.list(state="parked") == []
        assert reader.stats()["destinations"]["pacs"]["parked"] == 2
        with pytest.raises(sqlite3.OperationalError):
            reader._conn.execute("DELETE FROM events")  # read-only
    finally:
        reader.close()


def test_writer_is_bound_to_its_thread(outbox: Outbox) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            outbox.stats()
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1


def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    """The daemon and `edge send` starting together must not both run migration 1."""
    import threading

    path = tmp_path / "state.sqlite"
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_it() -> None:
        start.wait()
        try:
            schema.open_database(path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = schema.connect(path, readonly=True)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
