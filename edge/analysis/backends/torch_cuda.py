"""PyTorch on CUDA, with the ONNX model converted to a torch module by onnx2torch.

For GPU machines that carry PyTorch but no TensorRT. It runs in fp32 with TF32 off, so its
output matches ONNX Runtime on the CPU to float rounding and the same thresholds hold.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from edge.analysis.backends.base import Array, BackendUnavailable, check_io, optional, run_chunked
from edge.analysis.registry import ModelSpec


class TorchSession:
    backend = "torch-cuda"

    def __init__(self, spec: ModelSpec, torch: Any, module: Any) -> None:
        self.spec = spec
        self._torch = torch
        self._module = module

    def run(self, batch: Array) -> Array:
        return run_chunked(self.spec, batch, self._run)

    def _run(self, chunk: Array) -> Array:
        torch = self._torch
        with torch.inference_mode():
            out = self._module(torch.from_numpy(chunk).to("cuda", non_blocking=True))
            if isinstance(out, tuple | list):  # onnx2torch returns a tuple for some graphs
                out = out[0]
            return np.asarray(out.float().cpu().numpy(), dtype=np.float32)


class TorchCudaBackend:
    name = "torch-cuda"

    def unavailable(self) -> str | None:
        torch = optional("torch")
        if torch is None:
            return "torch not installed"
        if not torch.cuda.is_available():
            return f"no CUDA device visible to torch {torch.__version__}"
        if optional("onnx2torch") is None:
            return "onnx2torch not installed (pip install onnx2torch)"
        return None

    def open(self, spec: ModelSpec) -> TorchSession:
        reason = self.unavailable()
        if reason is not None:
            raise BackendUnavailable(f"torch-cuda: {reason}")
        torch, onnx, onnx2torch = (optional(m) for m in ("torch", "onnx", "onnx2torch"))
        assert torch is not None and onnx is not None and onnx2torch is not None
        model = onnx.load(str(spec.path))
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        check_io(
            spec,
            [
                (i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
                for i in graph.input
                if i.name not in inits
            ],
            [o.name for o in graph.output],
        )
        # TF32 would trade ~1e-3 of accuracy for speed; parity with the CPU backend comes first.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # fixed H, W: let cuDNN pick the fastest kernels
        _register_missing_converters(torch, onnx2torch)
        try:
            module = onnx2torch.convert(model).eval().to("cuda")
        except (NotImplementedError, ValueError, RuntimeError) as exc:
            # an operator onnx2torch cannot convert: the next backend gets the model
            raise BackendUnavailable(f"torch-cuda: cannot convert {spec.name}: {exc}") from exc
        return TorchSession(spec, torch, module)


def _register_missing_converters(torch: Any, onnx2torch: Any) -> None:
    """GlobalMaxPool (the focus model's band-energy peak) is absent from onnx2torch 1.5;
    registered here once, the same max over H and W the ONNX operator defines."""
    registry = importlib.import_module("onnx2torch.node_converters.registry")
    common = importlib.import_module("onnx2torch.utils.common")

    description = registry.OperationDescription(
        domain="", operation_type="GlobalMaxPool", version=1
    )
    if description in registry._CONVERTER_REGISTRY:
        return

    class GlobalMaxPool(torch.nn.Module):  # type: ignore[misc]
        def forward(self, x: Any) -> Any:
            return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)

    @registry.add_converter(operation_type="GlobalMaxPool", version=1)  # type: ignore[untyped-decorator]
    def _convert(node: Any, graph: Any) -> Any:
        return common.OperationConverterResult(
            torch_module=GlobalMaxPool(), onnx_mapping=common.onnx_mapping_from_node(node=node)
        )
