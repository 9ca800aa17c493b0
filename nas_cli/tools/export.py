"""Export a model to a file that runs without its Python class, and run that file back.

Two formats:

- ``onnx``: ``torch.onnx.export`` with the torch.export-based (dynamo) exporter, the default
  since torch 2.9 (the TorchScript-based one warns that it is deprecated). The batch axis is
  dynamic, so one file serves every batch size; the weights are stored inside the file
  (``external_data=False``: one self-contained file, fine below ONNX's 2 GB limit). It runs
  back through onnxruntime (CUDA provider when the model is on a GPU and onnxruntime has it,
  CPU otherwise).
- ``torchscript``: ``torch.jit.trace`` + ``torch.jit.save``. Tracing, not scripting: a fused
  model is a ``torch.fx`` GraphModule (or any torchvision / nas-cli network), which tracing
  handles whatever its Python source looks like; these networks have no data-dependent
  control flow, so the trace is the whole model. ``torch.jit.load`` reads it back in a
  process that knows nothing of nas-cli (and from C++ libtorch).

Every file is written under a temporary name and renamed: a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from nas_cli.errors import UserError
from nas_cli.runs.record import atomic_write

__all__ = ["FORMATS", "INPUT", "OUTPUT", "export", "load_exported", "max_rel_diff", "OnnxRuntimeModule"]

FORMATS = ("onnx", "torchscript")
INPUT, OUTPUT = "input", "output"  # the ONNX graph's tensor names
INSTALL_HINT = "pip install 'nas-cli[onnx]'"


def require_onnx():
    """Import onnxruntime (and what the exporter needs), or say in one line how to install them."""
    try:
        import onnx  # noqa: F401  the exporter writes an onnx.ModelProto
        import onnxruntime
        import onnxscript  # noqa: F401  the dynamo exporter translates through it
    except ImportError as ex:
        raise UserError(
            f"export=onnx needs onnx, onnxscript and onnxruntime ({ex.name} is missing): {INSTALL_HINT}"
        ) from ex
    return onnxruntime


def export(model: nn.Module, example: torch.Tensor, path: Path, fmt: str, opset: int = 18) -> Path:
    """Write ``model`` (eval mode) to ``path`` in format ``fmt``; ``example`` fixes every axis but the batch."""
    if fmt == "onnx":
        require_onnx()
        atomic_write(path, lambda tmp: _write_onnx(model, example, tmp, opset))
    elif fmt == "torchscript":
        atomic_write(path, lambda tmp: _write_torchscript(model, example, tmp))
    else:
        raise UserError(f"export={fmt}: choose one of null, {', '.join(FORMATS)}")
    return path


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    """torch.export specializes a size-1 axis to the constant 1: trace with a batch of two."""
    return example[:1].repeat(2, *[1] * (example.dim() - 1))


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's passes log every step at INFO through the run's handlers: keep warnings only."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # likewise its notes on decompositions
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _write_onnx(model: nn.Module, example: torch.Tensor, tmp: str, opset: int) -> None:
    cpu_model = copy.deepcopy(model).cpu().eval()  # the graph is device-free; export where every op exists
    x = _batch_of_two(example).cpu()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter():
            torch.onnx.export(
                cpu_model,
                (x,),
                tmp,
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as ex:  # the exporter raises many types for an unsupported op
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
        raise UserError(
            f"export=onnx failed ({type(ex).__name__}: {first[:200]}); try export=torchscript or another export_opset"
        ) from ex


def _write_torchscript(model: nn.Module, example: torch.Tensor, tmp: str) -> None:
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; the user asked for this format by name
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model.eval(), _batch_of_two(example), check_trace=False)
        torch.jit.save(traced, tmp)


class OnnxRuntimeModule(nn.Module):
    """An onnxruntime session that looks like an ``nn.Module``: torch tensor in, torch tensor out.

    On CUDA with the CUDA provider, input and output stay on the GPU (IO binding on torch's
    buffers), so its latency compares with torch's; otherwise the tensor goes through host memory.
    """

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        super().__init__()
        ort = require_onnx()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the same CPU budget as torch
        # ORT's idle workers spin after each run by default, stealing the cores from the torch model timed
        # next in turn (resnet18 read ~100x slower beside it on 2 cores): let them sleep
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        # use_tf32=0: the check compares in full fp32 (TF32 convs drift ~1e-3 on ResNets, past the 1e-4 bar)
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0, "use_tf32": 0})] if cuda else []
        self.session = ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self._on_gpu = self.provider == "CUDAExecutionProvider"
        self._out_shapes: dict[tuple, tuple] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._on_gpu and x.is_cuda:
            return self._forward_bound(x)
        out = self.session.run([OUTPUT], {INPUT: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def _forward_bound(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        x = x.detach().float().contiguous()
        shape = self._out_shapes.get(tuple(x.shape))
        if shape is None:  # learn the output shape once per input shape, through host memory
            shape = tuple(self.session.run([OUTPUT], {INPUT: x.cpu().numpy()})[0].shape)
            self._out_shapes[tuple(x.shape)] = shape
        out = torch.empty(shape, dtype=torch.float32, device=x.device)
        binding = self.session.io_binding()
        index = x.device.index or 0
        binding.bind_input(INPUT, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT, "cuda", index, np.float32, shape, out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # torch's writes to x are done before ORT reads
        self.session.run_with_iobinding(binding)
        return out


def load_exported(path: Path, fmt: str, device: torch.device) -> tuple[nn.Module, str]:
    """The exported file as a callable module on ``device``, and what runs it."""
    if fmt == "onnx":
        runner = OnnxRuntimeModule(path, device)
        return runner, f"onnxruntime {runner.provider}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice, as in _write_torchscript
        return torch.jit.load(str(path), map_location=device).eval(), "torch.jit"


def max_rel_diff(expected: torch.Tensor, got: torch.Tensor) -> float:
    """max |expected - got| / max |expected|: the figure fuse-bn reports for folding, reused for export."""
    expected, got = expected.detach().float().cpu(), got.detach().float().cpu()
    return (expected - got).abs().max().item() / max(expected.abs().max().item(), 1e-12)
