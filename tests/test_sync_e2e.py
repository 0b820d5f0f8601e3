"""Remote telepathology end to end: a converted, analysed slide goes from the outbox by
STOW-RS through a 5 Mbit/s link that drops every connection every 30-90 s to a real Orthanc
acting as the hub. Everything arrives exactly once with no manual action, QC results and the
overview first, and the hub's copy opens in wsidicom and OpenSlide with the source's pixels.

Size: a 13000 x 13000 synthetic slide (seed 2) converts to 38-57 MB with its QC results
(measured here; `edge synth` takes its textures from the real files it finds, so the
bytes vary with them): 60-90 s of pure transfer at 5 Mbit/s, long enough for at least one
drop with the link's seed (drops at 44 s and 80 s), short enough for CI. The issue's
40k x 40k slide would be ~9.5 times that, 10-15 minutes at 5 Mbit/s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import wsidicom

from edge.dicom import parts
from tests.helpers import frames_of, run_edge
from tests.orthanc import Orthanc, orthanc
from tools.linksim import LinkSettings, LinkSim
from tools.synclab import progressive, sop_uid

__all__ = ["orthanc"]  # fixtures used by name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIDE = 13000
LINK = LinkSettings(rate_bps=5_000_000, latency_s=0.05, drop_every=(30, 90), seed=4)
MAX_REQUEST = 2 << 20  # a drop loses at most one request ...
MAX_INSTANCE = MAX_REQUEST - 4096  # ... which holds at most one part


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sync-e2e")
    svs = root / "remote.svs"
    made = run_edge(
        "synth", "-q", "--seed", "2", "--size", f"{SIDE}x{SIDE}", "--format", "svs", "-o", str(svs)
    )
    assert made.returncode == 0, made.stderr
    done = run_edge("convert", "-q", "--analyse", str(svs), "-o", str(root / "wsi"))
    assert done.returncode == 0, done.stderr
    return root / "wsi" / "remote"


def test_progressive_sync_through_a_dropping_link(
    slide: Path, orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc.clear()
    files = sorted(slide.glob("*.dcm"))
    with LinkSim(("127.0.0.1", orthanc.http_port), LINK) as link:
        run = progressive(
            files,
            link,
            orthanc.http_url,
            tmp_path,
            max_instance_bytes=MAX_INSTANCE,
            max_request_bytes=MAX_REQUEST,
        )
    by_name = {p.name: p for p in files}
    results = [p for p in files if p.name.startswith("qc-")]  # annotations only with findings
    assert {"qc-sr.dcm", "qc-seg.dcm"} <= {p.name for p in results}
    preview = [by_name["thumbnail.dcm"], by_name["overview.dcm"]]
    level0 = [p for p in run.sent_files if p.name.startswith("level-00.part-")]
    summary = {
        "slide_mb": round(run.slide_bytes / 1e6, 1),
        "sent_instances": len(run.sent_files),
        "level0_parts": len(level0),
        "drops": run.drops,
        "retried_deliveries": run.attempts,
        "wire_over_slide": round(run.overhead, 3),
        "results_s": run.seen(results),
        "overview_s": run.seen(preview),
        "first_level0_part_s": min(run.first_seen[sop_uid(p)] for p in level0),
        "complete_s": run.finished_s,
    }
    print("sync e2e:", json.dumps(summary))
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))

    assert run.finished_s is not None, "not everything was delivered"
    assert run.drops >= 1, "the link never dropped: the test proves nothing about drops"
    # exactly once at the hub: every instance, no other, one copy each
    uids = {sop_uid(p) for p in run.sent_files}
    assert len(uids) == len(run.sent_files)
    held = orthanc.instances()
    assert sorted(held) == sorted(uids)
    assert orthanc.count() == len(uids)
    assert run.most_copies == 1
    # order: QC results, then thumbnail and overview, before any of level 0
    assert summary["results_s"] is not None and summary["overview_s"] is not None
    assert summary["results_s"] <= summary["first_level0_part_s"]
    assert summary["overview_s"] <= summary["first_level0_part_s"]
    assert summary["overview_s"] < 0.25 * run.finished_s
    # the hub's copy is the slide
    hub = tmp_path / "hub"
    hub.mkdir()
    for path in run.sent_files:
        (hub / path.name).write_bytes(orthanc.file(sop_uid(path)))
    assert _frames_digest(sorted(hub.glob("level-00.part-*.dcm"))) == parts.digest_frames(
        slide / "level-00.dcm"
    )
    _same_pixels(slide, hub)


def _frames_digest(paths: list[Path]) -> str:
    """The source's digest_frames over a concatenation's parts, joined in order."""
    import hashlib

    h = hashlib.sha256()
    ordered = sorted(
        paths, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InConcatenationNumber)
    )
    for path in ordered:
        for frame in frames_of(path):
            h.update(frame)
    return h.hexdigest()


def _same_pixels(source: Path, hub: Path) -> None:
    """Regions of level 0 and the whole of a lower level, wsidicom and OpenSlide."""
    qc = hub / "qc"
    qc.mkdir()
    for path in hub.glob("qc-*.dcm"):
        shutil.move(path, qc / path.name)  # keep the folder a pure image series for readers
    regions = [((0, 0), (512, 512)), ((6000, 7000), (2048, 2048)), ((12488, 12488), (512, 512))]
    with wsidicom.WsiDicom.open(source) as a, wsidicom.WsiDicom.open(hub) as b:
        assert b.size == a.size and len(b.levels) == len(a.levels)
        for at, size in regions:
            assert np.array_equal(
                np.asarray(a.read_region(at, 0, size)), np.asarray(b.read_region(at, 0, size))
            )
        lower = a.levels[2].size.to_tuple()
        whole_a = np.asarray(a.read_region((0, 0), 2, lower))
        assert whole_a.std() > 3  # tissue, not only background (blank: ~1.2)
        assert np.array_equal(whole_a, np.asarray(b.read_region((0, 0), 2, lower)))
    oa = openslide.OpenSlide(source / "level-00.dcm")
    ob = openslide.OpenSlide(sorted(hub.glob("level-00.part-*.dcm"))[0])
    try:
        assert ob.level_dimensions == oa.level_dimensions
        for at, size in regions:
            assert np.array_equal(
                np.asarray(oa.read_region(at, 0, size)), np.asarray(ob.read_region(at, 0, size))
            )
    finally:
        oa.close()
        ob.close()
