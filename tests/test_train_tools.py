"""tools/train_models.py and tools/qc_bench.py: the guards and choices that decide what a
trained or benchmarked artifact model is measured on."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edge.synth import texture


@pytest.fixture
def train_models() -> Iterator[ModuleType]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import train_models as module

        yield module
    finally:
        sys.path.pop(0)


def test_no_real_texture_stops_training_and_bench(
    train_models: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the real-texture files every kit slide would silently be procedural (what a
    git worktree without EDGE_TEST_DATA gets): stop, naming the variable to set."""
    monkeypatch.setattr(texture, "default_texture_dirs", lambda: [tmp_path])
    with pytest.raises(SystemExit, match="EDGE_TEST_DATA"):
        train_models.require_real_texture()


def test_real_texture_found(train_models: ModuleType, real_data: Path) -> None:
    assert train_models.require_real_texture().is_dir()


def test_calibration_takes_the_middle_of_a_plateau(train_models: ModuleType) -> None:
    import qc_bench

    T = qc_bench.Tally
    # Five cut-offs scoring the same, then recall dropping: the middle one, not the lowest.
    row = [T(tp=20, fp=0, fn=0)] * 5 + [T(tp=18, fp=0, fn=2), T(tp=10, fp=0, fn=10)]
    assert qc_bench.choose_cut(row) == 2
    # Imprecise cut-offs (precision < 0.95) are never chosen while a precise one exists.
    row = [T(tp=40, fp=10, fn=0), T(tp=30, fp=1, fn=10), T(tp=20, fp=0, fn=20)]
    assert qc_bench.choose_cut(row) == 1


def test_area_cut_is_the_least_fraction_error(train_models: ModuleType) -> None:
    import qc_bench

    assert qc_bench.choose_area_cut([0.3, 0.12, 0.1, 0.11, 0.2]) == 2
    assert qc_bench.choose_area_cut([0.3, 0.1, 0.1 + 1e-12, 0.2]) == 1  # a tie: the lower cut


def test_fold_specs_are_extra_and_leave_the_kit_alone(train_models: ModuleType) -> None:
    """The training-only fold slides (--fold-slides) all carry a fold, 3 in 4 on IHC, from
    their own seeds; the kit's specs (and so the validation and test slides) do not change."""
    before = train_models.kit_specs(8, 50000)
    extra = train_models.fold_specs(8, 3000)
    assert all("fold" in s.artifacts for s in extra)
    assert [s.stain for s in extra].count("IHC") == 6
    assert [s.seed for s in extra] == list(range(3000, 3008))
    assert train_models.fold_specs(8, 3000) == extra
    assert train_models.kit_specs(8, 50000) == before
    assert train_models.fold_specs(0, 3000) == []


def _shipped_model_difference(log_od: bool) -> tuple[Any, float]:
    """The shipped artifact model loaded into a training network (`load_onnx`): the network,
    and the largest difference between its output and ONNX Runtime's on one window."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    import train_artifact_cnn as cnn

    path = Path(__file__).resolve().parents[1] / "models" / "artifact" / "model.onnx"
    torch.set_num_threads(1)
    net = cnn.ArtifactNet(log_od=log_od)
    cnn.load_onnx(net, path)
    net.eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = net(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    return net, float(abs(got - want).max())


def test_warm_start_loads_the_shipped_model_exactly(train_models: ModuleType) -> None:
    """--init models/artifact/model.onnx: the network with the exported (BatchNorm-folded)
    weights computes what the ONNX model does."""
    _, difference = _shipped_model_difference(log_od=False)
    assert difference < 1e-4


def test_log_od_inputs_start_from_the_shipped_model_exactly(train_models: ModuleType) -> None:
    """--cnn-log-od with --init: the three new input channels start at weight 0, so the wider
    network computes what the shipped model does until training moves them."""
    net, difference = _shipped_model_difference(log_od=True)
    assert net.stem[0].weight.shape[1] == 9 and not net.stem[0].weight[:, 6:].any()
    assert difference < 1e-4


def test_hard_fold_windows_go_where_a_model_missed(train_models: ModuleType) -> None:
    """--hard-folds: fold windows are drawn from slides and pixels in proportion to 0.1 + the
    previous model's miss; without misses every slide is as likely (and the draws repeat)."""
    pytest.importorskip("torch")
    import train_artifact_cnn as cnn

    from edge.analysis import nets

    fold = nets.ARTIFACT_CLASSES.index("fold")
    samples, labels = [], []
    for _ in range(2):
        label = np.ones((300, 300), np.int64)
        label[100:200, 100:200] = fold
        samples.append({"mosaic": np.full((300, 300, 3), 200, np.uint8)})
        labels.append(label)
    missed = [np.ones((300, 300), np.float16), np.zeros((300, 300), np.float16)]
    data = cnn.Windows(samples, labels, 0, ("fold",), missed)
    odds = data.slide_odds[fold]
    assert odds is not None and odds == pytest.approx([1.1 / 1.2, 0.1 / 1.2])
    plain = cnn.Windows(samples, labels, 0, ("fold",))
    assert plain.slide_odds[fold] is None
    again = cnn.Windows(samples, labels, 0, ("fold",))
    for _ in range(3):
        assert np.array_equal(plain.draw(4)[0].numpy(), again.draw(4)[0].numpy())
