"""`tools/bench sync`: progressive sync vs a plain STOW-RS of the whole series, through the
same simulated link (tools/linksim.py), each to a fresh real Orthanc.

Rows: edge's progressive sync (outbox order, concatenation parts, STOW-RS requests of at most
`--max-request-mb`, retries) and a plain STOW-RS (one request with every instance, sent again
after any failure), both on the dropping link; then both on the same link without drops, for
the cost of the parts and the ordering alone; and edge's sync with `adaptive = true`
(edge/forward/link.py: request size from the measured throughput and drops, up to
`--max-request-mb`; several requests in flight where that pays) on both links. Each run gets
the same seeded drop schedule, counted from its own start, and a fresh Orthanc (configured as
in tests/orthanc.py). Parts are `--part-mb` (default: the request cap) less 4096 bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.orthanc import orthanc_server  # noqa: E402
from tools.linksim import LinkSettings, LinkSim  # noqa: E402
from tools.synclab import SyncRun, plain, progressive  # noqa: E402

MB = 1e6


def ensure_slide(side: int, seed: int, workdir: Path) -> Path:
    """A synthetic slide converted with --analyse (QC SR/SEG), cached in the workdir."""
    folder = workdir / f"sync-{side}-{seed}"
    if not folder.with_suffix(".complete").exists():
        svs = workdir / f"sync-{side}-{seed}.svs"
        edge = [sys.executable, "-m", "edge.cli"]
        subprocess.run(
            [*edge, "synth", "-q", "--seed", str(seed), "--size", f"{side}x{side}", "-o", str(svs)],
            check=True,
        )
        subprocess.run(
            [*edge, "convert", "-q", "--analyse", str(svs), "-o", str(folder)], check=True
        )
        folder.with_suffix(".complete").write_text("")
    return folder / f"sync-{side}-{seed}"


def _fmt(t: float | None) -> str:
    return "–" if t is None else f"{t:.1f}"


def run(args: argparse.Namespace) -> int:
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = ensure_slide(args.size, args.seed, args.workdir)
    files = sorted(slide.glob("*.dcm"))
    results = [p for p in files if p.name.startswith("qc-")]
    overview = [p for p in files if p.name in ("thumbnail.dcm", "overview.dcm")]
    a, b = (float(x) for x in args.drop_every.split("-"))
    dropping = LinkSettings(
        rate_bps=args.rate_mbps * 1e6,
        latency_s=args.latency_ms / 1000,
        drop_every=(a, b),
        seed=args.link_seed,
    )
    steady = LinkSettings(rate_bps=dropping.rate_bps, latency_s=dropping.latency_s)
    request = int(args.max_request_mb * MB)
    part_mb = getattr(args, "part_mb", None)
    part = min(request, int(part_mb * MB)) if part_mb else request
    rows: list[tuple[str, SyncRun, int]] = []  # name, run, instances at the hub
    plans = [
        ("dropping", dropping, "progressive"),
        ("dropping", dropping, "plain"),
        ("steady", steady, "progressive"),
        ("steady", steady, "plain"),
        ("dropping", dropping, "adaptive"),
        ("steady", steady, "adaptive"),
    ]
    wanted = set(args.only.split(",")) if args.only else None
    plans = [p for p in plans if wanted is None or f"{p[2]}-{p[0]}" in wanted]
    if not plans:
        print(f"--only {args.only}: no such run", file=sys.stderr)
        return 2
    for link_name, settings, sender in plans:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            work = Path(tmp)
            with orthanc_server(work / "orthanc") as hub:
                print(f"{sender} over the {link_name} link ...", file=sys.stderr, flush=True)
                with LinkSim(("127.0.0.1", hub.http_port), settings) as link:
                    if sender in ("progressive", "adaptive"):
                        result = progressive(
                            files,
                            link,
                            hub.http_url,
                            work,
                            max_instance_bytes=part - 4096,
                            max_request_bytes=request,
                            timeout_s=args.timeout,
                            adaptive=sender == "adaptive",
                        )
                    else:
                        result = plain(files, link, hub.http_url, timeout_s=args.timeout)
                stored = hub.count()
        result.name = f"{result.name} ({link_name} link)"
        rows.append((result.name, result, stored))
        print(json.dumps({"run": result.name, "finished_s": result.finished_s}), file=sys.stderr)
    slide_bytes = sum(p.stat().st_size for p in files)
    table = [
        "| sender | QC results at hub s | overview at hub s | complete s | wire / slide bytes "
        "| drops | requests or retries | POSTs, most in flight | instances at hub |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, stored in rows:
        at_hub = f"{stored} / {len(r.sent_files)}"
        complete = _fmt(r.finished_s) if r.finished_s else f"not after {args.timeout:.0f}"
        table.append(
            f"| {name} | {_fmt(r.seen(results))} | {_fmt(r.seen(overview))} | {complete} "
            f"| {r.overhead:.3f} | {r.drops} | {r.attempts} | {r.requests}, {r.most_in_flight} "
            f"| {at_hub} |"
        )
    command = (
        f"tools/bench sync --size {args.size} --seed {args.seed} --rate-mbps {args.rate_mbps:g} "
        f"--latency-ms {args.latency_ms:g} --drop-every {args.drop_every} "
        f"--link-seed {args.link_seed} --max-request-mb {args.max_request_mb:g} "
        + (f"--part-mb {part_mb:g} " if part_mb else "")
        + f"--timeout {args.timeout:g}"
        + (f" --only {args.only}" if args.only else "")
    )
    text = (
        f"Command: `.venv/bin/python {command}`\n\n"
        f"Slide: {args.size}x{args.size} synthetic (seed {args.seed}), converted with "
        f"--analyse: {len(files)} instances, {slide_bytes / MB:.1f} MB. Link: "
        f"{args.rate_mbps:g} Mbit/s each way, {args.latency_ms:g} ms one way; dropping: every "
        f"connection reset every U({args.drop_every.replace('-', ', ')}) s (seed "
        f"{args.link_seed}). Times are seconds from the start of the send.\n\n" + "\n".join(table)
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    _, first, stored = rows[0]
    ok = first.finished_s is not None and stored == len(first.sent_files)
    return 0 if ok and first.most_copies == 1 else 1
