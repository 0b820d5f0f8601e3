"""Per-slide progress at a destination (edge/outbox/queries.py slide_progress) and
`edge queue progress`, over a real converted and analysed slide whose level 0 goes as parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.config import Destination
from edge.forward.protocol import Outcome, Verdict
from edge.outbox import Outbox
from edge.outbox.schema import DATABASE
from edge.sync.plan import prepare_for
from tests.helpers import run_edge

CAP = 120_000


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("progress")
    # A kit slide with a planted pen stroke: QC finds a region, so the annotations exist too.
    svs = root / "p.svs"
    made = run_edge("synth", "-q", "--size", "3000x2200", "--artifacts", "pen", "--seed", "11",
                    "-o", str(svs))  # fmt: skip
    assert made.returncode == 0, made.stderr
    done = run_edge("convert", "-q", "--analyse", str(svs), "-o", str(root / "wsi"))
    assert done.returncode == 0, done.stderr
    slide = root / "wsi" / "p"
    dest = Destination(name="hub", kind="folder", path="/unused", max_instance_bytes=CAP)
    return prepare_for(dest, sorted(slide.glob("*.dcm")), root / "parts")


def _deliver(outbox: Outbox, count: int, at: float) -> list[str]:
    """Deliver the next `count` instances in send order; return their file names."""
    items = outbox.claim("hub", count, at)
    outbox.record("hub", [Outcome(i.id, Verdict.DELIVERED, "") for i in items], at)
    return [i.path.name for i in items]


def test_progress_through_a_sync(files: list[Path], tmp_path: Path) -> None:
    names = {p.name for p in files}
    assert {"qc-sr.dcm", "qc-seg.dcm", "qc-ann.dcm", "overview.dcm"} <= names
    level0_parts = [p for p in files if p.name.startswith("level-00.part-")]
    assert len(level0_parts) >= 3
    with Outbox(tmp_path / DATABASE) as outbox:
        assert outbox.slide_progress("s1", "hub")["state"] == "unknown"
        outbox.enqueue(files, ["hub"], "s1", now=1000.0)
        p = outbox.slide_progress("s1", "hub")
        assert p["state"] == "queued"
        assert p["instances"] == len(files)
        assert p["bytes_total"] == sum(f.stat().st_size for f in files)
        assert p["bytes_delivered"] == 0 and p["full_resolution"] == 0.0

        sent = _deliver(outbox, 3, 1010.0)  # the results go first
        assert set(sent) == {"qc-sr.dcm", "qc-seg.dcm", "qc-ann.dcm"}
        p = outbox.slide_progress("s1", "hub")
        assert p["results_sent_at"] == 1010.0
        assert p["overview_sent_at"] is None and p["state"] == "sending"

        sent = _deliver(outbox, 3, 1020.0)  # thumbnail, label, overview
        assert sent == ["thumbnail.dcm", "label.dcm", "overview.dcm"]
        p = outbox.slide_progress("s1", "hub")
        assert p["thumbnail_sent_at"] == p["overview_sent_at"] == 1020.0
        assert p["state"] == "preview"
        assert p["completed_at"] is None

        # every level above 0, then half of level 0's parts
        rest = len(files) - 6 - len(level0_parts)
        sent = _deliver(outbox, rest + len(level0_parts) // 2, 1030.0)
        assert not any(n.startswith("level-00") for n in sent[:rest])
        p = outbox.slide_progress("s1", "hub")
        half = sum(f.stat().st_size for f in level0_parts if f.name in sent)
        total0 = sum(f.stat().st_size for f in level0_parts)
        assert p["full_resolution"] == round(half / total0, 4)
        assert 0 < p["full_resolution"] < 1

        # a failure shows as retrying, then the rest completes
        items = outbox.claim("hub", 1, 1040.0)
        outbox.record("hub", [Outcome(items[0].id, Verdict.RETRY, "link dropped")], 1040.0)
        assert outbox.slide_progress("s1", "hub")["state"] == "retrying"
        _deliver(outbox, len(files), 5000.0)
        p = outbox.slide_progress("s1", "hub")
        assert p["state"] == "complete"
        assert p["full_resolution"] == 1.0
        assert p["bytes_delivered"] == p["bytes_total"]
        assert p["completed_at"] == 5000.0
        assert p["enqueued_at"] == 1000.0
        # another destination knows nothing of it
        assert outbox.slide_progress("s1", "elsewhere")["state"] == "unknown"


def test_parked_shows(files: list[Path], tmp_path: Path) -> None:
    with Outbox(tmp_path / DATABASE) as outbox:
        ids = outbox.enqueue(files[:2], ["hub"], "s2", now=1.0)
        outbox.park(ids[:1], "refused", 2.0)
        assert outbox.slide_progress("s2", "hub")["state"] == "parked"


def test_queue_progress_cli(files: list[Path], tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[storage]\nstate_dir = "{tmp_path}"\n[[destination]]\nname = "hub"\n'
        f'kind = "folder"\npath = "{tmp_path / "out"}"\n'
    )
    with Outbox(tmp_path / DATABASE) as outbox:
        outbox.enqueue(files, ["hub"], "slide-A", now=100.0)
        _deliver(outbox, 6, 160.0)
    done = run_edge("queue", "--config", str(config), "progress", "slide-A", "--json")
    assert done.returncode == 0, done.stderr
    [p] = json.loads(done.stdout)
    assert p["state"] == "preview" and p["overview_sent_at"] == 160.0
    done = run_edge("queue", "--config", str(config), "progress")
    assert done.returncode == 0, done.stderr
    assert "hub" in done.stdout and "preview" in done.stdout and "overview +60s" in done.stdout
    assert "slide-A" in done.stdout
    done = run_edge("queue", "--config", str(config), "progress", "nope")
    assert "nothing queued for nope" in done.stdout
