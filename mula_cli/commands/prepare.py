"""``mula prepare lip|pascal-person-part|synthetic``: cache a dataset for training and evaluation."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mula_cli.data.prepare import PrepareResult, prepare_dataset
from mula_cli.utils.console import err, out
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import write_json
from mula_cli.utils.manifests import DatasetManifest, load_manifest
from mula_cli.utils.paths import default_cache_path, mula_home, user_manifest_dir
from mula_cli.utils.progress import make_progress

app = typer.Typer(
    help="Read a dataset from disk into one HDF5 cache that train/evaluate find by name.",
    no_args_is_help=True,
)

_MARKER = ".mula-synthetic.json"

OutOpt = typer.Option(None, "--out", "-o", help="Cache file to write. Default: $MULA_HOME/data/<dataset>.h5.")
SplitsOpt = typer.Option(None, "--splits", help="Comma-separated splits to cache, e.g. train,val. Default: all found.")
ForceOpt = typer.Option(False, "--force", help="Rebuild an existing cache (it is replaced only when the new one is complete).")
WorkersOpt = typer.Option(None, "--workers", "-j", min=0, help="Decoding processes. Default: one per core, at most 8.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar and no issue list.")


def _splits(value: Optional[str]) -> Optional[list[str]]:
    if not value:
        return None
    parts = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in parts if not s.replace("_", "").isalnum()]
    if bad or not parts:
        raise MulaError(f"--splits {value!r} is not a comma-separated list of split names like train,val,test")
    return parts


def run_prepare(manifest: DatasetManifest, root: Path, out_path: Optional[Path], splits: Optional[list[str]],
                force: bool, workers: Optional[int], quiet: bool) -> PrepareResult:
    """Prepare with a progress bar, then print the summary table (shared by every prepare command)."""
    with make_progress(quiet) as bar:
        tasks: dict[str, int] = {}

        def tick(split: str, n: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(f"{manifest.name}/{split}", total=total, unit="samples")
            bar.advance(tasks[split], n)

        result = prepare_dataset(manifest, root, out_path, splits, force=force, workers=workers, progress=tick)
    print_summary(result, quiet)
    if not quiet:
        print_joint_preview(result, manifest)
    return result


def format_xy(xy, occluded: int) -> str:
    """A joint's cell in the preview: ``(x, y)`` to 0.1 px, ``*`` when flagged not visible, ``-`` when unlabelled."""
    x, y = float(xy[0]), float(xy[1])
    if occluded < 0 or x != x or y != y:  # NaN: unlabelled
        return "-"
    return f"({x:.1f}, {y:.1f})" + ("*" if occluded == 1 else "")


def print_joint_preview(result: PrepareResult, manifest: DatasetManifest) -> None:
    """The first people read from ``.mat`` joint files, joint by joint, so the joint order can be checked by eye."""
    if not result.preview:
        return
    table = Table(title="joints as read from the .mat files, named in the manifest's order", title_justify="left")
    table.add_column("joint", no_wrap=True)
    for person in result.preview:
        table.add_column(f"{person.image_id} #{person.person}", justify="right", no_wrap=True)
    for j, name in enumerate(manifest.joints):
        table.add_row(name, *[format_xy(person.joints[j], int(person.occluded[j])) for person in result.preview])
    out.print(table)
    images = ", ".join(str(path) for path in dict.fromkeys(person.image_path for person in result.preview))
    out.print(f"(x, y): pixels from the top-left corner, 0-based; * flagged not visible; - unlabelled. Look at {images}",
              soft_wrap=True)
    fix = user_manifest_dir() / f"{manifest.name}.json"
    out.print(f"A name on the wrong body part means the files use another joint order: put a corrected copy of the "
              f"manifest (`joints` and the fields that use joint indices) in {fix}", soft_wrap=True)


def print_summary(result: PrepareResult, quiet: bool = False) -> None:
    table = Table(title=f"cache {result.path}", title_justify="left")
    for col in ("split", "cached", "skipped", "repaired", "seconds"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, r in result.splits.items():
        table.add_row(split, f"{r.cached:,}", f"{len(r.skipped):,}", f"{len(r.repaired):,}", f"{r.seconds:.1f}")
    out.print(table)
    if not quiet:
        issues = [(s, "skipped", i) for s, r in result.splits.items() for i in r.skipped]
        issues += [(s, "repaired", i) for s, r in result.splits.items() for i in r.repaired]
        for split, kind, issue in issues[:10]:
            err.print(f"  [yellow]{kind}[/] {split}/{issue.id}: {issue.reason}", soft_wrap=True)
        if len(issues) > 10:
            err.print(f"  ... and {len(issues) - 10} more")
    out.print(f"{result.total:,} samples in {result.seconds:.1f} s ({result.samples_per_s:,.0f} samples/s); "
              f"layout: {result.layout}; report: {result.report_path}")


@app.command("lip")
def prepare_lip(
    root: Path = typer.Argument(..., help="LIP root folder (official layout, doubly nested annotations, or the flattened CE2P/SCHP layout)."),
    out_path: Optional[Path] = OutOpt,
    splits: Optional[str] = SplitsOpt,
    force: bool = ForceOpt,
    workers: Optional[int] = WorkersOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Cache LIP (images, parsing labels, pose CSV; the test split without labels)."""
    run_prepare(load_manifest("lip"), root, out_path, _splits(splits), force, workers, quiet)


@app.command("pascal-person-part")
def prepare_pascal(
    root: Path = typer.Argument(..., help="Root with JPEGImages/, SegmentationPart/, PersonJoints/*.mat and train_id.txt / val_id.txt."),
    out_path: Optional[Path] = OutOpt,
    splits: Optional[str] = SplitsOpt,
    force: bool = ForceOpt,
    workers: Optional[int] = WorkersOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Cache the extended PASCAL-Person-Part (multi-person; joints from MATLAB v5 or v7.3 files)."""
    run_prepare(load_manifest("pascal_person_part"), root, out_path, _splits(splits), force, workers, quiet)


@app.command("synthetic")
def prepare_synthetic(
    folder: Optional[Path] = typer.Argument(None, help="Where to write the generated dataset tree. Default: $MULA_HOME/synthetic/<dataset>."),
    train: Optional[int] = typer.Option(None, "--train", min=1, help="Training images (default from the manifest)."),
    val: Optional[int] = typer.Option(None, "--val", min=1, help="Validation images (default from the manifest)."),
    test: Optional[int] = typer.Option(None, "--test", min=0, help="Unlabelled test images (LIP layout only)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    multi_person: bool = typer.Option(False, "--multi-person", help="Several people per image, PASCAL-Person-Part layout with .mat joint files."),
    out_path: Optional[Path] = OutOpt,
    force: bool = ForceOpt,
    workers: Optional[int] = WorkersOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Generate a synthetic dataset in an official layout, then cache it like real data."""
    prepare_synthetic_dataset(folder, train=train, val=val, test=test, seed=seed, multi_person=multi_person,
                              out_path=out_path, force=force, workers=workers, quiet=quiet)


def prepare_synthetic_dataset(folder: Optional[Path], *, train: Optional[int] = None, val: Optional[int] = None,
                              test: Optional[int] = None, seed: int = 0, multi_person: bool = False,
                              out_path: Optional[Path] = None, force: bool = False, workers: Optional[int] = None,
                              quiet: bool = False) -> PrepareResult:
    """Generate the tree and cache it (also used by ``mula demo``)."""
    from mula_cli.data.synthetic.writer import generate_lip_tree, generate_pascal_tree

    manifest = load_manifest("synthetic_multi_person" if multi_person else "synthetic")
    folder = Path(folder) if folder is not None else mula_home() / "synthetic" / manifest.name
    target = Path(out_path) if out_path is not None else default_cache_path(manifest.name)
    if target.exists() and not force:
        raise MulaError(f"{target} already exists; add --force to rebuild it")
    counts = {"train": train or manifest.splits["train"], "val": val or manifest.splits["val"]}
    if not multi_person:
        counts["test"] = manifest.splits.get("test", 0) if test is None else test
    marker = {"dataset": manifest.name, "seed": seed, "counts": counts, "generated": None}
    _claim_folder(folder, force, marker)

    generate = generate_pascal_tree if multi_person else generate_lip_tree
    n_workers = workers if workers is not None else (min(os.cpu_count() or 1, 8) if sum(counts.values()) >= 200 else 1)
    with make_progress(quiet) as bar:
        task = bar.add_task(f"generate {manifest.name}", total=sum(counts.values()), unit="images")
        stats = generate(folder, counts, seed, manifest, workers=max(n_workers, 1),
                         progress=lambda n: bar.advance(task, n))
    write_json(folder / _MARKER, {**marker, "generated": time.strftime("%Y-%m-%d %H:%M:%S")})
    out.print(f"generated {stats.images:,} images in {folder} in {stats.seconds:.1f} s "
              f"([bold]{stats.images_per_s:,.0f} images/s[/])")
    return run_prepare(manifest, folder, target, None, force, workers, quiet)


def _claim_folder(folder: Path, force: bool, marker: dict) -> None:
    """Make ``folder`` ready for a fresh tree without ever deleting data mula did not generate.

    The marker that says mula generated the folder is written before the first generated file and
    deleted after the last, so a generation or a clean-up stopped half-way (Ctrl-C, a job's time limit)
    leaves a folder that ``--force`` can still regenerate.
    """
    if folder.exists() and any(folder.iterdir()):
        if not (folder / _MARKER).is_file():
            raise MulaError(f"{folder} is not empty and was not generated by mula; give an empty or new folder")
        if not force:
            raise MulaError(f"{folder} already holds a generated dataset; add --force to regenerate it")
        for child in folder.iterdir():
            if child.name != _MARKER:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / _MARKER, marker)  # "generated": null until the tree is complete
