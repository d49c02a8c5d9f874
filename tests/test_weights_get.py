"""``mula weights get authors-lip`` and ``--weights authors-lip``, against a local stand-in for Google Drive.

No network: the folder listing (gdown's Drive page parsing) is replaced by a list of files served by an
HTTP server on 127.0.0.1, which gdown then downloads as it would any URL. The checkpoint is shaped
exactly like the authors' (random values), made with tests/test_import_official.py's helpers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_import_official import random_official_state, save_like_the_authors

from mula_cli.model import hub
from mula_cli.model.weights import load_weights
from mula_cli.utils.errors import MulaError

from conftest import run_cli

NAME = "authors-lip"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A folder served over HTTP on 127.0.0.1 holding an authors' checkpoint, a bad one and a log;
    yields (folder, base URL, list of requested paths)."""
    root = tmp_path_factory.mktemp("drive")
    official = random_official_state("hg_1stage", with_batch_counts=False, seed=7)
    save_like_the_authors(root / "mula_lip.pth.tar", official, legacy=True, numpy_module="numpy.core")
    (root / "broken").mkdir()
    (root / "broken" / "mula_lip.pth.tar").write_bytes(b"<html>Google Drive - Quota exceeded</html>")
    (root / "mula_lip.log").write_text("epoch 1 ...\n")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def drive(served, monkeypatch: pytest.MonkeyPatch):
    """The authors' folder as the local server: listing patched, downloads through gdown for real."""
    pytest.importorskip("gdown")
    root, base, requests = served
    listing = [hub.RemoteFile("logs/mula_lip.log", f"{base}/mula_lip.log"),
               hub.RemoteFile("mula_lip_parsing_best.pth.tar", f"{base}/missing.pth.tar"),
               hub.RemoteFile("mula_lip.pth.tar", f"{base}/mula_lip.pth.tar")]
    monkeypatch.setattr(hub, "list_folder", lambda url: listing)
    return root, listing, requests


def _cache_is_empty() -> None:
    folder = hub.weights_dir()
    assert not folder.exists() or not any(folder.iterdir()), sorted(p.name for p in folder.iterdir())


def test_get_caches_records_and_a_second_get_is_a_no_op(drive) -> None:
    root, _, requests = drive
    result = run_cli("weights", "get", NAME, "-q")
    assert result.exit_code == 0, result.output
    target = hub.weights_dir() / f"{NAME}.pt"
    assert target.is_file() and str(target) in _one_line(result.output)
    record = json.loads((hub.weights_dir() / f"{NAME}.json").read_text())
    # The preferred snapshot (not the parsing-best one listed first), imported like `mula import-official`.
    assert record["original_name"] == "mula_lip.pth.tar" and record["source"]["file"] == "mula_lip.pth.tar"
    assert record["checkpoint_sha256"] == _sha(root / "mula_lip.pth.tar")
    assert record["weights_sha256"] == _sha(target) and record["weights_bytes"] == target.stat().st_size
    assert record["source"]["folder"] == hub.AUTHORS_FOLDER and record["imported_at"].endswith("+00:00")
    _, config, extra = load_weights(target)
    assert config.preset == "hg-1s" and extra["official"]["source"] == "mula_lip.pth.tar"
    assert sorted(p.name for p in hub.weights_dir().iterdir()) == [f"{NAME}.json", f"{NAME}.pt"]  # no leftovers
    downloads, mtime = len(requests), target.stat().st_mtime_ns
    again = run_cli("weights", "get", NAME)
    assert again.exit_code == 0 and "is cached" in again.output and str(target) in _one_line(again.output)
    assert len(requests) == downloads and target.stat().st_mtime_ns == mtime  # nothing downloaded or written
    listed = run_cli("weights", "list").output
    assert f"{NAME}: cached" in listed and str(target) in listed and f"sha256 {record['weights_sha256']}" in listed
    forced = run_cli("weights", "get", NAME, "--force", "-q")
    assert forced.exit_code == 0 and len(requests) == downloads + 1


def test_weights_by_name_in_predict_and_evaluate(drive, tmp_path: Path) -> None:
    from PIL import Image

    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.utils.manifests import load_manifest

    from trees import build_lip_tree

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(tmp_path / "me.jpg")
    before = run_cli("predict", tmp_path / "me.jpg", "--weights", NAME, "--pose", tmp_path / "me.json")
    assert before.exit_code == 2 and f"mula weights get {NAME}" in _one_line(before.output)
    assert "Traceback" not in before.output
    assert run_cli("weights", "get", NAME, "-q").exit_code == 0
    cached = hub.weights_dir() / f"{NAME}.pt"
    result = run_cli("predict", tmp_path / "me.jpg", "--weights", NAME, "--pose", tmp_path / "me.json")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "me.json").read_text())
    assert doc["model"]["weights"] == str(cached) and doc["model"]["sha256"] == _sha(cached)[:16]
    build_lip_tree(tmp_path / "LIP", counts={"train": 1, "val": 2}, seed=1)
    prepare_dataset(load_manifest("lip"), tmp_path / "LIP", tmp_path / "lip.h5")
    scored = run_cli("evaluate", NAME, "--data", tmp_path / "lip.h5", "--limit", "1", "--save-dir", tmp_path / "ev",
                     "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 1


def test_offline_gives_one_line_with_the_manual_route(drive, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(url: str):
        raise hub.DownloadError("listing the folder failed (ConnectionError: Failed to resolve 'drive.google.com')")

    monkeypatch.setattr(hub, "list_folder", refused)
    result = run_cli("weights", "get", NAME)
    text = _one_line(result.output)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert hub.AUTHORS_FOLDER in text and "mula_lip.pth.tar" in text
    assert f"mula weights get {NAME} --file" in text and "Failed to resolve" in text
    _cache_is_empty()


def test_a_download_drive_refuses_and_a_missing_gdown_give_the_manual_route(drive, served,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, base, _ = served
    # Drive answers 404 (a moved file, a refused quota): gdown's own error, caught.
    monkeypatch.setattr(hub, "list_folder", lambda url: [hub.RemoteFile("mula_lip.pth.tar", f"{base}/gone.pth.tar")])
    result = run_cli("weights", "get", NAME, "-q")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "downloading mula_lip.pth.tar failed" in _one_line(result.output)
    assert "--file <downloaded file>" in _one_line(result.output)
    _cache_is_empty()
    monkeypatch.setitem(__import__("sys").modules, "gdown", None)  # `import gdown` raises ImportError
    result = run_cli("weights", "get", NAME)
    text = _one_line(result.output)
    assert result.exit_code == 2 and "pip install 'mula[weights]'" in text and hub.AUTHORS_FOLDER in text
    _cache_is_empty()


def test_a_corrupted_download_is_refused_and_nothing_is_cached(drive, served, monkeypatch: pytest.MonkeyPatch) -> None:
    _, base, _ = served
    monkeypatch.setattr(hub, "list_folder",
                        lambda url: [hub.RemoteFile("mula_lip.pth.tar", f"{base}/broken/mula_lip.pth.tar")])
    result = run_cli("weights", "get", NAME, "-q")
    text = _one_line(result.output)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "the downloaded mula_lip.pth.tar is not a usable checkpoint" in text and "nothing was cached" in text
    _cache_is_empty()


def test_file_imports_a_checkpoint_downloaded_by_hand(served, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = served

    def no_network(url: str):
        raise AssertionError("--file must not touch the network")

    monkeypatch.setattr(hub, "list_folder", no_network)
    missing = run_cli("weights", "get", NAME, "--file", root / "nope.pth.tar")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad = run_cli("weights", "get", NAME, "--file", root / "broken" / "mula_lip.pth.tar")
    assert bad.exit_code == 2 and "nothing was cached" in _one_line(bad.output)
    _cache_is_empty()
    result = run_cli("weights", "get", NAME, "--file", root / "mula_lip.pth.tar")
    assert result.exit_code == 0, result.output
    record = json.loads((hub.weights_dir() / f"{NAME}.json").read_text())
    assert record["source"]["by_hand"] is True and record["original_name"] == "mula_lip.pth.tar"
    assert record["checkpoint_sha256"] == _sha(root / "mula_lip.pth.tar")
    assert record["weights_sha256"] == _sha(hub.weights_dir() / f"{NAME}.pt")


def test_choosing_the_file_in_the_folder() -> None:
    entry = hub.KNOWN[NAME]
    files = [hub.RemoteFile(p, f"u/{p}") for p in ("logs/mula_lip.log", "mula_lip_parsing_best.pth.tar",
                                                    "mula_lip_pose_best.pth.tar")]
    assert hub.choose(files, entry).path == "mula_lip_pose_best.pth.tar"  # no latest: the best-PCKh one
    assert hub.choose(files, entry, pick="mula_lip_parsing_best.pth.tar").name == "mula_lip_parsing_best.pth.tar"
    assert hub.choose(files[:1] + [hub.RemoteFile("x/model.pth", "u")], entry).path == "x/model.pth"  # the only one
    twice = [hub.RemoteFile("hg/mula_lip.pth.tar", "a"), hub.RemoteFile("vgg/mula_lip.pth.tar", "b")]
    with pytest.raises(MulaError, match="more than once"):
        hub.choose(twice, entry)
    assert hub.choose(twice, entry, pick="vgg/mula_lip.pth.tar").url == "b"
    with pytest.raises(MulaError, match="holds none of"):
        hub.choose(files[:1] + [hub.RemoteFile("a.pth", "u"), hub.RemoteFile("b.pth", "u")], entry)
    with pytest.raises(MulaError, match=r"no file 'other\.tar'"):
        hub.choose(files, entry, pick="other.tar")


def test_resolving_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.resolve_weights(tmp_path / "w.pt") == tmp_path / "w.pt"  # any path: the caller reports it
    with pytest.raises(MulaError, match=f"run `mula weights get {NAME}`"):
        hub.resolve_weights(NAME)
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).write_bytes(b"a file of that name")
    assert hub.resolve_weights(NAME) == Path(NAME)  # an existing path wins
    unknown = run_cli("weights", "get", "someone-else")
    assert unknown.exit_code == 2 and NAME in unknown.output
