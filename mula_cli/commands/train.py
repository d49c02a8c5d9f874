"""``mula train``: the paper's recipe by default; every option also settable from a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mula_cli.train.config import AMP_MODES, AUGMENT_MODES, SCHEDULES, resolve_config
from mula_cli.utils.devices import DEVICE_CHOICES
from mula_cli.utils.errors import MulaError

DATA, MODEL, OPTIM, HARDWARE, OUTPUT = "Data", "Model", "Optimisation", "Hardware", "Output"


def find_last_checkpoint(project: Path) -> Path:
    """The newest ``weights/last.pt`` under the runs folder (for a bare ``--resume``)."""
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise MulaError(f"--resume found no run with weights/last.pt under {project}; give the checkpoint path")
    return candidates[-1]


def train(
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name prepared under MULA_HOME (lip, synthetic, ...) or a cache path. Default: lip.", rich_help_panel=DATA),
    augment: Optional[str] = typer.Option(None, "--augment", help=f"Training augmentation: {'|'.join(AUGMENT_MODES)} (full: the paper's rotation, scale, shift and mirroring; flip: mirroring only; none: the person centred as in testing). Default: full.", rich_help_panel=DATA),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=0, help="Data-loading processes per GPU. Default: 8.", rich_help_panel=DATA),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N epochs (and after the last). Default: 5.", rich_help_panel=DATA),
    val_limit: Optional[int] = typer.Option(None, "--val-limit", min=1, help="Validate on the first N val images only. Default: all.", rich_help_panel=DATA),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model preset (see `mula models`). Default: hg-5s.", rich_help_panel=MODEL),
    stages: Optional[int] = typer.Option(None, "--stages", min=1, help="Hourglass stages (overrides the preset).", rich_help_panel=MODEL),
    variant: Optional[str] = typer.Option(None, "--variant", help="Interaction variant: independent, add, multi, concat, mtl, self, la-pose, la-parsing, mula.", rich_help_panel=MODEL),
    width: Optional[int] = typer.Option(None, "--width", min=8, help="Feature channels (overrides the preset; small for quick tests).", rich_help_panel=MODEL),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=64, help="Input side in pixels (multiple of 64). Default: 256.", rich_help_panel=MODEL),
    authors_init: Optional[bool] = typer.Option(None, "--authors-init/--head-init", help="Initialise the prediction heads like every other layer (MSRA), as the authors' script does, instead of at the blank prediction (near-zero weights). Default: --head-init.", rich_help_panel=MODEL),
    paper_mapping: Optional[bool] = typer.Option(None, "--paper-mapping/--release-mapping", help="Feed the next stage from the adapted features, as the paper's text says, instead of the un-adapted ones of the authors' release (docs/fidelity.md). Default: release.", rich_help_panel=MODEL),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Start from these weights (e.g. from `mula import-official`).", rich_help_panel=MODEL),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs. Default: 250.", rich_help_panel=OPTIM),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Total batch size over all GPUs. Default: 24.", rich_help_panel=OPTIM),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate. Default: the schedule's.", rich_help_panel=OPTIM),
    schedule: Optional[str] = typer.Option(None, "--schedule", help=f"Learning-rate schedule: {', '.join(SCHEDULES)} (paper: 2.5e-3 halved at 150/170/200/230 of 250 epochs; official: the authors' script). Default: paper.", rich_help_panel=OPTIM),
    beta: Optional[float] = typer.Option(None, "--beta", help="Weight of the parsing loss against the pose loss. Default: 0.01, the authors'.", rich_help_panel=OPTIM),
    lovasz: Optional[float] = typer.Option(None, "--lovasz", help="Add a Lovasz-softmax term, times this weight, to the parsing cross-entropy (it optimises each class's IoU, so rare classes count; SCHP's recipe). Default: 0, the paper's loss.", rich_help_panel=OPTIM),
    offset_weight: Optional[float] = typer.Option(None, "--offset-weight", help="Multi-person data: weight of the partition branch's offset loss (smooth L1) per stage. Default: 1.", rich_help_panel=OPTIM),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed. Default: 0.", rich_help_panel=OPTIM),
    device: Optional[str] = typer.Option(None, "--device", help=f"{DEVICE_CHOICES}. Default: auto.", rich_help_panel=HARDWARE),
    amp: Optional[str] = typer.Option(None, "--amp", help=f"Mixed precision of the network: {'|'.join(AMP_MODES)} (auto = bf16 on GPUs that support it, fp32 on the CPU; bf16/fp16 autocast on the CPU too when asked; fp16's grad scaler reads its overflow flag on the host every step). Default: auto.", rich_help_panel=HARDWARE),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help="SyncBatchNorm across GPUs. Default: off.", rich_help_panel=HARDWARE),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model. Default: off.", rich_help_panel=HARDWARE),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic", help="Strict deterministic algorithms and cuDNN: the same seed, data and hardware give the same weights, on CUDA too (the upsampling, cross-entropy, adaptive pool and Lovasz sums then take deterministic forms). Slower; an operation with no deterministic kernel stops the run with an error. Default: off.", rich_help_panel=HARDWARE),
    device_augment: Optional[bool] = typer.Option(None, "--device-augment/--cpu-augment", help="Resample augmented images in batches on the training device instead of in the data workers. Default: on with CUDA.", rich_help_panel=HARDWARE),
    project: Optional[str] = typer.Option(None, "--project", help="Folder of runs. Default: runs/train.", rich_help_panel=OUTPUT),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (auto-incremented if taken). Default: exp.", rich_help_panel=OUTPUT),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a run: its weights/last.pt, or with no value the newest run's.", rich_help_panel=OUTPUT),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML or YAML file setting any option; flags win.", rich_help_panel=OUTPUT),
    log_every: Optional[int] = typer.Option(None, "--log-every", min=1, help="Read the loss every N steps (the only host sync). Default: 20.", rich_help_panel=OUTPUT),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines.", rich_help_panel=OUTPUT),
    plots: bool = typer.Option(True, "--plots/--no-plots", envvar="MULA_PLOTS", help="Redraw results.png (losses, lr, speed, validation, loss balance) in the run directory after the epochs (needs the `plots` extra).", rich_help_panel=OUTPUT),
) -> None:
    """Train MuLA (defaults: the paper's recipe, Hourglass MuLA with 5 stages on LIP)."""
    from mula_cli.train.checkpoint import load_checkpoint, resumed_config
    from mula_cli.train.engine import train as run_training

    flags = {"data": data, "augment": augment, "workers": workers, "val_every": val_every, "val_limit": val_limit, "model": model,
             "stages": stages, "variant": variant, "width": width, "input_size": input_size,
             "paper_mapping": paper_mapping, "authors_init": authors_init, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "schedule": schedule, "beta": beta, "lovasz": lovasz, "offset_weight": offset_weight, "seed": seed, "device": device, "amp": amp, "sync_bn": sync_bn,
             "compile": compile_model, "deterministic": deterministic, "device_augment": device_augment,
             "project": project, "name": name, "log_every": log_every}
    if resume is not None:
        path = find_last_checkpoint(Path(project or "runs/train")) if resume == "last" else Path(resume)
        given = sorted(k for k, v in flags.items() if v is not None and k not in ("epochs", "workers", "device", "project"))
        given += ["weights"] if weights is not None else []  # the run's own weights are in its checkpoint
        if given or config is not None:
            raise MulaError(f"--resume continues a run with its own settings; drop {', '.join('--' + g.replace('_', '-') for g in given) or '--config'} "
                            "(only --epochs, --workers and --device may change; --project tells where to look)")
        checkpoint = load_checkpoint(path)  # read once: the engine resumes from this payload
        cfg = resumed_config(checkpoint, path, epochs=epochs, workers=workers, device=device)
        run_training(cfg, resume=path, checkpoint=checkpoint, quiet=quiet, plots=plots)
        return
    cfg = resolve_config(flags, config)
    if weights is not None:
        from mula_cli.model.hub import resolve_weights

        weights = resolve_weights(weights)  # a path, or a known name's cached file (authors-lip)
        if not weights.is_file():
            raise MulaError(f"--weights {weights} does not exist")
    run_training(cfg, weights=weights, quiet=quiet, plots=plots)
