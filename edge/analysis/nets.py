"""The three networks as ONNX graphs: a fixed front end and a trained per-pixel/per-tile head.

Each network is small on purpose (it must keep the scanner's pace on two CPU cores) and made
of plain ONNX operators every backend supports (Conv, AveragePool, MaxPool, Log, Gemm-like
1x1 convolutions, Softmax/Sigmoid), so TensorRT, ONNX Runtime and PyTorch run the same graph.

    focus     (N, 1, 64, 64) grey at ~1 µm/px -> (N, 1) probability the crop is out of focus.
              Front end: band-pass energies at three scales (what defocus removes first is the
              finest band), global mean and max of local energy, log; head: MLP 10-16-1.
    artifact  (N, 3, 256, 256) RGB at ~4 µm/px -> (N, 7, 256, 256) class probabilities per
              pixel. Front end: optical density and its local means at 5 scales (up to 63 px,
              a quarter millimetre), local contrast at 3, chroma, darkest-in-neighbourhood,
              ring contrasts (bubble rims); head: 1x1-conv MLP 25-32-32-7. That is artifact
              1.0.0; the shipped 2.0.0 keeps the same contract but is a small CNN trained
              with PyTorch and exported to ONNX by tools/train_artifact_cnn.py (not built here).
    stain     (N, 3, 32, 32) RGB tissue patches from the mosaic -> (N, 3) probabilities of
              H&E, IHC (DAB), other. Front end: optical density statistics; head: MLP 12-16-3.

`front_end(name)` builds the feature graph alone (training computes features with it, so the
features a head learns from are bit-for-bit what the shipped model computes); `full(name,
head)` appends the trained head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FOCUS_CLASSES = ("blur",)
ARTIFACT_CLASSES = ("background", "tissue", "pen", "fold", "bubble", "debris", "edge")
STAIN_CLASSES = ("H&E", "IHC", "other")
INPUT_SHAPES = {
    "focus": (1, 64, 64),
    "artifact": (3, 256, 256),
    "stain": (3, 32, 32),
}
ARTIFACT_MARGIN = 40  # context px the artifact model needs around what it is asked about


@dataclass
class Head:
    """A trained MLP: weights[i] is (out, in), biases[i] is (out,); ReLU between layers."""

    weights: list[npt.NDArray[np.float32]]
    biases: list[npt.NDArray[np.float32]]


class _Graph:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value: npt.ArrayLike, stem: str = "c") -> str:
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def ints(self, value: list[int], stem: str = "i") -> str:
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        out = self.fresh(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def mean_pool(self, x: str, k: int) -> str:
        """Local mean over k x k (same size out; the border averages what exists)."""
        if k == 1:
            return x
        # Separable (1 x k then k x 1): the same box mean, 2k instead of k*k reads per pixel;
        # with count_include_pad=0 the border counts factor the same way.
        p = k // 2
        rows = self.op(
            "AveragePool", [x], kernel_shape=[1, k], pads=[0, p, 0, p], count_include_pad=0
        )
        return self.op(
            "AveragePool", [rows], kernel_shape=[k, 1], pads=[p, 0, p, 0], count_include_pad=0
        )

    def model(
        self, inp: str, shape: tuple[int | str, ...], out: str, out_shape: tuple[int | str, ...]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["batch", *shape])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", *out_shape])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8  # readable by every ONNX Runtime and TensorRT release in reach
        onnx.checker.check_model(model)
        return model


def _band_kernels() -> npt.NDArray[np.float32]:
    """Three band-pass 9x9 kernels: identity - box3, box3 - box5, box5 - box9."""

    def box(k: int) -> npt.NDArray[np.float64]:
        out = np.zeros((9, 9))
        p = (9 - k) // 2
        out[p : p + k, p : p + k] = 1.0 / (k * k)
        return out

    ident = np.zeros((9, 9))
    ident[4, 4] = 1.0
    bands = [ident - box(3), box(3) - box(5), box(5) - box(9)]
    return np.stack(bands)[:, None].astype(np.float32)


def _focus_front(g: _Graph, x: str) -> str:
    """(N,1,64,64) -> (N,10) features."""
    bands = g.op("Conv", [x, g.const(_band_kernels(), "bands")])  # (N,3,56,56), no padding
    energy = g.op("Mul", [bands, bands])
    eps = g.const(1e-7, "eps")
    mean_e = g.op("Log", [g.op("Add", [g.op("GlobalAveragePool", [energy]), eps])])
    local = g.op("AveragePool", [energy], kernel_shape=[14, 14], strides=[14, 14])
    max_e = g.op("Log", [g.op("Add", [g.op("GlobalMaxPool", [local]), eps])])
    # Contrast of the crop itself: the band energies mean little without it.
    mu = g.op("GlobalAveragePool", [x])
    centred = g.op("Sub", [x, mu])
    var = g.op(
        "Log", [g.op("Add", [g.op("GlobalAveragePool", [g.op("Mul", [centred, centred])]), eps])]
    )
    feats = g.op("Concat", [mean_e, max_e, var, mu], axis=1)  # (N,8,1,1)
    return g.op("Flatten", [feats], axis=1)


def _od(g: _Graph, x: str) -> str:
    """Optical density -log10(I), I in (0, 1]: stain amounts add up linearly in it."""
    floor = g.const(1.0 / 255.0, "floor")
    lg = g.op("Log", [g.op("Max", [x, floor])])
    return g.op("Mul", [lg, g.const(-1.0 / np.log(10.0), "tolog10")])


def _artifact_front(g: _Graph, x: str) -> str:
    """(N,3,H,W) -> (N,25,H,W) per-pixel features."""
    od = _od(g, x)
    means = [g.mean_pool(od, k) for k in (1, 5, 15, 31, 63)]  # 15 channels
    grey = g.op("ReduceMean", [x], axes=[1], keepdims=1)
    g5 = g.mean_pool(grey, 5)
    g15 = g.mean_pool(grey, 15)
    sq = g.op("Mul", [grey, grey])
    var5 = g.op("Sub", [g.mean_pool(sq, 5), g.op("Mul", [g5, g5])])
    var15 = g.op("Sub", [g.mean_pool(sq, 15), g.op("Mul", [g15, g15])])
    std5 = g.op("Sqrt", [g.op("Relu", [var5])])
    std15 = g.op("Sqrt", [g.op("Relu", [var15])])
    chroma = g.op(
        "Sub",
        [
            g.op("ReduceMax", [x], axes=[1], keepdims=1),
            g.op("ReduceMin", [x], axes=[1], keepdims=1),
        ],
    )
    chroma9 = g.mean_pool(chroma, 9)
    dark = g.op("Sub", [g.const(1.0), grey])
    dark_max = g.op("MaxPool", [dark], kernel_shape=[7, 7], pads=[3, 3, 3, 3])
    g31, g63 = g.mean_pool(grey, 31), g.mean_pool(grey, 63)
    rim = g.op("Sub", [g15, g31])
    wide_rim = g.op("Sub", [g31, g63])
    var31 = g.op("Sub", [g.mean_pool(sq, 31), g.op("Mul", [g31, g31])])
    std31 = g.op("Sqrt", [g.op("Relu", [var31])])
    feats = [*means, std5, std15, std31, chroma, chroma9, dark_max, rim, wide_rim, grey, g15]
    return g.op("Concat", feats, axis=1)


def _stain_front(g: _Graph, x: str) -> str:
    """(N,3,32,32) -> (N,12) features."""
    od = _od(g, x)
    mean = g.op("GlobalAveragePool", [od])
    centred = g.op("Sub", [od, mean])
    var = g.op("GlobalAveragePool", [g.op("Mul", [centred, centred])])
    total = g.op("ReduceSum", [mean, g.ints([1])], keepdims=1)
    share = g.op("Div", [mean, g.op("Add", [total, g.const(1e-3)])])
    rgb = g.op("GlobalAveragePool", [x])
    feats = g.op("Concat", [mean, var, share, rgb], axis=1)
    return g.op("Flatten", [feats], axis=1)


_FRONTS = {"focus": _focus_front, "artifact": _artifact_front, "stain": _stain_front}


def front_end(name: str, any_size: bool = False) -> onnx.ModelProto:
    """The feature graph alone; any_size: height and width left free (training runs the
    fully convolutional artifact front end over whole mosaics)."""
    g = _Graph(f"{name}_features")
    out = _FRONTS[name](g, "image")
    if any_size:
        c = INPUT_SHAPES[name][0]
        return g.model("image", (c, "height", "width"), out, ("features", "height", "width"))
    spatial: tuple[int | str, ...] = INPUT_SHAPES[name][1:] if name == "artifact" else ()
    return g.model("image", INPUT_SHAPES[name], out, ("features", *spatial))


def _dense_head(g: _Graph, x: str, head: Head) -> str:
    """1x1 convolutions: the same MLP applied at every pixel."""
    for i, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        x = g.op("Conv", [x, g.const(w[:, :, None, None], "w"), g.const(b, "b")])
        if i < len(head.weights) - 1:
            x = g.op("Relu", [x])
    return x


def _flat_head(g: _Graph, x: str, head: Head) -> str:
    for i, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        x = g.op("Gemm", [x, g.const(w, "w"), g.const(b, "b")], transB=1)
        if i < len(head.weights) - 1:
            x = g.op("Relu", [x])
    return x


def full(name: str, head: Head) -> onnx.ModelProto:
    """Front end + trained head, with the output named "probabilities"."""
    g = _Graph(name)
    feats = _FRONTS[name](g, "image")
    if name == "artifact":
        logits = _dense_head(g, feats, head)
        g.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    elif name == "focus":
        logits = _flat_head(g, feats, head)
        g.nodes.append(helper.make_node("Sigmoid", [logits], ["probabilities"]))
    else:
        logits = _flat_head(g, feats, head)
        g.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    out_shape: tuple[int | str, ...] = (
        (len(ARTIFACT_CLASSES), *INPUT_SHAPES["artifact"][1:])
        if name == "artifact"
        else (len(head.biases[-1]),)
    )
    return g.model("image", INPUT_SHAPES[name], "probabilities", out_shape)
