"""The artifact model as a small convolutional encoder-decoder, trained with PyTorch on the CPU.

    /work/train-venv/bin/python tools/train_models.py --slides 128 --only artifact-cnn,calibrate

(called from tools/train_models.py; torch comes from the `train` extra: pip install -e '.[train]'.
The appliance never imports torch: it runs the exported ONNX through ONNX Runtime.)

Why a CNN: the per-pixel MLP on hand-made features confused folds with dense tissue, bubbles'
pale interiors with pale stroma, and the edges of strokes: all questions of context. This net
sees a ~285 px field (~1.1 mm at 4 µm/px) around each pixel, and runs in less time than
the old model did (1.7 s vs 2.9 s on the 40k pace slide).

Contract kept: input (N,3,256,256) RGB/255, output (N,7,256,256) probabilities over
nets.ARTIFACT_CLASSES (softmax at 1/4 resolution, bilinearly interpolated, from 2.0.1 on);
the loss is taken only on the window's centre (nets.ARTIFACT_MARGIN in
from each side), the part edge.analysis.dense keeps. Plain ONNX ops only (Conv with folded
BatchNorm, Relu, Add, Log, Resize, Softmax) so ORT, TensorRT and onnx2torch all load it.

Deterministic: fixed seeds, fixed thread count, torch.use_deterministic_algorithms, and a
fixed number of steps (not a time budget).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from edge.analysis import nets

WINDOW = nets.INPUT_SHAPES["artifact"][1]
MARGIN = nets.ARTIFACT_MARGIN
ARTIFACTS = ("pen", "fold", "bubble", "debris", "edge")
LOG_OD_FLOOR = 0.02  # natural-log optical density (I = 0.98): glass and the palest stain


def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ArtifactNet(nn.Module):
    """RGB and optical density in; a 4x4 stride-4 stem (tile decisions need no finer than
    4 px: a 256 px level-0 tile is 8-16 mosaic px), an encoder to 1/16 with dilated
    convolutions (context: ~0.5 mm each side), a decoder back to 1/4 with additive skips,
    and the logits resized to full resolution."""

    def __init__(self, width: int = 16, log_od: bool = False) -> None:
        super().__init__()
        c1, c2, c3, c4 = 2 * width, 3 * width, 4 * width, 4 * width
        self.log_od = log_od
        self.stem = nn.Sequential(
            nn.Conv2d(9 if log_od else 6, c1, 4, 4, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
        )
        self.e1 = block(c1, c1)  # 1/4
        self.e2 = nn.Sequential(block(c1, c2, 2), block(c2, c2, dilation=2))  # 1/8
        self.e3 = nn.Sequential(  # 1/16
            block(c2, c3, 2), block(c3, c3, dilation=2), block(c3, c4, dilation=4)
        )
        self.p3 = nn.Conv2d(c4, c2, 1)
        self.d2 = block(c2, c2)
        self.p2 = nn.Conv2d(c2, c1, 1)
        self.d1 = block(c1, c1)
        self.out = nn.Conv2d(c1, len(nets.ARTIFACT_CLASSES), 1)

    def low_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits at 1/4 resolution."""
        # Optical density: stain amounts add up linearly in it (what the old features used).
        log = torch.log(x + 1.0 / 255.0)
        if self.log_od:
            # log of the optical density: a fold doubles the stain in its path, a constant
            # step here however pale the section (in the density itself it is 0.1 on pale
            # IHC against 0.5 on dark H&E). Floored: glass has no density to take a log of.
            x = torch.cat([x, log, torch.log(torch.clamp(-log, min=LOG_OD_FLOOR))], dim=1)
        else:
            x = torch.cat([x, log], dim=1)
        e1 = self.e1(self.stem(x))
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        up2 = lambda t: F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)  # noqa: E731
        d2 = self.d2(up2(self.p3(e3)) + e2)
        d1 = self.d1(up2(self.p2(d2)) + e1)
        return self.out(d1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits at full resolution (what the loss sees)."""
        low = self.low_logits(x)
        return F.interpolate(low, scale_factor=4.0, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Probabilities at 1/4 resolution, then interpolated (model 2.0.1 on): 16x fewer
        # exponentials; see tools/onnx_graph.py, which turned 2.0.0 into this form.
        probs = torch.softmax(self.low_logits(x), dim=1)
        return F.interpolate(probs, scale_factor=4.0, mode="bilinear", align_corners=False)


class Windows:
    """Training windows drawn from kit mosaics: half centred near an artifact pixel (classes
    in turn, so rare kinds get as many windows as common ones), half anywhere on tissue."""

    def __init__(
        self,
        samples: list[dict[str, Any]],
        labels: list[npt.NDArray],
        seed: int,
        cycle: tuple[str, ...] = ARTIFACTS,
        misses: list[npt.NDArray] | None = None,
    ):
        self.g = np.random.default_rng(seed)
        self.images = [
            np.pad(s["mosaic"], ((WINDOW, WINDOW), (WINDOW, WINDOW), (0, 0)), mode="edge")
            for s in samples
        ]
        self.labels = [np.pad(y, WINDOW, mode="edge") for y in labels]
        self.anchors: dict[int, list[tuple[int, npt.NDArray]]] = {}
        # Per class, how often each slide's anchors are drawn: evenly, except for folds when
        # `misses` (per slide, per pixel, 1 - a previous model's fold probability) is given:
        # then slides and pixels in proportion to 0.1 + the miss, so the windows go where
        # that model fails (hard examples) without dropping the folds it already finds.
        self.slide_odds: dict[int, npt.NDArray[np.float64] | None] = {}
        fold = nets.ARTIFACT_CLASSES.index("fold")
        for cls in range(len(nets.ARTIFACT_CLASSES)):
            spots, odds = [], []
            for i, y in enumerate(labels):
                yy, xx = np.nonzero(y == cls)
                if len(yy):
                    weight = None
                    if misses is not None and cls == fold:
                        weight = 0.1 + misses[i][yy, xx].astype(np.float64)
                        odds.append(float(weight.mean()))
                        weight /= weight.sum()
                    pick = self.g.choice(len(yy), size=min(4000, len(yy)), replace=False, p=weight)
                    spots.append((i, np.stack([yy[pick], xx[pick]], 1)))
            self.anchors[cls] = spots
            self.slide_odds[cls] = np.asarray(odds) / sum(odds) if odds else None
        self.kinds = [nets.ARTIFACT_CLASSES.index(k) for k in cycle if self.anchors[
            nets.ARTIFACT_CLASSES.index(k)]]  # fmt: skip
        self.turn = 0

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for j in range(n):
            if j % 2 == 0:
                cls = self.kinds[self.turn % len(self.kinds)]
                self.turn += 1
            else:
                cls = nets.ARTIFACT_CLASSES.index("tissue")
            spots, odds = self.anchors[cls], self.slide_odds[cls]
            pick = (
                self.g.choice(len(spots), p=odds)
                if odds is not None
                else self.g.integers(len(spots))
            )
            i, pts = spots[int(pick)]
            cy, cx = pts[int(self.g.integers(len(pts)))]
            # The anchor anywhere in the scored centre, not always in the middle.
            half = (WINDOW - 2 * MARGIN) // 2
            y0 = int(cy + WINDOW - WINDOW // 2 + self.g.integers(-half, half + 1))
            x0 = int(cx + WINDOW - WINDOW // 2 + self.g.integers(-half, half + 1))
            img = self.images[i][y0 : y0 + WINDOW, x0 : x0 + WINDOW]
            lab = self.labels[i][y0 : y0 + WINDOW, x0 : x0 + WINDOW]
            k = int(self.g.integers(8))  # the 8 flips and quarter turns: slides have no "up"
            if k & 4:
                img, lab = img[:, ::-1], lab[:, ::-1]
            img, lab = np.rot90(img, k & 3), np.rot90(lab, k & 3)
            xs.append(img.transpose(2, 0, 1))
            ys.append(lab)
        x = torch.from_numpy(np.ascontiguousarray(np.stack(xs), np.float32) / 255.0)
        y = torch.from_numpy(np.ascontiguousarray(np.stack(ys)))
        return x, y


def fold_misses(samples: list[dict[str, Any]], model: Path) -> list[npt.NDArray[np.float16]]:
    """Per sample mosaic, 1 - the fold probability an exported artifact model gives each
    pixel (run as the appliance runs it), for hard-example windows (Windows' `misses`)."""
    import onnxruntime as ort

    from edge.analysis.dense import predict_dense

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    fold = nets.ARTIFACT_CLASSES.index("fold")

    def run(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = sess.run(None, {"image": batch})[0]
        return out

    return [
        (1.0 - predict_dense(run, s["mosaic"], len(nets.ARTIFACT_CLASSES))[fold]).astype(np.float16)
        for s in samples
    ]


def load_onnx(net: ArtifactNet, path: Path) -> None:
    """Weights of an exported artifact model (same network; BatchNorm folded into its
    convolutions) into net: each Conv in graph order to net's convolutions in module order,
    the BatchNorm after it set to the identity (scale 1, shift = the folded bias, mean 0,
    variance 1 - eps), so net in eval mode computes what the ONNX model does."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    mods = list(net.modules())
    mods.append(nn.Identity())  # the last convolution has nothing after it
    targets = [(m, mods[i + 1]) for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if len(convs) != len(targets):
        raise ValueError(f"{path}: {len(convs)} convolutions, the network has {len(targets)}")
    with torch.no_grad():
        for node, (conv, after) in zip(convs, targets, strict=True):
            w = torch.from_numpy(inits[node.input[1]].copy())
            b = torch.from_numpy(inits[node.input[2]].copy())
            if conv is net.stem[0] and w.shape[1] < conv.weight.shape[1]:
                # A stem with more input channels: the new ones start at weight 0, so the
                # network begins as exactly the loaded model.
                wider = torch.zeros(conv.weight.shape)
                wider[:, : w.shape[1]] = w
                w = wider
            if w.shape != conv.weight.shape:
                raise ValueError(f"{path}: {node.input[1]} {tuple(w.shape)} vs {conv}")
            conv.weight.copy_(w)
            if isinstance(after, nn.BatchNorm2d):
                after.weight.fill_(1.0)
                after.bias.copy_(b)
                after.running_mean.zero_()
                after.running_var.fill_(1.0 - after.eps)
            else:
                assert conv.bias is not None
                conv.bias.copy_(b)


def train(
    samples: list[dict[str, Any]],
    labels: list[npt.NDArray],
    seed: int,
    steps: int = 9000,
    batch: int = 8,
    width: int = 16,
    threads: int = 1,
    checkpoints: Path | None = None,
    init: Path | None = None,
    lr: float = 3e-3,
    cycle: tuple[str, ...] = ARTIFACTS,
    fold_weight: float = 4.0,
    misses: list[npt.NDArray] | None = None,
    log_od: bool = False,
) -> ArtifactNet:
    """checkpoints: a folder for the weights every 250 steps (a long run on a busy machine
    can then be looked at before it ends; the result does not depend on it).
    init: start from an exported model (.onnx, see load_onnx) or a state dict (.pt) and
    fine-tune with BatchNorm frozen (its statistics as loaded); cycle: the artifact kinds
    the anchored windows take in turn (a kind twice in it gets twice the windows)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    data = Windows(samples, labels, seed, cycle, misses)
    net = ArtifactNet(width, log_od)
    if init is not None:
        if init.suffix == ".onnx":
            load_onnx(net, init)
        else:
            net.load_state_dict(torch.load(init))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    # Artifacts weigh a little more than glass and tissue; the cut-offs are calibrated anyway.
    weight = torch.tensor([1.0, 1.0, 2.0, fold_weight, 3.0, 1.5, 1.5])
    inner = slice(MARGIN, WINDOW - MARGIN)
    net.train()
    if init is not None:
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    t0, running = time.time(), 0.0
    for step in range(steps):
        x, y = data.draw(batch)
        loss = F.cross_entropy(net.logits(x)[:, :, inner, inner], y[:, inner, inner], weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if checkpoints is not None and step % 250 == 249:
            checkpoints.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), checkpoints / f"step-{step + 1}.pt")
        if step % 50 == 0 or step == steps - 1:
            print(
                f"artifact-cnn step {step}/{steps} loss {running:.4f} ({time.time() - t0:.0f} s)",
                flush=True,
            )
    net.eval()
    return net


def _initializers_only(model: Any) -> Any:
    """Constant nodes (and Identity copies of weights, which the exporter emits when two folded
    tensors are equal) become plain initializers: onnx2torch (the torch-cuda backend) and
    some TensorRT parsers look a convolution's weights up among the initializers only."""
    from onnx import numpy_helper

    graph = model.graph
    known = {t.name for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].t:
            value = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            known.add(node.output[0])
        elif node.op_type == "Identity" and node.input[0] in known:
            src = next(t for t in graph.initializer if t.name == node.input[0])
            copy = numpy_helper.from_array(numpy_helper.to_array(src), node.output[0])
            graph.initializer.append(copy)
            known.add(node.output[0])
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def export(net: ArtifactNet) -> bytes:
    """ONNX (opset 17, BatchNorm folded into the convolutions, dynamic batch), checked against
    torch on random and on real-looking input."""
    import onnx
    import onnxruntime as ort

    net.eval()
    buf = io.BytesIO()
    dummy = torch.rand(1, *nets.INPUT_SHAPES["artifact"])
    torch.onnx.export(
        net,
        (dummy,),
        buf,
        opset_version=nets.OPSET,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        do_constant_folding=True,
        dynamo=False,
    )
    model = _initializers_only(onnx.load_from_string(buf.getvalue()))
    model.ir_version = 8  # as nets.py: readable by every ORT and TensorRT release in reach
    model.producer_name = "edge tools/train_artifact_cnn.py"
    model.producer_version = ""  # the torch version must not change the bytes
    onnx.checker.check_model(model)
    ops = sorted({n.op_type for n in model.graph.node})
    assert "BatchNormalization" not in ops, ops
    data = model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.rand(4, *nets.INPUT_SHAPES["artifact"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    print(f"artifact-cnn: ONNX ops {ops}; ORT vs torch max abs diff {diff:.2e}", flush=True)
    assert diff < 1e-4, diff
    return data
