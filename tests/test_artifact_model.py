"""The shipped artifact model (a CNN trained by tools/train_artifact_cnn.py): what every backend
needs from its graph, and that it really uses context, which the old per-pixel head did not."""

from __future__ import annotations

import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.analysis import nets
from edge.analysis.registry import DEFAULT_MODELS_DIR, sha256_file

FOLDER = DEFAULT_MODELS_DIR / "artifact"
# What ORT, TensorRT and onnx2torch (torch-cuda) all convert; BatchNorm must be folded.
PLAIN_OPS = {"Conv", "Relu", "Add", "Concat", "Log", "Resize", "Softmax", "MaxPool", "AveragePool"}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(FOLDER / "model.onnx")


@pytest.fixture(scope="module")
def sess() -> ort.InferenceSession:
    return ort.InferenceSession(str(FOLDER / "model.onnx"), providers=["CPUExecutionProvider"])


def test_manifest_names_this_file(model: onnx.ModelProto) -> None:
    manifest = tomllib.loads((FOLDER / "manifest.toml").read_text(encoding="utf-8"))
    assert manifest["sha256"] == sha256_file(FOLDER / "model.onnx")
    assert manifest["kind"] == "dense"
    assert set(manifest["thresholds"]) == {"pen", "fold", "bubble", "debris", "edge"}
    assert all(0 < v < 1 for v in manifest["thresholds"].values())


def test_graph_uses_plain_ops_with_weights_as_initializers(model: onnx.ModelProto) -> None:
    ops = {n.op_type for n in model.graph.node}
    assert ops <= PLAIN_OPS, ops - PLAIN_OPS
    assert model.opset_import[0].version == nets.OPSET
    # onnx2torch looks a Conv's weight and bias up among the initializers only.
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert set(node.input[1:]) <= inits, node.name


def test_dynamic_batch_and_probabilities(sess: ort.InferenceSession) -> None:
    for n in (1, 4):
        x = np.random.default_rng(n).random((n, *nets.INPUT_SHAPES["artifact"]), np.float32)
        (p,) = sess.run(None, {"image": x})
        assert p.shape == (n, len(nets.ARTIFACT_CLASSES), *nets.INPUT_SHAPES["artifact"][1:])
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_clean_glass_is_background(sess: ort.InferenceSession) -> None:
    glass = np.full((1, *nets.INPUT_SHAPES["artifact"]), 0.92, np.float32)
    (p,) = sess.run(None, {"image": glass})
    m = nets.ARTIFACT_MARGIN
    centre = p[0, :, m:-m, m:-m]
    assert (centre.argmax(axis=0) == nets.ARTIFACT_CLASSES.index("background")).mean() > 0.99


def test_sees_context_beyond_the_old_front_end(sess: ort.InferenceSession) -> None:
    """A change 60 px away (past the margin, outside a 7 px neighbourhood) moves the centre's
    probabilities: the network judges a pixel by what surrounds it."""
    x = np.random.default_rng(7).random((1, *nets.INPUT_SHAPES["artifact"]), np.float32)
    x = 0.3 + 0.4 * x
    (before,) = sess.run(None, {"image": x})
    x[:, :, 60:80, 60:80] = 0.05  # a dark blot, well away from the centre
    (after,) = sess.run(None, {"image": x})
    assert np.abs(after[0, :, 128, 128] - before[0, :, 128, 128]).max() > 1e-3
