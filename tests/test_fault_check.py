"""The short version of benchmarks/fault_check.py: `mula train`, `prepare` and `predict` stopped at random
moments by SIGTERM or SIGINT to their process group or SIGKILL to the main process lose nothing, and the
stopped training, resumed, ends with the uninterrupted run's weights bit for bit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("av")
_spec = importlib.util.spec_from_file_location("fault_check", Path(__file__).parents[1] / "benchmarks" / "fault_check.py")
fault_check = importlib.util.module_from_spec(_spec)
sys.modules["fault_check"] = fault_check  # dataclasses look their module up
_spec.loader.exec_module(fault_check)


@pytest.mark.slow
def test_stops_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    summary = fault_check.run_all(tmp_path, kills=3, other_kills=1, epochs=8, seed=1, window_s=2.5,
                                  prepare_images=150, pictures=12, frames=60)
    assert summary["problems"] == [] and summary["files_lost_or_damaged"] == 0, summary["problems"]
    assert summary["train_weights_equal_uninterrupted"]
    train = summary["scenarios"]["train"]["stops"]
    assert [s["way"] for s in train] == list(fault_check.WAYS)  # each way once
    assert sum(s["outcome"] == "stopped" for s in train) >= 2  # the stops landed inside the run
    assert summary["survived"] == summary["stops"] == 6
