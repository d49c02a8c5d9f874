"""Where mula follows the authors' release rather than the paper's text, and the flag for the paper's
version of the mapping to the next stage (docs/fidelity.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mula_cli.model.presets import build_model


def _mapping_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature stage 1 hands to its pose mapping, the un-adapted F and the adapted R of that stage."""
    seen: dict[str, torch.Tensor] = {}
    stage = model.stages[0]
    hooks = [stage.pose_features.register_forward_hook(lambda m, i, o: seen.__setitem__("F", o)),
             stage.pose_interaction.register_forward_hook(lambda m, i, o: seen.__setitem__("R", o)),
             stage.pose_mapping.register_forward_hook(lambda m, i, o: seen.__setitem__("mapped", i[1]))]
    model(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_paper_mapping_feeds_the_next_stage_from_the_adapted_features() -> None:
    torch.manual_seed(0)
    release = build_model("hg-tiny", width=16).eval()
    paper = build_model("hg-tiny", width=16, paper_mapping=True).eval()
    assert sum(p.numel() for p in paper.parameters()) == sum(p.numel() for p in release.parameters())
    paper.load_state_dict(release.state_dict())  # the same tensors: only the wiring differs
    x = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        ours, theirs = _mapping_inputs(release, x), _mapping_inputs(paper, x)
        out_release, out_paper = release(x), paper(x)
    assert torch.equal(ours["mapped"], ours["F"]) and not torch.allclose(ours["F"], ours["R"])
    assert torch.equal(theirs["mapped"], theirs["R"])
    assert torch.equal(out_release.pose[0], out_paper.pose[0])  # stage 1 is the same
    assert not torch.allclose(out_release.pose[1], out_paper.pose[1])  # stage 2 sees another input
    assert release.config.paper_mapping is False and paper.config.paper_mapping is True


@pytest.mark.slow
def test_train_paper_mapping_flag_reaches_the_model(tmp_path: Path) -> None:
    from mula_cli.model.weights import load_weights

    from conftest import run_cli

    made = run_cli("prepare", "synthetic", tmp_path / "tree", "--train", "4", "--val", "1", "--test", "0",
                   "--out", tmp_path / "s.h5", "-q")
    assert made.exit_code == 0, made.output
    result = run_cli("train", "--data", tmp_path / "s.h5", "--model", "hg-tiny", "--width", "16", "--epochs", "1",
                     "--batch-size", "4", "--workers", "0", "--paper-mapping", "--project", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    _, config, extra = load_weights(tmp_path / "runs" / "exp" / "weights" / "last.pt")
    assert config.paper_mapping is True and extra["train_config"]["paper_mapping"] is True
