"""`mula reproduce`: the paper's numbers file, and a whole table on synthetic data end to end on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mula_cli.model.presets import PRESETS
from mula_cli.reproduce.paper import TARGETS, paper_rows_of, paper_tables, target
from mula_cli.train.config import TrainConfig

from conftest import run_cli, synthetic_cache


def test_the_papers_numbers_name_their_table_row_and_preset() -> None:
    tables = paper_tables()
    assert sorted(tables) == [1, 2, 3, 4, 6]
    for table in tables.values():
        assert table.rows and table.columns
        for row in table.rows:
            assert row.preset in PRESETS and set(row.values) == set(table.columns)
            assert all(0 < v < 100 for v in row.values.values())
    assert tables[1].rows[0].preset == "vgg16-fcn" and len(tables[1].rows) == 9
    assert tables[2].rows[3].row == "HG-2s-1u-MuLA (1st Stage)" and tables[2].rows[3].values == {"PCK": 82.8, "mIOU": 45.5}
    assert tables[4].rows[0].values == {"PixelAcc": 88.5, "MeanAcc": 60.5, "mIoU": 49.3}
    assert [t.table for t in target("lip").tables] == [3, 4] and target("lip").presets == ["hg-5s"]
    assert set(TARGETS) == {"table1", "table2", "lip", "pascal"}
    # the labels: VGG16-FCN ablations are Table 1, the Hourglass ones Table 2, hg-1s-* are not in the paper
    assert paper_rows_of("vgg16-fcn-add") == ["Table 1: VGG16-FCN-Add"]
    assert paper_rows_of("hg-2x1u") == ["Table 2: HG-2×1u"] and paper_rows_of("hg-1s-add") == []


def test_models_lists_each_presets_row_in_the_paper() -> None:
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r["paper"] for r in json.loads(result.output)}
    assert rows["vgg16-fcn-mula"] == ["Table 1: VGG16-FCN-MuLA"] and rows["hg-1s-concat"] == []
    assert "Table 2: HG-5s-1u-MuLA" in rows["hg-5s"]


def test_vgg16_fcn_trains_at_the_authors_vgg_rate_by_default() -> None:
    cfg = TrainConfig()
    assert cfg.base_lr("vgg16") == 1e-4 and cfg.base_lr("hourglass") == 2.5e-3
    assert TrainConfig(lr=1e-3).base_lr("vgg16") == 1e-3


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("reproduce"), train=8, val=3)


def _table(project: Path, name: str) -> list[dict[str, str]]:
    with (project / name / "table.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_whole_table_on_synthetic_data_end_to_end(cache: Path, tmp_path: Path) -> None:
    project = tmp_path / "runs"
    def tiny(epochs: int = 1) -> list[object]:
        return ["--data", cache, "--width", "16", "--epochs", str(epochs), "--workers", "0", "--project", project, "-q"]

    result = run_cli("reproduce", "table1", *tiny())
    assert result.exit_code == 0, result.output
    rows = _table(project, "table1")
    paper = {r.preset: r.values for r in paper_tables()[1].rows}
    assert [r["preset"] for r in rows] == list(paper)
    for row in rows:  # our number beside the paper's in every cell
        assert row["pckh_table1_ours"] != "" and row["miou_table1_ours"] != ""
        assert float(row["pckh_table1_paper"]) == paper[row["preset"]]["PCK"]
        assert float(row["miou_table1_paper"]) == paper[row["preset"]]["mIOU"]
        run = project / "table1" / row["preset"]  # an ordinary `mula train` run directory
        assert (run / "config.json").is_file() and (run / "weights" / "last.pt").is_file()
    doc = json.loads((project / "table1" / "table.json").read_text())
    assert doc["setting"]["recipe"] == "laptop" and "NieXC" in doc["paper"]["source"]
    assert "| VGG16-FCN-MuLA | `vgg16-fcn-mula` |" in (project / "table1" / "table.md").read_text()

    # a rerun skips finished rows; --rows picks some; a longer --epochs resumes from last.pt
    last = project / "table1" / "vgg16-fcn" / "weights" / "last.pt"
    before = last.stat().st_mtime_ns
    again = run_cli("reproduce", "table1", *tiny(), "--rows", "vgg16-fcn,vgg16-fcn-mula")
    assert again.exit_code == 0 and again.output.count("not trained again") == 2 and last.stat().st_mtime_ns == before
    longer = run_cli("reproduce", "table1", *tiny(2), "--rows", "vgg16-fcn")
    assert longer.exit_code == 0, longer.output
    assert "resuming at epoch 2" in longer.output and last.stat().st_mtime_ns != before
    metrics = (project / "table1" / "vgg16-fcn" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3  # header and two epochs
    other = run_cli("reproduce", "table1", "--data", cache, "--width", "8", "--epochs", "2", "--workers", "0",
                    "--project", project, "--rows", "vgg16-fcn")
    assert other.exit_code == 2 and "width" in other.output
    for bad in (["table9"], ["table1", "--rows", "hg-5s"], ["pascal"], ["table1", "--recipe", "fast"]):
        out = run_cli("reproduce", *bad, "--data", cache, "--project", project)
        assert out.exit_code == 2, out.output


def _unstarted_row(run: Path, files: int = 40) -> Path:
    """A row folder left by a run that stopped before its first checkpoint."""
    for i in range(files):
        (run / f"vis{i % 4}").mkdir(parents=True, exist_ok=True)
        (run / f"vis{i % 4}" / f"{i}.png").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    return run


def test_clearing_an_unstarted_row_tolerates_another_rank_clearing_it(tmp_path: Path) -> None:
    """m10: under torchrun every rank reaches the row folder; one already gone, or going, is no error."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mula_cli.train.reproduce import _clear_unstarted

    _clear_unstarted(tmp_path / "gone")  # another rank removed it after this one saw it
    for attempt in range(3):  # two removals racing through one tree
        run = _unstarted_row(tmp_path / f"row{attempt}")
        start = threading.Barrier(2)

        def clear(run: Path = run, start: threading.Barrier = start) -> None:
            start.wait()
            _clear_unstarted(run)

        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(clear) for _ in range(2)]:
                done.result()  # raises what the thread raised
        assert not run.exists()


def test_only_rank_0_clears_an_unstarted_row_and_every_rank_refuses_one_with_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.train import engine
    from mula_cli.train.reproduce import LAPTOP_RECIPE, Plan, train_row
    from mula_cli.utils.errors import MulaError

    trained: list[str] = []
    monkeypatch.setattr(engine, "train", lambda cfg, **_: trained.append(cfg.name))
    plan = Plan(cache=tmp_path / "cache.h5", split="test", recipe=LAPTOP_RECIPE, quiet=True)
    run = _unstarted_row(tmp_path / "table1" / "hg-tiny", files=2)
    monkeypatch.setenv("RANK", "1")
    assert train_row(plan, "hg-tiny", tmp_path / "table1") == "trained" and run.is_dir()  # left to rank 0
    monkeypatch.setenv("RANK", "0")
    assert train_row(plan, "hg-tiny", tmp_path / "table1") == "trained" and not run.exists()
    assert trained == ["hg-tiny", "hg-tiny"]
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"x")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(MulaError, match="holds weights"):
            train_row(plan, "hg-tiny", tmp_path / "table1")
