"""Send windows and the bandwidth cap: pure window arithmetic, the token bucket, `drain`
keeping to the windows, and measured caps on real transfers (STOW-RS to a real Orthanc,
C-STORE to a pynetdicom SCP, the folder copy). The measurements time the cap itself: a 4 MB
transfer capped at 2 MB/s must take at least ~1.8 s, whatever the machine's speed."""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from edge import config
from edge.forward import factory
from edge.forward.cstore import CStoreDestination
from edge.forward.folder import FolderDestination
from edge.forward.protocol import Item, Outcome, Verdict
from edge.forward.stowrs import StowRsDestination
from edge.forward.throttle import TokenBucket, throttled
from edge.forward.windows import (
    Window,
    WindowError,
    is_open,
    next_open,
    parse_window,
    parse_windows,
)
from edge.forward.worker import drain, window_wait
from edge.outbox import Outbox
from tests.dicom_peers import store_scp
from tests.orthanc import Orthanc, orthanc
from tests.test_forward import item_for

__all__ = ["orthanc"]  # fixtures used by name

D = dt.datetime  # naive local times: the arithmetic is DST-free by construction


# ---------------------------------------------------------------- window arithmetic (pure)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("22:00-06:00", 22 * 60, 6 * 60),
        ("08:30-17:45", 8 * 60 + 30, 17 * 60 + 45),
        ("00:00-24:00", 0, 1440),
        ("22:00-00:00", 22 * 60, 1440),
        (" 7:05 - 9:00 ", 7 * 60 + 5, 9 * 60),
    ],
)
def test_parse_window(text: str, start: int, end: int) -> None:
    assert parse_window(text) == Window(start, end)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("25:00-03:00", "start 25:00 is not a time of day"),
        ("22:00-24:30", "end 24:30 is not a time of day"),
        ("10:60-11:00", "start 10:60"),
        ("22-06", "not HH:MM-HH:MM"),
        ("10:00-10:00", "empty"),
        ("", "not HH:MM-HH:MM"),
    ],
)
def test_parse_window_errors(text: str, why: str) -> None:
    with pytest.raises(WindowError, match=why):
        parse_window(text)


NIGHT = parse_windows(["22:00-06:00"])


@pytest.mark.parametrize(
    ("moment", "open_", "opens"),
    [
        (D(2026, 3, 4, 21, 30), False, D(2026, 3, 4, 22, 0)),
        (D(2026, 3, 4, 22, 0), True, D(2026, 3, 4, 22, 0)),
        (D(2026, 3, 4, 23, 59), True, D(2026, 3, 4, 23, 59)),
        (D(2026, 3, 5, 0, 0), True, D(2026, 3, 5, 0, 0)),
        (D(2026, 3, 5, 5, 59, 59), True, D(2026, 3, 5, 5, 59, 59)),
        (D(2026, 3, 5, 6, 0), False, D(2026, 3, 5, 22, 0)),  # end is exclusive
        (D(2026, 3, 5, 12, 17, 42), False, D(2026, 3, 5, 22, 0)),
        (D(2026, 12, 31, 21, 0), False, D(2026, 12, 31, 22, 0)),
    ],
)
def test_night_window(moment: dt.datetime, open_: bool, opens: dt.datetime) -> None:
    assert is_open(NIGHT, moment) is open_
    assert next_open(NIGHT, moment) == opens


def test_several_windows_and_next_day() -> None:
    windows = parse_windows(["01:00-02:00", "12:00-13:30"])
    assert next_open(windows, D(2026, 1, 31, 23, 59)) == D(2026, 2, 1, 1, 0)  # across a month
    assert next_open(windows, D(2026, 2, 1, 2, 0)) == D(2026, 2, 1, 12, 0)
    assert next_open(windows, D(2026, 2, 1, 13, 30)) == D(2026, 2, 2, 1, 0)
    assert is_open(windows, D(2026, 2, 1, 13, 29))
    assert is_open((), D(2026, 2, 1, 3, 0))  # no windows: always open
    assert next_open((), D(2026, 2, 1, 3, 0)) == D(2026, 2, 1, 3, 0)


def test_window_wait_in_seconds() -> None:
    utc = dt.UTC
    noon = D(2026, 6, 1, 12, 0, tzinfo=utc).timestamp()
    assert window_wait(NIGHT, noon, utc) == 10 * 3600
    assert window_wait(NIGHT, noon + 10 * 3600, utc) == 0
    assert window_wait((), noon, utc) == 0


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"send_windows": ["25:00-03:00"]}, r"send_windows: '25:00-03:00': start 25:00"),
        ({"send_windows": "22:00-06:00"}, "send_windows must be a list"),
        ({"max_bytes_per_s": -1}, "max_bytes_per_s must be 0"),
        ({"auth": "kerberos"}, "auth 'kerberos'; expected one of"),
        ({"auth": "google"}, "auth 'google' needs credentials_file"),
        ({"auth": "aws-sigv4", "credentials_file": "/c"}, "auth 'aws-sigv4' needs region"),
        ({"auth": "basic", "username": "u"}, "auth 'basic' needs password_file"),
        ({"auth": "bearer"}, "auth 'bearer' needs token_file"),
        ({"auth": "google", "credentials_file": "/k", "token_file": "/t"}, "token_file not used"),
    ],
)
def test_destination_config_errors(table: dict[str, object], message: str) -> None:
    base = {"name": "cloud", "kind": "stowrs", "url": "https://x/dicom-web"}
    with pytest.raises(config.ConfigError, match=message) as info:
        config.parse({"destination": [{**base, **table}]}, "edge.toml")
    assert "edge.toml: [[destination]] #1 (cloud)" in str(info.value)


def test_destination_config_values() -> None:
    dest = config.parse(
        {
            "destination": [
                {
                    "name": "night",
                    "kind": "folder",
                    "path": "/mnt/x",
                    "max_bytes_per_s": 2_000_000,
                    "send_windows": ["22:00-06:00", "12:00-13:00"],
                },
                {"name": "t", "kind": "stowrs", "url": "http://x", "token_file": "/t"},
            ]
        }
    ).destinations
    assert dest[0].max_bytes_per_s == 2_000_000
    assert factory.windows(dest[0]) == (Window(22 * 60, 6 * 60), Window(12 * 60, 13 * 60))
    assert dest[1].auth == "bearer"  # inferred from token_file
    with pytest.raises(config.ConfigError, match="apply to stowrs destinations only"):
        config.parse(
            {"destination": [{"name": "f", "kind": "folder", "path": "/x", "auth": "basic"}]}
        )


# ---------------------------------------------------------------- token bucket


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_token_bucket_paces_to_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.take(100)
    # 1000 bytes at 1000 B/s with 100 in the bucket at the start: 0.9 s of waiting.
    assert sum(clock.slept) == pytest.approx(0.9)
    clock.t += 100  # idle for a long time: only `burst` is saved up
    clock.slept.clear()
    bucket.take(300)
    assert sum(clock.slept) == pytest.approx(0.2)


def test_throttled_keeps_bytes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 << 20, clock=clock, sleep=clock.sleep)
    data = [bytes(range(256)) * 1000, b"", b"tail"]
    assert b"".join(throttled(data, bucket)) == b"".join(data)
    assert b"".join(throttled(data, None)) == b"".join(data)


# ---------------------------------------------------------------- drain keeps to the windows


def make_big(path: Path, nbytes: int) -> Path:
    """A Secondary Capture instance with `nbytes` of random 8-bit pixels (incompressible)."""
    side = int(nbytes**0.5)
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "CAP-TEST"
    ds.Modality = "OT"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(1).integers(0, 256, side * side, np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, items: list[Item]) -> list[Outcome]:
        self.sent += [item.id for item in items]
        return [Outcome(item.id, Verdict.DELIVERED, "ok") for item in items]

    def close(self) -> None:
        pass


def test_drain_waits_for_the_window(tmp_path: Path) -> None:
    utc = dt.UTC
    clock = FakeClock()
    clock.t = D(2026, 6, 1, 12, 0, tzinfo=utc).timestamp()
    outbox = Outbox(tmp_path / "outbox.db", rng=random.Random(1))
    files = [make_big(tmp_path / f"{n}.dcm", 4096) for n in range(3)]
    outbox.enqueue(files, ["rec"], "slide", now=clock.t)
    dest = Recorder()

    # A deadline before 22:00: nothing is sent, the next window is reported, no waiting.
    early = drain(
        outbox,
        dest,
        windows=NIGHT,
        tz=utc,
        now=clock,
        sleep=clock.sleep,
        deadline=clock.t + 3600,
    )
    assert dest.sent == [] and early.delivered == 0 and early.pending == 3
    assert early.next_window == D(2026, 6, 1, 22, 0, tzinfo=utc).timestamp()
    assert clock.slept == []

    # No deadline: it sleeps until 22:00, then sends everything.
    done = drain(outbox, dest, windows=NIGHT, tz=utc, now=clock, sleep=clock.sleep)
    assert clock.slept[0] == 10 * 3600
    assert D.fromtimestamp(clock.t, utc).hour == 22
    assert done.delivered == 3 and done.pending == 0 and done.next_window is None
    assert sorted(dest.sent) == sorted(set(dest.sent)) and len(dest.sent) == 3
    outbox.close()


# ---------------------------------------------------------------- measured caps

SIZE = 4_000_000
RATE = 2_000_000
FLOOR_S = 1.8  # (4 MB - 0.2 MB burst) / 2 MB/s = 1.9 s; a cap that leaks gives much less


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Item:
    return item_for(make_big(tmp_path_factory.mktemp("big") / "big.dcm", SIZE), 1)


@pytest.mark.slow
@pytest.mark.integration
def test_stowrs_cap_measured(orthanc: Orthanc, big: Item) -> None:
    orthanc.clear()
    dest = StowRsDestination("o", orthanc.dicomweb_url, bucket=TokenBucket(RATE))
    start = time.monotonic()
    outcomes = dest.send([big])
    elapsed = time.monotonic() - start
    dest.close()
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED], outcomes
    assert orthanc.instances() == [big.sop_instance_uid]
    assert elapsed >= FLOOR_S, f"{big.size} bytes at a {RATE} B/s cap took {elapsed:.2f} s"


@pytest.mark.slow
def test_folder_cap_measured(big: Item, tmp_path: Path) -> None:
    dest = FolderDestination("f", tmp_path / "out", bucket=TokenBucket(RATE))
    start = time.monotonic()
    outcomes = dest.send([big])
    elapsed = time.monotonic() - start
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED], outcomes
    assert elapsed >= FLOOR_S, elapsed
    # Without the cap the same copy is far quicker (the cap is what makes it slow).
    start = time.monotonic()
    FolderDestination("g", tmp_path / "fast").send([big])
    assert time.monotonic() - start < FLOOR_S / 2


@pytest.mark.slow
@pytest.mark.integration
def test_cstore_cap_measured(big: Item) -> None:
    with store_scp() as scp:
        dest = CStoreDestination(
            "p", "127.0.0.1", scp.port, "PACS", timeout_s=20, bucket=TokenBucket(RATE)
        )
        start = time.monotonic()
        outcomes = dest.send([big])
        elapsed = time.monotonic() - start
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED], outcomes
    assert big.sop_instance_uid in scp.received
    assert elapsed >= FLOOR_S, elapsed


def test_edge_send_outside_windows_reports_next(tmp_path: Path) -> None:
    """`edge send --wait` outside the windows: nothing sent, exit 3, the next start named."""
    import json
    import subprocess
    import sys

    now = dt.datetime.now()
    start = (now + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    window = f"{start:%H:%M}-{start + dt.timedelta(hours=1):%H:%M}"
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[destination]]\nname = "night"\nkind = "folder"\npath = "{tmp_path / "out"}"\n'
        f'send_windows = ["{window}"]\n'
    )
    make_big(tmp_path / "in" / "a.dcm", 4096)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "send",
            str(tmp_path / "in"),
            "--to",
            "night",
            "--wait",
            "--timeout",
            "60",
            "--config",
            str(cfg),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["delivered"] == 0 and result["pending"] == 1
    assert dt.datetime.fromisoformat(result["next_window"]).replace(tzinfo=None) == start
    assert not (tmp_path / "out").exists()
