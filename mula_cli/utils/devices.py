"""The device a command runs on: ``--device`` checked once, the same way by every command and the API.

Values: ``auto`` (this process's GPU when PyTorch sees CUDA, else the CPU), ``cpu``, ``cuda`` (this
process's GPU: ``LOCAL_RANK`` under torchrun, else GPU 0) and ``cuda:N`` (GPU N). Anything else is a
user error, as is asking for a GPU that is not there.
"""

from __future__ import annotations

import contextlib
import re
from contextlib import AbstractContextManager

import torch

from mula_cli.utils.errors import MulaError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device_option(value: str, option: str = "--device") -> str:
    """``value`` normalised (lower case); MulaError naming ``option`` when it is not a device."""
    text = str(value).strip().lower()
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise MulaError(f"{option} {value!r} is not a device; use {DEVICE_CHOICES}")


def pick_device(option: str = "auto", local_rank: int = 0, *, name: str = "--device") -> torch.device:
    """The ``torch.device`` for a ``--device`` value (see the module docstring).

    Args:
        option: the user's value.
        local_rank: this process's GPU among the machine's (torchrun's ``LOCAL_RANK``) for ``auto``/``cuda``.
        name: the option's name in error messages.
    """
    value = check_device_option(option, name)
    if value == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if value == "auto":
            return torch.device("cpu")
        raise MulaError(f"{name} {value} was asked for but PyTorch sees no CUDA GPU; use {name} cpu or auto")
    count = torch.cuda.device_count()
    if value.startswith("cuda:"):
        index = int(value.split(":")[1])
        if index >= count:
            raise MulaError(f"{name} {value}: PyTorch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    return torch.device("cuda", local_rank % count)


AMP_MODES = ("auto", "off", "bf16", "fp16")


def amp_dtype(mode: str, device: torch.device, option: str = "--amp") -> torch.dtype | None:
    """The autocast dtype for an ``--amp`` mode on ``device``, or None for full precision.

    ``bf16`` and ``fp16`` are taken as asked, on a GPU and on the CPU alike (CPU autocast: the GPU's
    dtype flow anywhere, and the speed of CPUs with native bfloat16); ``auto`` is bf16 on a GPU that
    supports it and full precision elsewhere (the CPU included); ``off`` is full precision.
    """
    if mode not in AMP_MODES:
        raise MulaError(f"{option} {mode!r} is unknown; use one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; with None a full-precision region (autocast switched
    off, also inside an outer autocast). The one rule for the training step, the loss-balance
    measurement and the network's forward at test time.

    A device type without autocast (``meta``, where the tests check device placement) has nothing to
    switch off: None is then a plain region.
    """
    device_type = device if isinstance(device, str) else device.type
    if dtype is None and not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def precision_name(dtype: torch.dtype | None) -> str:
    """``float32`` for full precision, else the autocast dtype's name (``bfloat16``, ``float16``)."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


PRECISIONS = ("auto", "fp32", "bf16")
# Whether `--precision auto` takes bfloat16 where the device computes it natively. Set from
# benchmarks/precision_check.py on trained weights (benchmarks/results/precision_check.json): bf16 must
# keep PCKh and mIoU within 0.3 points of float32, >= 99.5 % of labels and a median joint shift of 0 px.
AUTO_BF16 = True


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU that supports it, or an x86 CPU with
    AVX512-BF16 or AMX (elsewhere oneDNN would emulate bfloat16, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def check_precision_option(option: str, name: str = "--precision") -> str:
    """``option`` if it is a precision mula knows; a one-line MulaError naming ``name`` otherwise."""
    if option not in PRECISIONS:
        raise MulaError(f"{name} {option!r} is unknown; use one of {', '.join(PRECISIONS)}")
    return option


def prediction_precision(option: str, device: torch.device, name: str = "--precision") -> str:
    """``fp32`` or ``bf16`` for a ``--precision`` value on ``device``: ``auto`` is bf16 where the device
    has it natively (and :data:`AUTO_BF16` holds), float32 elsewhere; the others are taken as asked."""
    check_precision_option(option, name)
    if option == "auto":
        return "bf16" if AUTO_BF16 and native_bf16(device) else "fp32"
    return option
