"""Running an exported model (``.torchscript``, ``.onnx`` or an OpenVINO ``.xml`` from ``mula export``)
like a MuLA model.

The file carries the model configuration and the dataset manifest (TorchScript extra file / ONNX
metadata / OpenVINO runtime info), so the :class:`~mula_cli.inference.predictor.Predictor` needs nothing
else. An OpenVINO IR runs on the CPU in the precision asked for (``fp32`` or ``bf16``, OpenVINO's
inference precision hint; an int8 IR's quantized layers run in int8 either way); TorchScript and ONNX
files run in their own. Writing exports is :mod:`mula_cli.deploy.export`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mula_cli.model.config import MulaConfig
from mula_cli.model.mula import ModelOutput, model_output
from mula_cli.utils.errors import MulaError

META_KEY = "mula"
FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": ".xml"}
EXPORTED_SUFFIXES = (".torchscript", ".ts", ".onnx", ".xml")  # files load_exported reads (others are weights)
OPENVINO_META = [META_KEY, "meta"]  # where an IR keeps the metadata (its runtime info)
OPENVINO_EXTRA = "pip install 'mula[openvino]'"


class ExportedModel:
    """An exported file loaded for inference; called like a MuLA model (returns a one-stage MulaOutput, or MultiPersonOutput)."""

    def __init__(self, path: Path, runner: Any, meta: dict[str, Any], device: torch.device, fmt: str = "onnx",
                 precision: str | None = None) -> None:
        self.path, self.runner, self.device, self.fmt = path, runner, device, fmt
        self.config = MulaConfig.from_dict(meta["config"])
        self.extra: dict[str, Any] = meta.get("extra", {})
        self.labels_only = bool(meta.get("labels"))
        self.dtype = torch.float16 if meta.get("half") else torch.float32
        self.batch: int | None = meta.get("batch")  # None: any batch size
        self.int8 = bool(meta.get("int8"))
        # what the network computes in: OpenVINO's hint (fp32 or bf16), else what the file was exported in
        self.precision = precision or ("fp16" if meta.get("half") else "fp32")
        self.outputs = ["parsing", "heatmaps"] + (["offsets"] if self.config.partition else [])

    @property
    def description(self) -> str:
        """One line for ``Predictor.path``: which runtime runs the file, and in what precision."""
        if self.fmt == "openvino":
            return f"exported OpenVINO IR ({'int8, ' if self.int8 else ''}{self.precision}, CPU)"
        return f"exported {'ONNX (onnxruntime)' if self.fmt == 'onnx' else 'TorchScript'} model"

    @property
    def arithmetic(self) -> str:
        """The network's arithmetic for metrics.json: float32, float16, bfloat16, or int8 with one of them."""
        name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.precision]
        return f"int8 and {name}" if self.int8 else name

    def raw(self, image: Tensor) -> tuple[Tensor, ...]:
        """The file's own outputs (parsing, heatmaps, and offsets for a multi-person model)."""
        x = image.to(self.device, self.dtype)
        if self.batch is not None and x.shape[0] != self.batch:
            raise MulaError(f"{self.path} was exported for batches of exactly {self.batch} images; export again "
                            "with --dynamic-batch to run it on other batch sizes")
        if tuple(x.shape[-2:]) != (self.config.input_size, self.config.input_size):
            raise MulaError(f"{self.path} takes {self.config.input_size}x{self.config.input_size} inputs, not "
                            f"{x.shape[-1]}x{x.shape[-2]}")
        if isinstance(self.runner, torch.jit.ScriptModule):
            return tuple(self.runner(x))
        if self.fmt == "openvino":  # outputs by name; the input by position (its port has several names)
            found = self.runner({0: x.cpu().numpy()})
            return tuple(torch.from_numpy(found[name]).to(self.device) for name in self.outputs)
        return tuple(torch.from_numpy(a).to(self.device) for a in self.runner.run(None, {"image": x.cpu().numpy()}))

    def __call__(self, image: Tensor) -> ModelOutput:
        parsing, heat, *offsets = self.raw(image)
        if self.labels_only:  # class ids back to scores whose argmax is the same label
            parsing = torch.nn.functional.one_hot(parsing.long(), self.config.num_classes).permute(0, 3, 1, 2)
        return model_output([heat.float()], [parsing.float()], [o.float() for o in offsets])

    def eval(self) -> ExportedModel:
        return self

    def parameters(self) -> Iterator[Tensor]:  # as a model's: evaluation reads the device off these
        return iter(())

    def buffers(self) -> Iterator[Tensor]:
        return iter((torch.empty(0, device=self.device),))


def load_exported(path: Path, device: torch.device | str = "cpu", fmt: str | None = None,
                  precision: str = "fp32") -> ExportedModel:
    """Load a ``.torchscript``, ``.onnx`` or OpenVINO ``.xml`` file written by ``mula export``.

    Args:
        path: the file.
        device: where its outputs go (and where TorchScript and ONNX run; OpenVINO runs on the CPU).
        fmt: ``torchscript``, ``onnx`` or ``openvino``; by default read off the file name (``.onnx``,
            ``.xml``, or TorchScript for anything else).
        precision: OpenVINO only: ``fp32``, ``bf16``, or ``auto`` (bf16 where the CPU computes it
            natively, as :func:`~mula_cli.utils.devices.prediction_precision`); TorchScript and ONNX
            files run in the precision they were exported in.
    """
    path, device = Path(path), torch.device(device)
    if not path.is_file():
        raise MulaError(f"exported model {path} does not exist")
    fmt = fmt or {".onnx": "onnx", ".xml": "openvino"}.get(path.suffix.lower(), "torchscript")
    if fmt == "openvino":
        return _load_openvino(path, device, precision)
    if fmt == "onnx":
        try:
            import onnx
            import onnxruntime as ort
        except ImportError:
            raise MulaError("running .onnx models needs onnxruntime: pip install onnx onnxruntime") from None
        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else \
                ["CPUExecutionProvider"]
            runner = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnx/onnxruntime raise many types for bad files
            raise MulaError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0][:120]})") from None
        if META_KEY not in props:
            raise MulaError(f"{path} was not exported by mula (no '{META_KEY}' metadata); export it with `mula export`")
        return ExportedModel(path, runner, json.loads(props[META_KEY]), device, "onnx")
    files = {f"{META_KEY}.json": ""}
    try:
        runner = torch.jit.load(str(path), map_location=device, _extra_files=files)
    except (RuntimeError, ValueError) as exc:
        raise MulaError(f"{path} is not a readable TorchScript model ({str(exc).splitlines()[0][:120]})") from None
    if not files[f"{META_KEY}.json"]:
        raise MulaError(f"{path} was not exported by mula (no {META_KEY}.json inside); export it with `mula export`")
    return ExportedModel(path, runner.eval(), json.loads(files[f"{META_KEY}.json"]), device, "torchscript")


def _load_openvino(path: Path, device: torch.device, precision: str) -> ExportedModel:
    """An IR compiled for the CPU with as many threads as torch uses, for latency (one request at a time)."""
    from mula_cli.utils.devices import prediction_precision

    try:
        import openvino as ov
    except ImportError:
        raise MulaError(f"running OpenVINO .xml models needs the openvino extra: {OPENVINO_EXTRA}") from None
    resolved = prediction_precision(precision, torch.device("cpu"), name="precision")  # OpenVINO runs on the CPU
    core = ov.Core()
    try:
        model = core.read_model(str(path))  # and the .bin beside it
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and others for bad files
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise MulaError(f"{path} is not a readable OpenVINO IR ({reason[:120]}; its .bin must lie beside it)") from None
    if not model.has_rt_info(OPENVINO_META):
        raise MulaError(f"{path} was not exported by mula (no '{META_KEY}' runtime info); export it with `mula export`")
    meta = json.loads(model.get_rt_info(OPENVINO_META).astype(str))
    if resolved == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        resolved = "fp32"  # OpenVINO ignores a bf16 hint where the CPU has no bfloat16: say what runs
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if resolved == "bf16" else "f32",
                                                 "PERFORMANCE_HINT": "LATENCY"})
    return ExportedModel(path, compiled, meta, device, "openvino", resolved)
