"""Running an exported model (``.torchscript`` or ``.onnx`` from ``mula export``) like a MuLA model.

The file carries the model configuration and the dataset manifest (TorchScript extra file / ONNX
metadata), so the :class:`~mula_cli.inference.predictor.Predictor` needs nothing else. Writing exports is
:mod:`mula_cli.deploy.export`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mula_cli.model.config import MulaConfig
from mula_cli.model.mula import ModelOutput, model_output
from mula_cli.utils.errors import MulaError

META_KEY = "mula"
FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx"}


class ExportedModel:
    """An exported file loaded for inference; called like a MuLA model (returns a one-stage MulaOutput, or MultiPersonOutput)."""

    def __init__(self, path: Path, runner: Any, meta: dict[str, Any], device: torch.device) -> None:
        self.path, self.runner, self.device = path, runner, device
        self.config = MulaConfig.from_dict(meta["config"])
        self.extra: dict[str, Any] = meta.get("extra", {})
        self.labels_only = bool(meta.get("labels"))
        self.dtype = torch.float16 if meta.get("half") else torch.float32
        self.batch: int | None = meta.get("batch")  # None: any batch size

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
        return tuple(torch.from_numpy(a).to(self.device) for a in self.runner.run(None, {"image": x.cpu().numpy()}))

    def __call__(self, image: Tensor) -> ModelOutput:
        parsing, heat, *offsets = self.raw(image)
        if self.labels_only:  # class ids back to scores whose argmax is the same label
            parsing = torch.nn.functional.one_hot(parsing.long(), self.config.num_classes).permute(0, 3, 1, 2)
        return model_output([heat.float()], [parsing.float()], [o.float() for o in offsets])

    def eval(self) -> ExportedModel:
        return self


def load_exported(path: Path, device: torch.device | str = "cpu", fmt: str | None = None) -> ExportedModel:
    """Load a ``.torchscript`` or ``.onnx`` file written by ``mula export``.

    Args:
        path: the file.
        device: where to run it.
        fmt: ``torchscript`` or ``onnx``; by default read off the file name (``.onnx`` or anything else).
    """
    path, device = Path(path), torch.device(device)
    if not path.is_file():
        raise MulaError(f"exported model {path} does not exist")
    if (fmt or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")) == "onnx":
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
        return ExportedModel(path, runner, json.loads(props[META_KEY]), device)
    files = {f"{META_KEY}.json": ""}
    try:
        runner = torch.jit.load(str(path), map_location=device, _extra_files=files)
    except (RuntimeError, ValueError) as exc:
        raise MulaError(f"{path} is not a readable TorchScript model ({str(exc).splitlines()[0][:120]})") from None
    if not files[f"{META_KEY}.json"]:
        raise MulaError(f"{path} was not exported by mula (no {META_KEY}.json inside); export it with `mula export`")
    return ExportedModel(path, runner.eval(), json.loads(files[f"{META_KEY}.json"]), device)
