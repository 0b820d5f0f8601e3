"""`tools/bench qc` and `tools/bench pace`: QC accuracy on fresh kit slides, and speed.

qc: kit slides from seeds never used in training (default 50000..), written as SVS and
analysed by the appliance's own code (edge.analysis.api.analyse_path: one read pass, the
shipped models, the configured thresholds), scored against the kit's truth:

  focus   ROC-AUC over focus crops (64 px at ~1 µm/px) on tissue (truth tissue >= 50% of the
          crop): positive = >= 90% inside the blur truth mask, negative = outside it; crops
          partly blurred are left out (neither answer is wrong there).
  pen, fold, bubble (and debris, edge for information)
          precision and recall over 256 x 256 level-0 tiles of tissue (truth tissue >= 50%
          of the tile: QC judges tissue, and every verdict is a fraction of tissue): truth
          positive = the class's truth mask covers >= 50% of the tile, negative = 0%,
          partial tiles left out;
          predicted positive = the appliance's reported mask (after its smoothing and
          minimum region size) covers >= 50% of the tile.
  verdict sensitivity and specificity of verdict == "rescan" against the kit's own rescan
          rules (edge.synth.truth); "review" counts as not rescan.

pace: convert alone vs convert + analyse in the same pass on one large synthetic SVS, as
separate processes, with peak RSS: the end-to-end megapixels per second of level 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_models import kit_specs, require_real_texture

from edge.analysis.api import analyse_path
from edge.analysis.kit import crop_coverage, kit_model, procedural_texture
from edge.analysis.run import AnalysisOptions
from edge.synth.protocol import SlideSpec
from edge.synth.writers import write

TILE = 256
TILE_KINDS = ("pen", "fold", "bubble", "debris", "edge")
EVAL_KINDS = ("blur", "pen", "fold", "bubble", "debris", "edge")


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, predicted: npt.NDArray[np.bool_], actual: npt.NDArray[np.bool_]) -> None:
        self.tp += int((predicted & actual).sum())
        self.fp += int((predicted & ~actual).sum())
        self.fn += int((~predicted & actual).sum())
        self.tn += int((~predicted & ~actual).sum())

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")


@dataclass
class Scores:
    focus_p: list[float] = field(default_factory=list)
    focus_y: list[bool] = field(default_factory=list)
    tiles: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in TILE_KINDS})
    verdict: Tally = field(default_factory=Tally)
    slides: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    megapixels: float = 0.0


def eval_specs(n: int, seed_base: int) -> list[SlideSpec]:
    """Like training's kit (sizes, pixel sizes, stains, mixes), from other seeds; no stain
    failures (the v1 models do not judge staining intensity; see the model card)."""
    return [
        SlideSpec(
            s.width, s.height, s.seed, s.mpp, s.stain, tuple(a for a in s.artifacts if a != "stain")
        )
        for s in kit_specs(n, seed_base)
    ]


def kit_svs(spec: SlideSpec, workdir: Path, stem: str) -> Path:
    """The kit slide as SVS in workdir, written once and reused by later runs."""
    texture = "-proc" if procedural_texture(spec) else ""
    path = workdir / f"{stem}-{spec.seed}-{spec.width}x{spec.height}{texture}.svs"
    if not path.exists():
        write(kit_model(spec), path, "svs", quality=90)
    return path


def tile_fractions(mask: npt.NDArray[np.bool_], cell: int) -> npt.NDArray[np.float64]:
    h, w = mask.shape[0] // cell, mask.shape[1] // cell
    return mask[: h * cell, : w * cell].reshape(h, cell, w, cell).mean(axis=(1, 3))


def score_slide(spec: SlideSpec, path: Path, scores: Scores, options: AnalysisOptions) -> None:
    model = kit_model(spec)
    truth = model.truth()
    started = time.monotonic()
    result = analyse_path(path, options)
    scores.seconds += time.monotonic() - started
    scores.megapixels += spec.width * spec.height / 1e6
    if not result.available or result.geometry is None or result.findings is None:
        raise RuntimeError(f"{path}: QC unavailable: {result.unavailable}")
    d = result.geometry.mosaic_downsample
    masks = model.masks(d)
    empty = np.zeros_like(masks["tissue"])
    fine = result.geometry.decode_scale * 16
    fine_masks = model.masks(fine)
    blur_truth = fine_masks.get("blur", np.zeros_like(fine_masks["tissue"]))
    crops = [crop for crop, _ in result.focus_scores]
    on_tissue = crop_coverage(fine_masks["tissue"], fine, crops) >= 0.5
    inside = crop_coverage(blur_truth, fine, crops)
    for (_, p), tissue, blurred in zip(result.focus_scores, on_tissue, inside, strict=True):
        if tissue and (blurred >= 0.9 or blurred == 0.0):
            scores.focus_p.append(p)
            scores.focus_y.append(bool(blurred >= 0.9))
    cell = TILE // d
    on_tissue = tile_fractions(masks["tissue"], cell) >= 0.5
    for kind in TILE_KINDS:
        actual = tile_fractions(masks.get(kind, empty), cell)
        predicted = tile_fractions(result.findings.masks.get(kind, empty), cell) >= 0.5
        keep = on_tissue & ((actual >= 0.5) | (actual == 0))
        scores.tiles[kind].add(predicted[keep], (actual >= 0.5)[keep])
    said = result.verdict == "rescan"
    scores.verdict.add(np.array([said]), np.array([truth.needs_rescan]))
    scores.slides.append(
        {
            "seed": spec.seed,
            "size": f"{spec.width}x{spec.height}",
            "mpp": spec.mpp,
            "stain": spec.stain,
            "texture": "procedural" if procedural_texture(spec) else "real",
            "artifacts": list(spec.artifacts),
            "truth": "rescan" if truth.needs_rescan else "no rescan",
            "truth_reasons": list(truth.reasons),
            "verdict": result.verdict,
            "reasons": result.reasons,
            "stain_found": result.stain,
        }
    )


def roc_auc(p: list[float], y: list[bool]) -> float:
    """Mann-Whitney U form of ROC-AUC (ties count half)."""
    pa, ya = np.asarray(p), np.asarray(y, bool)
    pos, neg = pa[ya], pa[~ya]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def run_qc(n: int, seed_base: int, workdir: Path, options: AnalysisOptions) -> Scores:
    require_real_texture()
    workdir.mkdir(parents=True, exist_ok=True)
    scores = Scores()
    for spec in eval_specs(n, seed_base):
        path = kit_svs(spec, workdir, "eval")
        score_slide(spec, path, scores, options)
        last = scores.slides[-1]
        print(
            f"seed {spec.seed}: truth {last['truth']}, verdict {last['verdict']}",
            file=sys.stderr,
            flush=True,
        )
    return scores


def qc_markdown(scores: Scores, n: int, seed_base: int) -> str:
    f = lambda v: "n/a" if v != v else f"{v:.3f}"  # noqa: E731 (nan-safe)
    auc = roc_auc(scores.focus_p, scores.focus_y)
    lines = [
        f"Slides: {n} kit slides, seeds {seed_base}..{seed_base + n - 1} (training used "
        f"1000..1127), {scores.megapixels:.0f} MP of level 0 analysed in {scores.seconds:.1f} s "
        f"({scores.megapixels / max(scores.seconds, 1e-9):.0f} MP/s, analysis alone).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| focus crops ROC-AUC ({sum(scores.focus_y)} blurred / {len(scores.focus_y)}) | "
        f"{f(auc)} | >= 0.95 |",
    ]
    for kind in TILE_KINDS:
        t = scores.tiles[kind]
        target = ">= 0.90 / >= 0.90" if kind in ("pen", "fold", "bubble") else "(information)"
        lines.append(
            f"| {kind} tiles precision / recall ({t.tp + t.fn} positive of "
            f"{t.tp + t.fn + t.fp + t.tn}) | {f(t.precision)} / {f(t.recall)} | {target} |"
        )
    v = scores.verdict
    lines.append(
        f"| rescan verdict sensitivity / specificity ({v.tp + v.fn} need a rescan of "
        f"{v.tp + v.fn + v.fp + v.tn}) | {f(v.recall)} / {f(v.specificity)} | >= 0.95 / >= 0.90 |"
    )
    wrong = [s for s in scores.slides if (s["verdict"] == "rescan") != (s["truth"] == "rescan")]
    if wrong:
        lines += ["", "Slides where the verdict and the truth differ:", ""]
        for s in wrong:
            kinds = ", ".join(s["artifacts"]) or "clean"
            lines.append(
                f"- seed {s['seed']} ({s['size']}, {s['stain']}, {kinds}):"
                f" truth {s['truth']} {s['truth_reasons']}; verdict {s['verdict']} {s['reasons']}"
            )
    return "\n".join(lines)


def qc_targets_met(scores: Scores) -> bool:
    auc = roc_auc(scores.focus_p, scores.focus_y)
    ok = auc >= 0.95
    for kind in ("pen", "fold", "bubble"):
        t = scores.tiles[kind]
        ok &= t.precision >= 0.9 and t.recall >= 0.9
    return bool(ok and scores.verdict.recall >= 0.95 and scores.verdict.specificity >= 0.9)


def save_json(scores: Scores, path: Path) -> None:
    path.write_text(json.dumps(scores.slides, indent=2))


def pace_commands(slide: Path, out: Path, edge: str) -> dict[str, list[str]]:
    return {
        "convert": [edge, "convert", str(slide), "-o", str(out / "convert"), "-q"],
        "convert + analyse": [
            edge,
            "convert",
            str(slide),
            "-o",
            str(out / "both"),
            "-q",
            "--analyse",
            "--backend",
            "ort-cpu",
        ],
        "analyse alone": [
            edge,
            "analyse",
            str(slide),
            "-o",
            str(out / "analyse"),
            "-q",
            "--backend",
            "ort-cpu",
        ],
    }


def run_subprocess(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def choose_cut(row: list[Tally]) -> int:
    """Index of the cut-off to use, given one tile tally per cut-off (ascending): among those
    with precision >= 0.95 (else all), the middle of the ones within 0.005 of the best F1,
    not the lowest: where a class scores the same over a range (pen: every cut 0.1-0.5), the
    lowest cut widens the reported area (2.0.0's false pen rescans) and an end of the range
    is the closest to where scores drop on new slides."""

    def f1(t: Tally) -> float:
        return 2 * t.tp / max(2 * t.tp + t.fp + t.fn, 1)

    precise = [i for i, t in enumerate(row) if t.precision >= 0.95 and t.tp > 0]
    pool = precise or list(range(len(row)))
    top = max(f1(row[i]) for i in pool)
    near = [i for i in pool if f1(row[i]) >= top - 0.005]
    return near[(len(near) - 1) // 2]


AREA_KINDS = ("pen", "fold", "bubble")  # fractions that decide a rescan, exact in the truth


def choose_area_cut(errors: list[float]) -> int:
    """Index of the cut-off whose fractions of tissue are closest to the truth's (the least
    summed absolute error over the validation slides; the lower cut on a tie)."""
    return int(np.argmin(np.round(errors, 9)))


def calibrate(
    n: int, seed_base: int, workdir: Path, models_dir: Path, threads: int | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-class probability cut-offs from validation kit slides (seeds apart from both
    training and evaluation), using the appliance's own smoothing and minimum region size:
    detection cut-offs (for each class the cut with the best F1 over tiles among those with
    precision >= 0.95, else the best F1) and, for pen, fold and bubble, area cut-offs (the
    cut whose fractions of tissue come closest to the truth's, summed over the slides that
    have the class in truth or found). Written into the manifests' [thresholds] and
    [area_thresholds] by tools/train_models.py.
    threads: the models' runtime threads (None: the appliance's default)."""
    from edge.analysis import qc

    require_real_texture()
    workdir.mkdir(parents=True, exist_ok=True)
    cuts = np.round(np.arange(0.1, 0.96, 0.05), 2)
    kinds = ("pen", "fold", "bubble", "debris", "edge")
    tallies = {k: [Tally() for _ in cuts] for k in (*kinds, "blur")}
    area_errors = {k: np.zeros(len(cuts)) for k in AREA_KINDS}
    thresholds = qc.Thresholds()
    options = AnalysisOptions(backend="ort-cpu", models_dir=models_dir, threads=threads)
    for spec in eval_specs(n, seed_base):
        path = kit_svs(spec, workdir, "val")
        result = analyse_path(path, options)
        assert result.geometry is not None and result.findings is not None, result.unavailable
        d = result.geometry.mosaic_downsample
        pixel_mm2 = (result.geometry.mosaic_mpp / 1000) ** 2
        model = kit_model(spec)
        truth_fractions = model.truth().affected_fraction
        masks = model.masks(d)
        empty = np.zeros_like(masks["tissue"])
        cell = TILE // d
        tissue = result.findings.tissue
        on_tissue = tile_fractions(masks["tissue"], cell) >= 0.5
        for kind in (*kinds, "blur"):
            actual = tile_fractions(masks.get(kind, empty), cell)
            keep = on_tissue & ((actual >= 0.5) | (actual == 0))
            smooth = qc.smoothed(kind, result.maps[kind], thresholds)
            fractions = np.zeros(len(cuts))
            for i, cut in enumerate(cuts):
                mask = qc.class_mask(kind, smooth, tissue, float(cut), thresholds, pixel_mm2)
                predicted = tile_fractions(mask, cell) >= 0.5
                tallies[kind][i].add(predicted[keep], (actual >= 0.5)[keep])
                fractions[i] = (mask & tissue).sum() / max(int(tissue.sum()), 1)
            truth_fraction = truth_fractions.get(kind, 0.0)
            if kind in area_errors and (truth_fraction > 0 or fractions.any()):
                area_errors[kind] += np.abs(fractions - truth_fraction)
        print(f"calibration slide {spec.seed} done", file=sys.stderr, flush=True)
    chosen: dict[str, float] = {}
    for kind, row in tallies.items():
        best = choose_cut(row)
        chosen[kind] = float(cuts[best])
        pairs = zip(cuts, row, strict=True)
        table = " ".join(f"{c}:{t.precision:.2f}/{t.recall:.2f}" for c, t in pairs)
        print(f"{kind} (cut:precision/recall) {table}", file=sys.stderr)
        t = row[best]
        print(
            f"{kind}: cut {cuts[best]} precision {t.precision:.3f} recall {t.recall:.3f}",
            file=sys.stderr,
        )
    area: dict[str, float] = {}
    for kind, errors in area_errors.items():
        best = choose_area_cut(list(errors))
        area[kind] = float(cuts[best])
        table = " ".join(f"{c}:{e:.3f}" for c, e in zip(cuts, errors, strict=True))
        print(f"{kind} area (cut:summed |fraction error|) {table}", file=sys.stderr)
        print(f"{kind}: area cut {cuts[best]} (summed error {errors[best]:.3f})", file=sys.stderr)
    return chosen, area
