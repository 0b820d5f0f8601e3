"""Link awareness: the estimator (pure), adaptive STOW-RS against a real Orthanc, the saved
estimate (part size, `edge queue link`, the dashboard) and a dropping simulated link."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from edge import config as cfg
from edge.forward import factory, link
from edge.forward.link import Ending, LinkEstimator, Observation
from edge.forward.protocol import Item, Outcome, Verdict
from edge.forward.stowrs import REQUEST_FLOOR, StowRsDestination, _Part, plan_requests
from edge.forward.worker import drain
from edge.outbox import CircuitBreaker, Outbox, RetryPolicy
from edge.outbox.schema import DATABASE, connect
from edge.send import link_status
from edge.sync.plan import MIN_PART, link_request_bytes, part_cap
from edge.web import api, status
from tests.helpers import run_edge
from tests.orthanc import Orthanc, orthanc_server
from tools.linksim import LinkSettings, LinkSim

MB = 1 << 20
T0 = 1_800_000_000.0  # a fixed Unix time for the pure tests


# ---------------------------------------------------------------------- the estimator (pure)


def _fed(
    drops: list[float], rate: float = 500_000.0, since: float = T0, until: float | None = None
) -> LinkEstimator:
    """An estimator that saw the link in use from `since` to `until` (default: the last
    drop): 1 s requests at `rate` back to back, and transport failures at `drops`."""
    est = LinkEstimator()
    end = until if until is not None else max([since + 1, *drops])
    events = [(since + 1 + i, "ok") for i in range(int(end - since))]
    for at, kind in sorted(events + [(t, "drop") for t in drops]):
        if kind == "ok":
            est.observe(Observation(int(rate), 1.0, Ending.OK, at))
        else:
            est.observe(Observation(1000, 1.0, Ending.TRANSPORT, at))
    return est


def test_no_drops_means_the_ceiling() -> None:
    est = _fed([])
    assert est.request_bytes(MB, 8 * MB, T0 + 100) == 8 * MB
    assert not est.has_estimate(T0 + 100)
    assert LinkEstimator().request_bytes(MB, 8 * MB, T0) == 8 * MB


def test_request_size_follows_the_gap_between_drops() -> None:
    # 4 drops in 120 s of use: mean gap 30 s -> target 7.5 s at 500 kB/s = 3.75 MB
    est = _fed([T0 + 30, T0 + 60, T0 + 90, T0 + 119], until=T0 + 120)
    assert est.mean_gap_s(T0 + 120) == pytest.approx(30.0)
    assert est.request_bytes(MB, 8 * MB, T0 + 120) == pytest.approx(3_750_000, rel=1e-6)
    assert est.has_estimate(T0 + 120)
    # half an hour idle proves nothing: the same gap, the same size
    assert est.mean_gap_s(T0 + 1920) == pytest.approx(30.0)
    assert est.request_bytes(MB, 8 * MB, T0 + 1920) == pytest.approx(3_750_000, rel=1e-6)
    # requests in flight together count their wall time once
    est.observe(Observation(500_000, 1.0, Ending.OK, T0 + 121))
    est.observe(Observation(500_000, 1.0, Ending.OK, T0 + 121))
    assert est.mean_gap_s(T0 + 122) == pytest.approx(121 / 4)
    # very frequent drops: the 2 s minimum, then the floor
    quick = _fed([T0 + 2 * i for i in range(1, 10)])
    assert quick.request_bytes(100_000, 8 * MB, T0 + 20) == 1_000_000  # 2 s * 500 kB/s
    assert quick.request_bytes(MB, 8 * MB, T0 + 20) == MB
    # rare drops: at most 60 s worth, and never above the ceiling
    rare = _fed([T0 + 1000], rate=10_000.0)
    assert rare.request_bytes(MB, 8 * MB, T0 + 3000) == MB  # 60 s * 10 kB/s < floor
    rare_fast = _fed([T0 + 1000], rate=1e6)
    assert rare_fast.request_bytes(MB, 100 * MB, T0 + 3000) == 60_000_000


def test_drops_are_forgotten_after_an_hour_and_peer_errors_are_not_drops() -> None:
    est = _fed([T0 + 10])
    est.observe(Observation(5000, 0.1, Ending.PEER, T0 + 20))  # HTTP 503: not the link
    assert est.drops_in_window(T0 + 20) == 1
    assert est.drops_in_window(T0 + 10 + 3601) == 0
    assert est.request_bytes(MB, 8 * MB, T0 + 10 + 3601) == 8 * MB


def test_failures_of_one_drop_count_once() -> None:
    est = _fed([T0 + 50, T0 + 50.2, T0 + 50.9, T0 + 80])  # 3 requests cut by one drop
    assert est.drops_in_window(T0 + 100) == 2


def test_no_throughput_yet_means_the_floor() -> None:
    est = LinkEstimator()
    est.observe(Observation(8 * MB, 12.0, Ending.TRANSPORT, T0 + 12))
    assert est.request_bytes(MB, 8 * MB, T0 + 13) == MB
    assert not est.has_estimate(T0 + 13)


def test_aimd_concurrency() -> None:
    est = LinkEstimator()
    assert est.parallel(4) == 1
    assert est.end_round(1_000_000, 1.0, 0) == 2  # first round: probe
    assert est.end_round(1_500_000, 1.0, 0) == 3  # +50 %
    assert est.end_round(1_600_000, 1.0, 0) == 3  # +7 %: stay
    assert est.end_round(1_800_000, 1.0, 0) == 4  # +12.5 % over the previous round
    assert est.end_round(2_500_000, 1.0, 0) == 5
    assert est.parallel(4) == 4  # never above the limit
    assert est.end_round(900_000, 1.0, 1) == 1  # a transport failure: back to 1
    assert est.parallel(4) == 1
    assert est.end_round(0, 1.0, 0) == 1  # nothing answered (refused by the peer): no change


def test_state_round_trips_and_bad_files_start_afresh(tmp_path: Path) -> None:
    est = _fed([T0 + 30, T0 + 60])
    est.end_round(1000, 1.0, 0)
    path = link.state_path(tmp_path, "hub/../x")
    assert path.parent == tmp_path / "link" and "/" not in path.name
    link.save(est, path)
    again = link.load(path)
    assert again.to_json() == est.to_json()
    assert again.request_bytes(MB, 8 * MB, T0 + 90) == est.request_bytes(MB, 8 * MB, T0 + 90)
    path.write_text("{not json")
    assert link.load(path).to_json()["drops"] == []
    path.write_text(json.dumps({"version": 99}))
    assert link.load(path).throughput_bps is None
    assert link.load(tmp_path / "missing.json").throughput_bps is None


def _part(size: int, number: int) -> _Part:
    item = Item(number, Path(f"/x/{number}"), "1.2", f"1.2.{number}", "1.2.840.10008.1.2.1", size)
    return _Part(item, size)


def test_plan_requests_with_a_target() -> None:
    parts = [_part(400_000, 1), _part(400_000, 2), _part(3 * MB, 3), _part(400_000, 4)]
    parts.append(_part(9 * MB, 5))
    fixed, too_large = plan_requests(parts, "b", 8 * MB)
    assert [[p.item.id for p in g] for g in fixed] == [[1, 2, 3, 4]]
    assert [p.item.id for p in too_large] == [5]
    groups, too_large = plan_requests(parts, "b", 8 * MB, target=MB)
    # an instance over the target goes alone; over the ceiling it is refused as before
    assert [[p.item.id for p in g] for g in groups] == [[1, 2], [3], [4]]
    assert [p.item.id for p in too_large] == [5]


def test_part_cap() -> None:
    dest = cfg.Destination(
        "hub", "stowrs", url="http://h", max_request_bytes=8 * MB, max_instance_bytes=8 * MB - 4096
    )
    assert part_cap(dest, None) == 8 * MB - 4096
    assert part_cap(dest, 3 * MB) == 3 * MB - 4096
    assert part_cap(dest, 100) == MIN_PART
    off = cfg.Destination("hub", "stowrs", url="http://h", max_instance_bytes=0)
    assert part_cap(off, 3 * MB) == 0
    fixed = cfg.Destination(
        "hub", "stowrs", url="http://h", max_instance_bytes=4 * MB, adaptive=False
    )
    assert part_cap(fixed, 3 * MB) == 4 * MB


def test_adaptive_setting_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    base = '[[destination]]\nname = "hub"\nkind = "stowrs"\nurl = "http://h/dicom-web"\n'
    path.write_text(base)
    assert cfg.load(path).destinations[0].adaptive is True
    path.write_text(base + "adaptive = false\n")
    assert cfg.load(path).destinations[0].adaptive is False
    path.write_text(base + 'adaptive = "yes"\n')
    with pytest.raises(cfg.ConfigError, match="adaptive"):
        cfg.load(path)


# ---------------------------------------------------------------------- real Orthanc


def _instances(folder: Path, count: int, side: int = 512) -> list[Path]:
    """Secondary Capture instances of noise (incompressible), about side*side*2 bytes each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, count + 1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality = "LINK-TEST", "Link^Test", "OT"
        ds.InstanceNumber = number
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = rng.integers(0, 65535, (side, side), dtype=np.uint16).tobytes()
        path = folder / f"sc-{number:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _items(files: list[Path]) -> list[Item]:
    return [
        Item(n, p, SecondaryCaptureImageStorage, str(_uid(p)), ExplicitVRLittleEndian, 0)
        for n, p in enumerate(files, start=1)
    ]


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _verdicts(outcomes: list[Outcome]) -> dict[int, Verdict]:
    return {o.item_id: o.verdict for o in outcomes}


def test_adaptive_requests_deliver_what_fixed_ones_do(tmp_path: Path) -> None:
    files = _instances(tmp_path / "in", 10)  # 10 x 524 kB
    big = _instances(tmp_path / "big", 1, side=1500)[0]  # 4.5 MB: over the ceiling
    items = _items([*files, big])
    items.append(Item(99, tmp_path / "gone.dcm", SecondaryCaptureImageStorage, "1.2.3", "", 0))
    # an estimate that calls for small requests, three at a time
    est = _fed([time.time() - 40, time.time() - 20], rate=100_000.0, since=time.time() - 60)
    est.level = 3
    with orthanc_server(tmp_path / "a") as fixed_hub, orthanc_server(tmp_path / "b") as hub:
        fixed = StowRsDestination("a", fixed_hub.dicomweb_url, max_request_bytes=4 * MB)
        adaptive = StowRsDestination(
            "b",
            hub.dicomweb_url,
            max_request_bytes=4 * MB,
            link=est,
            link_state=tmp_path / "state" / "b.json",
        )
        try:
            want = _verdicts(fixed.send(items))
            got = _verdicts(adaptive.send(items))
            first = adaptive.requests
            again = _verdicts(adaptive.send(items))  # already stored: still delivered
        finally:
            fixed.close()
            adaptive.close()
        assert want == got == again
        assert list(want.values()).count(Verdict.DELIVERED) == 10
        assert want[11] is Verdict.PARK and want[99] is Verdict.PARK
        assert fixed.requests == 2
        assert adaptive.most_in_flight == 3, "the first wave sends three requests at once"
        # three requests of one instance each (two do not fit the 1 MiB floor), then the rest
        # in requests the measured (fast, local) link allows
        assert first >= 4
        assert sorted(hub.instances()) == sorted(fixed_hub.instances())
        assert hub.count() == 10
    saved = link.load(tmp_path / "state" / "b.json")
    assert saved.throughput_bps is not None and saved.throughput_bps > 100_000


def test_saved_estimate_drives_parts_cli_and_dashboard(tmp_path: Path) -> None:
    state = tmp_path / "state"
    toml = tmp_path / "edge.toml"
    toml.write_text(
        f'[storage]\nstate_dir = "{state}"\n[[destination]]\nname = "hub"\nkind = "stowrs"\n'
        'url = "http://127.0.0.1:9/dicom-web"\nmax_request_bytes = 8388608\n'
        "max_instance_bytes = 8384512\n"
        '[[destination]]\nname = "pacs"\nkind = "cstore"\n'
    )
    config = cfg.load(toml)
    hub = config.destination("hub")
    assert link_request_bytes(hub, state) is None  # nothing measured
    assert link_status(config) == [{"destination": "hub", "estimate": None}]
    now = time.time()
    # a gap of ~1000 s: requests of 60 s (the longest) at 20 kB/s, whenever this runs
    est = _fed([now - 2500, now - 1500, now - 500], rate=20_000.0, since=now - 3000)
    link.save(est, link.state_path(state, "hub"))
    size = link_request_bytes(hub, state)
    assert size == 1_200_000 and size > REQUEST_FLOOR
    assert part_cap(hub, size) == max(MIN_PART, size - 4096)
    built = factory.build(hub, state)
    assert isinstance(built, StowRsDestination) and built.request_bytes() == size
    built.close()

    done = run_edge("queue", "--config", str(toml), "link", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert [s["destination"] for s in shown] == ["hub"]
    assert shown[0]["estimate"]["drops_last_hour"] == 3
    assert shown[0]["estimate"]["throughput_mbit_s"] == pytest.approx(0.16)
    assert shown[0]["estimate"]["request_bytes"] == size
    text = run_edge("queue", "--config", str(toml), "link", timeout=60).stdout
    assert "0.16 Mbit/s" in text and "3 drop(s)" in text

    with Outbox(state / DATABASE):
        pass
    conn = connect(state / DATABASE, readonly=True)
    try:
        found = {d["name"]: d for d in status.destinations(conn, config)}
    finally:
        conn.close()
    assert found["hub"]["link"]["request_bytes"] == size
    assert "link" not in found["pacs"]
    # the API's response model keeps it (GET /api/v1/destinations)
    assert api.Destination.model_validate(found["hub"]).link == found["hub"]["link"]
    assert api.Destination.model_validate(found["pacs"]).link is None


# ---------------------------------------------------------------------- a dropping link


def _drain_through(
    link_sim: LinkSim, files: list[Path], work: Path, *, adaptive: bool, seconds: float
) -> tuple[int, int]:
    """(delivered, pending) after draining `files` through the link for at most `seconds`.
    No retry jitter: a failed batch comes back whole, so the fixed request size stays fixed."""
    dest = cfg.Destination(
        name="hub",
        kind="stowrs",
        url=f"http://127.0.0.1:{link_sim.port}/dicom-web",
        max_request_bytes=4 * MB,
        timeout_s=20,
        adaptive=adaptive,
    )
    with Outbox(
        work / DATABASE, policy=RetryPolicy(base_s=0.2, ceiling_s=1.0, jitter=0.0)
    ) as outbox:
        outbox.enqueue(files, ["hub"], "slide")
        destination = factory.build(dest, work)
        try:
            result = drain(
                outbox,
                destination,
                batch_size=20,
                breaker=CircuitBreaker(threshold=1000, cooldown_s=0.5),
                deadline=time.time() + seconds,
            )
        finally:
            destination.close()
    return result.delivered, result.pending


@pytest.mark.slow
@pytest.mark.integration
def test_adaptive_requests_get_through_where_fixed_ones_never_do(tmp_path: Path) -> None:
    files = _instances(tmp_path / "in", 7)  # 3.7 MB: one 4 MiB request takes 7.3 s at 4 Mbit/s
    settings = LinkSettings(rate_bps=4e6, latency_s=0.01, drop_every=(4.0, 6.0), seed=1)
    with orthanc_server(tmp_path / "hub") as hub:
        with LinkSim(("127.0.0.1", hub.http_port), settings) as sim:
            delivered, pending = _drain_through(
                sim, files, tmp_path / "fixed", adaptive=False, seconds=15
            )
        assert (delivered, pending, hub.count()) == (0, 7, 0), "every request cut by a drop"
        with LinkSim(("127.0.0.1", hub.http_port), settings) as sim:
            delivered, pending = _drain_through(
                sim, files, tmp_path / "adaptive", adaptive=True, seconds=60
            )
            drops = sim.stats.drops
        assert (delivered, pending) == (7, 0)
        assert hub.count() == 7
        assert drops >= 1
        assert _orthanc_each_once(hub, files)
    saved = link.load(link.state_path(tmp_path / "adaptive", "hub"))
    assert saved.drops, "the drops were seen"


def _orthanc_each_once(hub: Orthanc, files: list[Path]) -> bool:
    """Every file's SOP Instance UID is at the hub, once."""
    uids = []
    with hub.client() as client:
        for orthanc_id in client.get("/instances").json():
            tags = client.get(f"/instances/{orthanc_id}/simplified-tags").json()
            uids.append(tags["SOPInstanceUID"])
    return sorted(uids) == sorted(_uid(p) for p in files)


def test_the_daemon_cuts_parts_to_the_links_request_size(tmp_path: Path) -> None:
    """Daemon._parts: an adaptive destination whose link dropped lately gets parts of the
    link's request size; before any estimate, of max_instance_bytes."""
    from edge.convert import convert
    from edge.daemon import Daemon
    from edge.slide.synthetic import write_slide

    svs = tmp_path / "s.svs"
    write_slide(svs, 4096, 3072, "svs", seed=31, quality=95)
    files = sorted(Path(convert(svs, tmp_path / "out").output).glob("*.dcm"))
    level0 = max(files, key=lambda p: p.stat().st_size)
    assert level0.stat().st_size > 2 * MB
    hub = cfg.Destination(
        "hub",
        "stowrs",
        url="http://127.0.0.1:9/dicom-web",
        max_request_bytes=16 * MB,
        max_instance_bytes=16 * MB - 4096,
    )
    config = cfg.Config(state_dir=tmp_path / "state", destinations=(hub,))
    daemon = Daemon(config)
    [(names, whole)] = daemon._parts(1, [(["hub"], files)])
    assert names == ["hub"] and level0 in whole, "no estimate: the level fits the cap whole"
    now = time.time()
    est = _fed([now - 2500, now - 1500, now - 500], rate=20_000.0, since=now - 3000)
    link.save(est, link.state_path(config.state_dir, "hub"))  # 60 s * 20 kB/s = 1.2 MB
    [(names, cut)] = daemon._parts(2, [(["hub"], files)])
    assert level0 not in cut and len(cut) > len(files)
    new = [p for p in cut if p not in files]
    assert all(p.stat().st_size <= 1_200_000 - 4096 for p in new)
    assert all(f"-{1_200_000 - 4096}" in p.parent.name for p in new)
    # The link recovers, but job 2's parts are pinned: planning it again (its pyramid was
    # queued early; a restart) cuts the same parts, never a second concatenation.
    link.state_path(config.state_dir, "hub").unlink()
    [(names, again)] = daemon._parts(2, [(["hub"], files)])
    assert again == cut
    [(names, fresh)] = daemon._parts(3, [(["hub"], files)])
    assert level0 in fresh, "a new job follows the link as it is now"
