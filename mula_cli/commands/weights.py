"""``mula weights``: trained weights known by name (``authors-lip``), fetched once into ``$MULA_HOME/weights``.

``mula weights get authors-lip`` downloads the authors' checkpoint from their Google Drive folder (gdown, the
``weights`` extra), imports it exactly as ``mula import-official`` does (nothing in it is unpickled but
tensors and numeric NumPy values) and caches the result with a JSON record of its SHA-256s; afterwards
``--weights authors-lip`` works wherever weights are taken. ``--file`` imports a checkpoint downloaded by hand.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

import typer

from mula_cli.utils.console import err, out
from mula_cli.utils.errors import MulaError

app = typer.Typer(help="Trained weights known by name: fetch them once, then `--weights NAME` anywhere.",
                  no_args_is_help=True)


def _by_hand(entry, choice: Optional[str] = None) -> str:
    """The offline route, for the end of a one-line error."""
    what = choice or f"{entry.prefer[0]} (or {', '.join(entry.prefer[1:])})"
    return (f"download {what} from {entry.folder_url} by hand, then run "
            f"`mula weights get {entry.name} --file <downloaded file>`")


@app.command("get")
def get(
    name: str = typer.Argument(..., help="Which weights: authors-lip (the authors' released LIP checkpoint). `mula weights list` lists them."),
    file: Optional[Path] = typer.Option(None, "--file", help="Import this checkpoint, downloaded by hand, instead of downloading it."),
    pick: Optional[str] = typer.Option(None, "--pick", help="File of the folder to download (name or path in the folder). Default: the first found of the known snapshot names."),
    force: bool = typer.Option(False, "--force", help="Download and import again even if the weights are cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No download progress."),
) -> None:
    """Download the named weights, import them like `mula import-official` and cache them under MULA_HOME."""
    from mula_cli.model import hub
    from mula_cli.utils.files import atomic_write, remove_stale_partials, write_json

    entry = hub.known(name)
    target, record_file = hub.cached_path(name), hub.record_path(name)
    if target.is_file() and not force:
        record = hub.read_record(name)
        if record is not None and record.get("weights_sha256") == hub.sha256_of(target):
            out.print(f"{name} is cached: {target} (sha256 {record['weights_sha256']}); "
                      f"use it with --weights {name}; --force downloads it again", soft_wrap=True)
            return
        err.print(f"{target} does not match its record {record_file}; getting it again", highlight=False)
    if file is not None and not file.is_file():
        raise MulaError(f"--file {file} does not exist; check the path")
    folder = hub.weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".get-") as tmp:
        if file is None:
            remote, checkpoint = _fetch(entry, Path(tmp), pick, quiet)
            source = {"folder": entry.folder_url, "file": remote.path, "url": remote.url}
        else:
            checkpoint, source = file, {"folder": entry.folder_url, "file": str(file.resolve()), "by_hand": True}
        checkpoint_sha = hub.sha256_of(checkpoint)
        what = f"the downloaded {source['file']}" if file is None else str(file)
        if entry.sha256 is not None and checkpoint_sha != entry.sha256:
            raise MulaError(f"{what} has sha256 {checkpoint_sha}, not the known {entry.sha256}; nothing was cached; "
                            + _by_hand(entry))
        staged = Path(tmp) / f"{name}.pt"
        _import(checkpoint, staged, what, entry)
        record = {
            "name": name, "title": entry.title, "source": source, "original_name": Path(source["file"]).name,
            "checkpoint_sha256": checkpoint_sha, "checkpoint_bytes": checkpoint.stat().st_size,
            "weights": target.name, "weights_sha256": hub.sha256_of(staged), "weights_bytes": staged.stat().st_size,
            "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json(record_file, record)
        atomic_write(target, lambda temp: os.replace(staged, temp))
    out.print(f"cached {name}: {target} (sha256 {record['weights_sha256']}; record {record_file}); "
              f"use it with --weights {name}", soft_wrap=True)


def _fetch(entry, tmp: Path, pick: Optional[str], quiet: bool):
    """List the folder, choose the checkpoint, download it into ``tmp``; the manual route on failure.

    Returns:
        The file chosen and where it was downloaded.
    """
    from mula_cli.model import hub

    try:
        files = hub.list_folder(entry.folder_url)
    except hub.DownloadError as exc:
        raise MulaError(f"cannot download {entry.name} from Google Drive: {exc}; {_by_hand(entry)}") from None
    remote = hub.choose(files, entry, pick)
    err.print(f"downloading {remote.path} from {entry.folder_url}", highlight=False, soft_wrap=True)
    local = tmp / (remote.name if remote.name not in ("", ".", "..") else "checkpoint.pth.tar")
    try:
        hub.download(remote, local, quiet=quiet)
    except hub.DownloadError as exc:
        raise MulaError(f"cannot download {entry.name} from Google Drive: {exc}; {_by_hand(entry, remote.path)}") from None
    return remote, local


def _import(checkpoint: Path, staged: Path, what: str, entry) -> None:
    """``mula import-official``'s own code, into ``staged``; a refusal names the download, not the temporary file."""
    from mula_cli.commands.import_official import Arch, import_official

    captured = out.capture()
    try:
        with captured:
            import_official(checkpoint, out_path=staged, arch=Arch.auto)
    except MulaError as exc:
        reason = str(exc).replace(f"checkpoint {checkpoint} ", "").replace(str(checkpoint), checkpoint.name)
        raise MulaError(f"{what} is not a usable checkpoint ({reason}); nothing was cached; {_by_hand(entry)}") from None
    finally:  # its report, without its "Wrote <temporary file>" line (the file is moved into the cache)
        report = captured.get()
        out.file.write(report[: report.rfind("Wrote ")] if "Wrote " in report else report)


@app.command("list")
def list_weights() -> None:
    """The weights known by name: whether cached, where, size and SHA-256."""
    from mula_cli.model import hub

    for name, entry in hub.KNOWN.items():
        path = hub.cached_path(name)
        if path.is_file():
            record = hub.read_record(name) or {}
            out.print(f"{name}: cached, {path.stat().st_size / 1e6:.1f} MB, {entry.title}\n  {path}\n"
                      f"  sha256 {record.get('weights_sha256', '? (no record; `mula weights get --force`)')}"
                      f"{'  (from ' + str(record['original_name']) + ')' if 'original_name' in record else ''}",
                      soft_wrap=True)
        else:
            out.print(f"{name}: not cached ({entry.title}); `mula weights get {name}` puts it in {path}",
                      soft_wrap=True)
