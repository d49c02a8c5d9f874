"""Deployable models: TorchScript and ONNX files that need nothing but themselves.

The exported graph takes an image batch (B, 3, S, S) of RGB values in 0..255 at the model's
input size S (letterbox your pictures as ``mula_cli.data.transforms.letterbox`` does), applies the
model's normalisation inside, and returns the final stage's

- ``parsing``: logits upsampled to S x S (B, K, S, S), or with ``labels`` the class ids (B, S, S);
- ``heatmaps``: pose heatmaps at the model stride (B, J + 1, S/s, S/s), background map last.

TorchScript accepts uint8 or float input; ONNX takes float32 (float16 with ``half``). The model
configuration and dataset manifest travel inside the file (TorchScript extra file / ONNX metadata),
so ``mula predict --weights model.onnx`` knows classes, joints and palette. The per-sample
depthwise convolution is exported in a batch-independent form, so a dynamic batch works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mula_cli.errors import MulaError
from mula_cli.model.config import MulaConfig
from mula_cli.model.loss import upsample_logits
from mula_cli.model.mula import MulaOutput

META_KEY = "mula"
FORMATS = {"torchscript": ".torchscript", "onnx": ".onnx"}


class ExportWrapper(nn.Module):
    """Final-stage outputs of a MuLA model in the exported interface (see the module docstring)."""

    def __init__(self, model: nn.Module, labels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.labels = labels

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(image)
        size = (image.shape[-2], image.shape[-1])
        parsing = upsample_logits(out.parsing[-1], size)
        if self.labels:
            parsing = parsing.argmax(dim=1)
        return parsing, out.pose[-1]


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    label_agreement: float
    batches: tuple[int, ...]


def export_model(weights: Path, fmt: str, out: Path | None = None, *, dynamic_batch: bool = False, opset: int = 17,
                 half: bool = False, labels: bool = False, device: str = "cpu") -> ExportReport:
    """Export ``weights`` and check the written file against the eager model.

    Raises:
        MulaError: unknown format, missing onnx package, or an exported file that disagrees with eager.
    """
    from mula_cli.devices import pick_device
    from mula_cli.model.weights import load_weights

    if fmt not in FORMATS:
        raise MulaError(f"--format {fmt!r} is unknown; use torchscript or onnx")
    dev = pick_device(device)
    if half and dev.type != "cuda":
        raise MulaError("--half exports float16, which needs a CUDA device to trace and check; add --device cuda")
    model, config, extra = load_weights(weights, map_location=dev)
    dtype = torch.float16 if half else torch.float32
    wrapper = ExportWrapper(model.to(dtype), labels).eval()
    out = Path(out) if out is not None else Path(weights).with_suffix(FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"config": config.to_dict(), "extra": extra, "labels": labels, "half": half,
                       "batch": None if (dynamic_batch or fmt == "torchscript") else 2})
    size = config.input_size
    example = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(0)).to(dev, dtype)
    temp = out.with_name(f".{out.name}.partial")
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
                torch.jit.save(traced, str(temp), _extra_files={f"{META_KEY}.json": meta})
            else:
                _export_onnx(wrapper, example, temp, opset, dynamic_batch, meta)
    except MulaError:
        temp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - exporters raise many types; the user needs one line
        temp.unlink(missing_ok=True)
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise MulaError(f"exporting {weights} to {fmt} failed: {first[:200]} (try another --opset, or report it "
                        "with `mula info`)") from None
    temp.replace(out)
    batches = (1, 3) if (dynamic_batch or fmt == "torchscript") else (2,)
    return _verify(wrapper, out, dev, dtype, size, batches, labels)


def _export_onnx(wrapper: ExportWrapper, example: Tensor, path: Path, opset: int, dynamic: bool, meta: str) -> None:
    try:
        import onnx
    except ImportError:
        raise MulaError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    axes = {"image": {0: "batch"}, "parsing": {0: "batch"}, "heatmaps": {0: "batch"}} if dynamic else None
    torch.onnx.export(wrapper, (example,), str(path), opset_version=opset, input_names=["image"],
                      output_names=["parsing", "heatmaps"], dynamic_axes=axes, dynamo=False)
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = META_KEY, meta
    onnx.save(graph, str(path))


def _verify(wrapper: ExportWrapper, path: Path, device: torch.device, dtype: torch.dtype, size: int,
            batches: tuple[int, ...], labels: bool) -> ExportReport:
    """Reload the file, run it and eager on random images of every batch size; fail loudly if they differ."""
    exported = load_exported(path, device)
    worst, agreement = 0.0, 1.0
    for b in batches:
        x = torch.randint(0, 256, (b, 3, size, size), generator=torch.Generator().manual_seed(b)).to(device, dtype)
        with torch.no_grad():
            want_parsing, want_heat = wrapper(x)
            got_parsing, got_heat = exported.raw(x)
        scale = float(want_heat.abs().max()) or 1.0
        worst = max(worst, float((got_heat.float() - want_heat.float()).abs().max()) / scale)
        if labels:
            agreement = min(agreement, float((got_parsing == want_parsing).float().mean()))
        else:
            pscale = float(want_parsing.abs().max()) or 1.0
            worst = max(worst, float((got_parsing.float() - want_parsing.float()).abs().max()) / pscale)
            agreement = min(agreement, float((got_parsing.argmax(1) == want_parsing.argmax(1)).float().mean()))
    tolerance = 2e-2 if dtype == torch.float16 else 1e-4
    if worst > tolerance or agreement < 0.99:
        raise MulaError(f"exported {path} disagrees with the eager model (largest relative difference {worst:.2e}, "
                        f"parsing agreement {agreement:.4f}); please report this with `mula info`")
    return ExportReport(path, worst, agreement, batches)


class ExportedModel:
    """An exported file loaded for inference; called like a MuLA model (returns a one-stage MulaOutput)."""

    def __init__(self, path: Path, runner: Any, meta: dict[str, Any], device: torch.device) -> None:
        self.path, self.runner, self.device = path, runner, device
        self.config = MulaConfig.from_dict(meta["config"])
        self.extra: dict[str, Any] = meta.get("extra", {})
        self.labels_only = bool(meta.get("labels"))
        self.dtype = torch.float16 if meta.get("half") else torch.float32
        self.batch: int | None = meta.get("batch")  # None: any batch size

    def raw(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The file's own outputs (parsing, heatmaps)."""
        x = image.to(self.device, self.dtype)
        if self.batch is not None and x.shape[0] != self.batch:
            raise MulaError(f"{self.path} was exported for batches of exactly {self.batch} images; export again "
                            "with --dynamic-batch to run it on other batch sizes")
        if tuple(x.shape[-2:]) != (self.config.input_size, self.config.input_size):
            raise MulaError(f"{self.path} takes {self.config.input_size}x{self.config.input_size} inputs, not "
                            f"{x.shape[-1]}x{x.shape[-2]} (multi-scale testing needs the weights file)")
        if isinstance(self.runner, torch.jit.ScriptModule):
            parsing, heat = self.runner(x)
            return parsing, heat
        parsing, heat = self.runner.run(None, {"image": x.cpu().numpy()})
        return torch.from_numpy(parsing).to(self.device), torch.from_numpy(heat).to(self.device)

    def __call__(self, image: Tensor) -> MulaOutput:
        parsing, heat = self.raw(image)
        if self.labels_only:  # class ids back to scores whose argmax is the same label
            parsing = torch.nn.functional.one_hot(parsing.long(), self.config.num_classes).permute(0, 3, 1, 2)
        return MulaOutput([heat.float()], [parsing.float()])

    def eval(self) -> "ExportedModel":
        return self


def load_exported(path: Path, device: torch.device | str = "cpu") -> ExportedModel:
    """Load a ``.torchscript`` or ``.onnx`` file written by :func:`export_model`."""
    path, device = Path(path), torch.device(device)
    if not path.is_file():
        raise MulaError(f"exported model {path} does not exist")
    if path.suffix.lower() == ".onnx":
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
