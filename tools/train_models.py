#!/usr/bin/env python3
"""Train the QC models from kit slides and write models/<name>/ (ONNX, manifest, card data).

    .venv/bin/python tools/train_models.py [--slides 48] [--seed-base 1000] [--jobs 2]
                                           [--cache /tmp/edge-train] [--out models]
                                           [--only focus,artifact-cnn,stain,calibrate]

The artifact model is a convolutional network trained with PyTorch
(tools/train_artifact_cnn.py): run that step from a venv with the `train` extra
(pip install -e '.[train]'); the appliance itself only runs the exported ONNX.

Then the per-class probability cut-offs are calibrated on 48 validation kit slides (seeds
20000..20047, neither training nor evaluation) and written into the manifests.

Reproducible: the kit slides are drawn from seeds seed-base .. seed-base + slides - 1 (their
specs from a generator seeded by seed-base), every sampler and the heads' training are
seeded, and the same command writes byte-identical models. Evaluation seeds (tools/bench qc)
start at 50000 and are never used here.

Data: each kit slide is written as a real SVS and read back through the appliance's own
sampler (edge.analysis.kit), so features come from JPEG tiles decoded by DCT scaling exactly
as in production. Slides are cached as .npz under --cache keyed by their spec.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.analysis import nets
from edge.analysis.kit import procedural_texture, sample_kit_slide
from edge.analysis.registry import sha256_file
from edge.synth.protocol import SlideSpec
from edge.synth.texture import SOURCES, default_texture_dirs, resolve_texture_dir

KINDS = ("blur", "pen", "fold", "bubble", "debris", "edge", "stain")
# Label precedence where truth masks overlap: what the technician must act on first.
PRECEDENCE = ("pen", "bubble", "fold", "edge", "debris")
FORCED = ("pen", "fold", "bubble", "edge", "blur", "pen", "debris")
ARTIFACT_CYCLE = ("pen", "fold", "bubble", "debris", "edge")  # tools/train_artifact_cnn.py


def require_real_texture() -> Path:
    """The real-texture folder kit slides draw from, or SystemExit. Without one every kit
    slide silently gets procedural texture (edge.synth.texture), and a model trained or scored
    on those says nothing about the real-texture slides the bench uses: in a git worktree
    ../shared/data/real is not next to the repository, so set EDGE_TEST_DATA."""
    found = resolve_texture_dir(None)
    if found is None:
        raise SystemExit(
            f"no real texture for kit slides in {[str(d) for d in default_texture_dirs()]} "
            f"(files {[s[0] for s in SOURCES]}): set EDGE_TEST_DATA=/work/shared/data/real"
        )
    return found


def kit_specs(n: int, seed_base: int) -> list[SlideSpec]:
    """n varied kit slides: sizes, pixel sizes, stains, artifact mixes (clean ones too)."""
    g = np.random.default_rng(seed_base)
    specs = []
    for i in range(n):
        mpp, width, height = _slide_shape(g)
        k = int(g.integers(0, 4))
        arts = tuple(sorted(g.choice(KINDS, size=k, replace=False))) if k else ()
        if i % 2:  # every other slide: one of the kinds a rescan hinges on, for enough examples
            arts = tuple(sorted({*arts, FORCED[(i // 2) % len(FORCED)]}))
        stain = "IHC" if g.random() < 0.35 else "H&E"
        specs.append(
            SlideSpec(width, height, seed=seed_base + i, mpp=mpp, stain=stain, artifacts=arts)
        )
    return specs


def _slide_shape(g: np.random.Generator) -> tuple[float, int, int]:
    """(mpp, width, height) of a kit slide, three draws from g in a fixed order (the seeds'
    slides depend on it): 3 in 4 at 0.25 µm/px, sides to a multiple of 16."""
    mpp = 0.25 if g.random() < 0.75 else 0.5
    side = int(g.integers(8000, 14000)) if mpp == 0.25 else int(g.integers(5000, 8000))
    aspect = g.uniform(0.6, 0.9)
    return mpp, side // 16 * 16, int(side * aspect) // 16 * 16


def fold_specs(n: int, seed_base: int) -> list[SlideSpec]:
    """n extra training-only kit slides that all carry a fold, 3 in 4 of them on IHC (the
    pale sections whose folds 2.0.x missed: docs/artifact-training.md); sizes and pixel sizes
    as kit_specs, other artifacts drawn as there. Seeds seed_base.. must lie apart from
    kit_specs' training, validation (20000..) and test (50000..) seeds."""
    g = np.random.default_rng(seed_base)
    specs = []
    for i in range(n):
        mpp, width, height = _slide_shape(g)
        k = int(g.integers(0, 3))
        others = tuple(str(a) for a in g.choice([a for a in KINDS if a != "fold"], k, False))
        stain = "IHC" if i % 4 != 3 else "H&E"
        specs.append(
            SlideSpec(
                width,
                height,
                seed=seed_base + i,
                mpp=mpp,
                stain=stain,
                artifacts=tuple(sorted({*others, "fold"})),
            )
        )
    return specs


def _key(spec: SlideSpec) -> str:
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


def cached_sample(spec: SlideSpec, cache: Path) -> Path:
    path = cache / f"{spec.seed}-{_key(spec)}{'-proc' if procedural_texture(spec) else ''}.npz"
    if path.exists():
        return path
    s = sample_kit_slide(spec, cache)
    masks = {f"mask_{k}": v for k, v in s.masks.items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        mosaic=s.mosaic,
        crop_pixels=s.crop_pixels,
        crop_blur=s.crop_blur,
        crop_tissue=s.crop_tissue,
        crop_xy=np.array([(c.x, c.y, c.size) for c in s.crops], np.int64).reshape(-1, 3),
        downsample=s.geometry.mosaic_downsample,
        truth=json.dumps(
            {
                "needs_rescan": s.truth.needs_rescan,
                "reasons": s.truth.reasons,
                "affected": s.truth.affected_fraction,
                "artifacts": list(s.truth.artifacts),
            }
        ),
        stain=spec.stain,
        **masks,
    )
    tmp.replace(path)
    return path


def labels_from_masks(data: dict[str, npt.NDArray[np.bool_]]) -> npt.NDArray[np.int64]:
    """Per mosaic pixel: index into nets.ARTIFACT_CLASSES (precedence where masks overlap)."""
    tissue = data["tissue"]
    label = np.where(tissue, 1, 0).astype(np.int64)
    for kind in reversed(PRECEDENCE):
        if kind in data:
            label[data[kind]] = nets.ARTIFACT_CLASSES.index(kind)
    return label


@functools.cache
def _front_session(name: str) -> Any:
    import onnxruntime as ort

    # "artifact-any": the artifact front end on a whole mosaic of any size.
    model = nets.front_end(name.removesuffix("-any"), any_size=name.endswith("-any"))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_front(name: str, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    sess = _front_session(name)
    outs = [sess.run(None, {"image": batch[i : i + 256]})[0] for i in range(0, len(batch), 256)]
    return np.concatenate(outs).astype(np.float32)


def standardised_mlp(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    hidden: tuple[int, ...],
    seed: int,
    sample_weight: npt.NDArray[np.float64] | None = None,
) -> nets.Head:
    """Fit an MLP on standardised features; fold the standardisation into the first layer."""
    from sklearn.neural_network import MLPClassifier

    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = MLPClassifier(
        hidden,
        alpha=1e-3,
        max_iter=300,
        random_state=seed,
        early_stopping=True,
        n_iter_no_change=15,
        batch_size=512,
    )
    clf.fit((x - mu) / sd, y)
    weights = [w.T.astype(np.float32) for w in clf.coefs_]
    biases = [b.astype(np.float32) for b in clf.intercepts_]
    biases[0] = (biases[0] - weights[0] @ (mu / sd)).astype(np.float32)
    weights[0] = (weights[0] / sd[None, :]).astype(np.float32)
    return nets.Head(weights, biases)


def train_focus(samples: list[dict[str, npt.NDArray]], seed: int) -> nets.Head:
    xs, ys = [], []
    for s in samples:
        blur, tissue = s["crop_blur"], s["crop_tissue"]
        keep = (tissue >= 0.5) & ((blur >= 0.9) | (blur == 0))
        if keep.any():
            xs.append(s["crop_pixels"][keep])
            ys.append((blur[keep] >= 0.9).astype(np.int64))
    pixels = np.concatenate(xs)[:, None].astype(np.float32) / 255.0
    y = np.concatenate(ys)
    feats = run_front("focus", pixels)
    print(f"focus: {len(y)} crops, {int(y.sum())} blurred", flush=True)
    return standardised_mlp(feats, y, (16,), seed)


def artifact_pixels(
    samples: list[dict[str, npt.NDArray]],
    seed: int,
    per_class: int = 3000,
    cap: int = 60000,
    floor: int = 20000,
    pool_per_slide: int = 20000,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Per-pixel features (the front end run over each whole mosaic; it is fully
    convolutional) and labels, balanced: every class between `floor` (drawn with
    replacement) and `cap` samples, so rare artifacts weigh as much as glass."""
    g = np.random.default_rng(seed)
    xs: list[list[npt.NDArray[np.float32]]] = [[] for _ in nets.ARTIFACT_CLASSES]
    pool_x: list[npt.NDArray[np.float32]] = []
    pool_y: list[npt.NDArray[np.int64]] = []
    for s in samples:
        label = labels_from_masks({k[5:]: s[k] for k in s if k.startswith("mask_")})
        image = s["mosaic"].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        feats = _front_session("artifact-any").run(None, {"image": image})[0][0]
        for cls in range(len(nets.ARTIFACT_CLASSES)):
            ys_, xs_ = np.nonzero(label == cls)
            if len(ys_):
                pick = g.choice(len(ys_), size=min(per_class, len(ys_)), replace=False)
                xs[cls].append(feats[:, ys_[pick], xs_[pick]].T)
        # A wider, unbalanced draw of tissue and glass: where hard negatives are mined.
        ys_, xs_ = np.nonzero(label <= 1)
        pick = g.choice(len(ys_), size=min(pool_per_slide, len(ys_)), replace=False)
        pool_x.append(feats[:, ys_[pick], xs_[pick]].T)
        pool_y.append(label[ys_[pick], xs_[pick]])
    global HARD_POOL
    HARD_POOL = (np.concatenate(pool_x), np.concatenate(pool_y))
    out_x, out_y = [], []
    for cls, parts in enumerate(xs):
        if not parts:
            continue
        x = np.concatenate(parts)
        n = int(np.clip(len(x), floor, cap))
        x = x[g.choice(len(x), size=n, replace=len(x) < n)]
        out_x.append(x)
        out_y.append(np.full(n, cls, np.int64))
    return np.concatenate(out_x), np.concatenate(out_y)


def stain_patches(
    samples: list[dict[str, npt.NDArray]], seed: int, per_slide: int = 40
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """32 px tissue patches labelled H&E or IHC by the kit slide's stain, and an "other"
    class made from them: inverted with shuffled channels (fluorescence-like: dark
    background, bright signal) and greyscale (unstained or special stains)."""
    from edge.analysis.run import tissue_patches

    g = np.random.default_rng(seed)
    xs, ys = [], []
    for s in samples:
        tissue = s["mask_tissue"]
        patches = tissue_patches(s["mosaic"], tissue, 32, per_slide)
        if not len(patches):
            continue
        cls = nets.STAIN_CLASSES.index(str(s["stain"]))
        xs.append(patches)
        ys.append(np.full(len(patches), cls))
        n = max(1, len(patches) // 2)
        inverted = 255 - patches[:n][..., g.permutation(3)]
        grey = patches[n:].mean(axis=3, keepdims=True).repeat(3, axis=3).astype(np.uint8)
        xs += [inverted, grey]
        ys += [np.full(len(inverted), 2), np.full(len(grey), 2)]
    x = np.concatenate(xs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return run_front("stain", x), np.concatenate(ys).astype(np.int64)


HARD_POOL: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None


def mlp_predict(head: nets.Head, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    for i, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        x = x @ w.T + b
        if i < len(head.weights) - 1:
            x = np.maximum(x, 0)
    out: npt.NDArray[np.int64] = x.argmax(axis=1)
    return out


def with_hard_negatives(
    head: nets.Head,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    seed: int,
    limit: int = 80000,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Tissue and glass pixels the first head calls an artifact (pale stroma taken for a
    bubble's washed-out interior, ...), added to the training set for the second fit."""
    assert HARD_POOL is not None
    px, py = HARD_POOL
    wrong = np.nonzero(mlp_predict(head, px) != py)[0]
    g = np.random.default_rng(seed)
    wrong = g.choice(wrong, size=min(limit, len(wrong)), replace=False)
    print(f"artifact: {len(wrong)} hard negatives of {len(py)} pooled pixels", flush=True)
    return np.concatenate([x, px[wrong]]), np.concatenate([y, py[wrong]])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slides", type=int, default=48)
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edge-train"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    ap.add_argument(
        "--only",
        default="focus,artifact-cnn,stain,calibrate",
        help="what to do: focus, artifact-cnn (the shipped artifact model; needs torch, the "
        "train extra), artifact (the old per-pixel MLP head), stain, calibrate",
    )
    ap.add_argument("--cnn-steps", type=int, default=9000, help="artifact-cnn training steps")
    ap.add_argument(
        "--fold-slides",
        type=int,
        default=0,
        help="extra training slides that all carry a fold, mostly IHC (fold_specs)",
    )
    ap.add_argument("--fold-seed-base", type=int, default=3000)
    ap.add_argument("--cnn-lr", type=float, default=3e-3, help="artifact-cnn peak learning rate")
    ap.add_argument(
        "--cnn-cycle",
        default=",".join(ARTIFACT_CYCLE),
        help="artifact-cnn: the kinds anchored windows take in turn (repeat one to weigh it)",
    )
    ap.add_argument("--fold-weight", type=float, default=4.0, help="artifact-cnn fold loss weight")
    ap.add_argument("--cnn-width", type=int, default=16, help="artifact-cnn base channel count")
    ap.add_argument(
        "--cnn-log-od", action="store_true", help="artifact-cnn: log optical density inputs too"
    )
    ap.add_argument(
        "--hard-folds",
        type=Path,
        default=None,
        help="artifact-cnn: draw fold windows where this exported model (model.onnx) misses "
        "folds (hard examples)",
    )
    ap.add_argument(
        "--cnn-threads",
        type=int,
        default=1,
        help="artifact-cnn torch threads (the result "
        "depends on it: deterministic for a given count)",
    )
    ap.add_argument("--cnn-version", default=CNN_INFO["version"], help="the manifest's version")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="artifact-cnn: start from these weights (a .pt state dict, or an artifact "
        "model.onnx of the same network) instead of from scratch",
    )
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"kit slides' real texture from {require_real_texture()}", flush=True)
    specs = kit_specs(args.slides, args.seed_base)
    specs += fold_specs(args.fold_slides, args.fold_seed_base)
    t0 = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        paths = list(pool.map(cached_sample, specs, [args.cache] * len(specs)))
    print(f"{len(paths)} kit slides sampled in {time.time() - t0:.0f} s", flush=True)
    samples = [dict(np.load(p, allow_pickle=False)) for p in paths]
    only = set(args.only.split(","))
    if "focus" in only:
        head = train_focus(samples, args.seed_base)
        write_model(args.out, "focus", head, args)
    if "artifact" in only:
        x, y = artifact_pixels(samples, args.seed_base)
        print(f"artifact: {len(y)} pixels, per class {np.bincount(y).tolist()}", flush=True)
        head = standardised_mlp(x, y, (32, 32), args.seed_base)
        x, y = with_hard_negatives(head, x, y, args.seed_base)
        head = standardised_mlp(x, y, (32, 32), args.seed_base)
        write_model(args.out, "artifact", head, args)
    if "artifact-cnn" in only:
        try:
            import train_artifact_cnn as cnn
        except ModuleNotFoundError as exc:
            raise SystemExit(
                f"artifact-cnn needs PyTorch ({exc}): pip install -e '.[train]' in a separate "
                "venv, or leave it out with --only focus,stain,calibrate"
            ) from exc

        labels = [
            labels_from_masks({k[5:]: s[k] for k in s if k.startswith("mask_")}) for s in samples
        ]
        misses = None
        if args.hard_folds is not None:
            t1 = time.time()
            misses = cnn.fold_misses(samples, args.hard_folds)
            print(f"fold misses of {args.hard_folds} in {time.time() - t1:.0f} s", flush=True)
        net = cnn.train(
            samples,
            labels,
            args.seed_base,
            steps=args.cnn_steps,
            checkpoints=args.cache / "artifact-cnn",
            init=args.init,
            lr=args.cnn_lr,
            cycle=tuple(args.cnn_cycle.split(",")),
            fold_weight=args.fold_weight,
            threads=args.cnn_threads,
            misses=misses,
            width=args.cnn_width,
            log_od=args.cnn_log_od,
        )
        write_model(args.out, "artifact", cnn.export(net), args)
    if "stain" in only:
        x, y = stain_patches(samples, args.seed_base)
        print(f"stain: {len(y)} patches, per class {np.bincount(y).tolist()}", flush=True)
        head = standardised_mlp(x, y, (16,), args.seed_base)
        write_model(args.out, "stain", head, args)
    if "calibrate" in only:
        from qc_bench import calibrate

        one = 1 if args.jobs == 1 else None  # --jobs 1: one core for the models too
        cuts, area = calibrate(48, 20000, args.cache / "validation", args.out, threads=one)
        for name, classes in (("focus", ("blur",)), ("artifact", PRECEDENCE)):
            manifest = args.out / name / "manifest.toml"
            text = manifest.read_text(encoding="utf-8").split("[thresholds]")[0]
            lines = "".join(f'"{k}" = {cuts[k]}\n' for k in classes)
            text += f"[thresholds]\n{lines}"
            if name == "artifact":
                lines = "".join(f'"{k}" = {v}\n' for k, v in area.items())
                text += f"\n[area_thresholds]  # for the fractions of tissue\n{lines}"
            manifest.write_text(text, encoding="utf-8")
        print(f"calibrated cut-offs: {cuts}; area cut-offs: {area}", flush=True)
    return 0


MODEL_INFO = {
    "focus": {
        "version": "1.0.0",
        "mpp": 1.0,
        "normalisation": "grey = (77 R + 150 G + 29 B) >> 8, then / 255",
        "classes": list(nets.FOCUS_CLASSES),
        "kind": "tile",
        "thresholds": {"blur": 0.5},
        "max_batch": 64,
        "description": "probability that a 64 px crop at ~1 um/px is out of focus",
    },
    "artifact": {
        "version": "1.0.0",
        "mpp": 4.0,
        "normalisation": "RGB / 255",
        "classes": list(nets.ARTIFACT_CLASSES),
        "kind": "dense",
        "thresholds": {k: 0.5 for k in ("pen", "fold", "bubble", "debris", "edge")},
        "max_batch": 16,
        "description": "per-pixel class probabilities of a 256 px window at ~4 um/px",
    },
    "stain": {
        "version": "1.0.0",
        "mpp": 4.0,
        "normalisation": "RGB / 255",
        "classes": list(nets.STAIN_CLASSES),
        "kind": "tile",
        "thresholds": {},
        "max_batch": 32,
        "description": "stain of a 32 px tissue patch at ~4 um/px (slide: mean of patches)",
    },
}


# The artifact CNN (tools/train_artifact_cnn.py) keeps the artifact contract; what differs.
CNN_INFO = {
    "version": "2.0.0",
    "description": "per-pixel class probabilities of a 256 px window at ~4 um/px (CNN)",
}


def write_model(out: Path, name: str, head: nets.Head | bytes, args: argparse.Namespace) -> None:
    """models/<name>/model.onnx and manifest.toml (the card's numbers come from bench qc);
    head: a trained MLP for nets.full, or a whole serialised ONNX model (the artifact CNN)."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(head if isinstance(head, bytes) else nets.full(name, head).SerializeToString())
    info = MODEL_INFO[name]
    written = f"--slides {args.slides} --seed-base {args.seed_base}"
    if isinstance(head, bytes):
        info = {**info, **CNN_INFO, "version": args.cnn_version}
        written += f" --cnn-steps {args.cnn_steps}"
        if args.fold_slides:
            written += f" --fold-slides {args.fold_slides} --fold-seed-base {args.fold_seed_base}"
        if args.init is not None:
            written += f" --init {args.init.name} --cnn-lr {args.cnn_lr}"
        if args.cnn_cycle != ",".join(ARTIFACT_CYCLE) or args.fold_weight != 4.0:
            written += f" --cnn-cycle {args.cnn_cycle} --fold-weight {args.fold_weight}"
    extra = ""
    if args.fold_slides:
        extra = f", fold_slides = {args.fold_slides}, fold_seed_base = {args.fold_seed_base}"
    shape = [-1, *nets.INPUT_SHAPES[name]]
    thresholds = "".join(f'"{k}" = {v}\n' for k, v in info["thresholds"].items())
    manifest = (
        f"# {info['description']}\n"
        f"# Written by tools/train_models.py {written}\n"
        f'name = "{name}"\nversion = "{info["version"]}"\nfile = "model.onnx"\n'
        f'sha256 = "{sha256_file(path)}"\nkind = "{info["kind"]}"\n'
        f"max_batch = {info['max_batch']}\n"
        f"training = {{ slides = {args.slides}, seed_base = {args.seed_base}{extra} }}\n\n"
        f'[input]\nname = "image"\nshape = {shape}\nmpp = {info["mpp"]}\n'
        f'normalisation = "{info["normalisation"]}"\n\n'
        f'[output]\nname = "probabilities"\nclasses = {json.dumps(info["classes"])}\n\n'
        f"[thresholds]\n{thresholds}"
    )
    (folder / "manifest.toml").write_text(manifest, encoding="utf-8")
    print(f"wrote {path} sha256 {sha256_file(path)[:12]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
