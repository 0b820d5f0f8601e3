"""A state database made by a real daemon run, for the dashboard tests.

Two small synthetic slides, one kit slide with strong pen marks (QC says rescan) and one
truncated file (quarantined), through `Daemon(config, once=True).run()` to a folder
destination.
"""

from __future__ import annotations

from pathlib import Path

from edge import config as cfg
from edge.daemon import Daemon, embedded_defaults
from edge.jobs import JobStore
from edge.outbox.schema import DATABASE
from edge.slide.synthetic import write_slide
from edge.synth.protocol import SlideSpec
from tests.helpers import run_edge

# As tests/test_analyse_cli.py: strong pen over ~18% of the tissue, a sure rescan.
PEN = SlideSpec(6000, 4000, seed=8, mpp=0.5, artifacts=("pen",), severity=1.0, extent=1.0)


def daemon_config(home: Path, **web: object) -> cfg.Config:
    base = embedded_defaults(home)
    return cfg.Config(
        state_dir=base.state_dir,
        ingest=cfg.Ingest(watch=base.ingest.watch, settle_s=0.0, poll_s=0.2),
        destinations=base.destinations,
        retry_base_s=0.1,
        retry_ceiling_s=0.5,
        web=cfg.Web(**web),  # type: ignore[arg-type]
    )


def build(home: Path) -> dict[str, int]:
    """Run the daemon over the slides; returns job ids by slide name."""
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    write_slide(inbox / "small-a.svs", 1200, 900, "svs", seed=11)
    write_slide(inbox / "small-b.tiff", 1000, 800, "tiff", seed=12)
    args = ["synth", "-o", str(inbox / "pen-kit.svs"), "--size", f"{PEN.width}x{PEN.height}"]
    args += ["--seed", str(PEN.seed), "--mpp", str(PEN.mpp), "-q", "--artifacts", "pen"]
    args += ["--severity", "1.0", "--extent", "1.0"]
    done = run_edge(*args)
    assert done.returncode == 0, done.stderr
    good = (inbox / "small-a.svs").read_bytes()
    (inbox / "broken.svs").write_bytes(good[: len(good) // 3])
    config = daemon_config(home)
    assert Daemon(config, once=True).run(timeout_s=600) == 0
    with JobStore(config.state_dir / DATABASE) as jobs:
        return {j["name"]: int(j["id"]) for j in jobs.list(limit=100)}
