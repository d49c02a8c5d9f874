"""The per-stage joint loss: the authors' weighting, its parts, ignore labels and stage weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mula_cli.model.loss import lovasz_softmax, mula_loss, parsing_cross_entropy, pose_mse, upsample_logits
from mula_cli.model.mula import MulaOutput

B, J1, P, S, SIZE = 2, 5, 4, 8, 32  # batch, joint maps, classes, stride-s side, label side


def fake_output(stages: int, seed: int = 0) -> MulaOutput:
    g = torch.Generator().manual_seed(seed)
    pose = [torch.randn(B, J1, S, S, generator=g, requires_grad=True) for _ in range(stages)]
    parsing = [torch.randn(B, P, S, S, generator=g, requires_grad=True) for _ in range(stages)]
    return MulaOutput(pose, parsing)


def targets(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    heatmaps = torch.rand(B, J1, S, S, generator=g)
    labels = torch.randint(0, P, (B, SIZE, SIZE), generator=g, dtype=torch.uint8)
    labels[:, :4] = 255  # an ignored band
    return heatmaps, labels


def test_parsing_term_is_the_authors_upsample_log_softmax_nll() -> None:
    out = fake_output(1)
    heatmaps, labels = targets()
    logits = out.parsing[0]
    upsampled = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    expected = F.nll_loss(F.log_softmax(upsampled, dim=1), labels.long(), ignore_index=255)
    torch.testing.assert_close(parsing_cross_entropy(logits, labels), expected)
    # Pose: mean over every map and pixel, the background map included.
    torch.testing.assert_close(pose_mse(out.pose[0], heatmaps), ((out.pose[0] - heatmaps) ** 2).mean())


def test_total_is_the_sum_over_stages_of_mse_plus_beta_ce_and_parts_stay_tensors() -> None:
    out = fake_output(3)
    heatmaps, labels = targets()
    total, parts = mula_loss(out, heatmaps, labels)
    assert set(parts) == {f"s{t}/{task}" for t in (1, 2, 3) for task in ("pose", "parsing")}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in parts.values())
    expected = sum(parts[f"s{t}/pose"] + 0.01 * parts[f"s{t}/parsing"] for t in (1, 2, 3))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None for p in out.pose + out.parsing)


def test_beta_and_stage_weights() -> None:
    out = fake_output(2)
    heatmaps, labels = targets()
    total, parts = mula_loss(out, heatmaps, labels, beta=0.5, stage_weights=[0.0, 2.0])
    torch.testing.assert_close(total, 2.0 * (parts["s2/pose"] + 0.5 * parts["s2/parsing"]))
    with pytest.raises(ValueError, match="stage weights"):
        mula_loss(out, heatmaps, labels, stage_weights=[1.0])


def test_ignored_pixels_do_not_count_and_an_all_ignored_batch_gives_zero() -> None:
    out = fake_output(1)
    _, labels = targets()
    logits = out.parsing[0].detach()
    upsampled = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    per_pixel = F.cross_entropy(upsampled, labels.long().clamp(max=P - 1), reduction="none")
    labelled = labels != 255
    torch.testing.assert_close(parsing_cross_entropy(logits, labels), per_pixel[labelled].mean())
    loss = parsing_cross_entropy(logits, torch.full_like(labels, 255))
    assert torch.isfinite(loss) and loss == 0


def test_the_ignore_label_is_the_datasets() -> None:
    out = fake_output(2)
    heatmaps, labels = targets()
    other = labels.clone()
    other[labels == 255] = 250  # a manifest whose ignore label is 250
    want, _ = mula_loss(out, heatmaps, labels)
    got, parts = mula_loss(out, heatmaps, other, ignore_index=250)
    torch.testing.assert_close(got, want)
    assert torch.isfinite(parts["s1/parsing"])


def lovasz_by_definition(probs: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> float:
    """Berman et al.'s Lovasz-softmax written out: for each present class, sort the errors, and weigh
    the i-th by how much the Jaccard loss |M| / |truth or M| grows when its pixel joins M."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).tolist()
    y = labels.reshape(-1).tolist()
    kept = [(row, c) for row, c in zip(p, y) if c != ignore]
    losses = []
    for cls in range(probs.shape[1]):
        truth = [c == cls for _, c in kept]
        if not any(truth):
            continue
        errors = [abs(float(t) - row[cls]) for (row, _), t in zip(kept, truth)]
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        total, previous, loss, chosen = sum(truth), 0.0, 0.0, []
        for i in order:
            chosen.append(i)
            missed = sum(1 for k in chosen if truth[k])
            jaccard = len(chosen) / (total + len(chosen) - missed)
            loss += errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(loss)
    return sum(losses) / len(losses)


def test_lovasz_softmax_matches_its_definition_and_skips_ignored_pixels() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, P, 6, 6, generator=g)
    labels = torch.randint(0, P - 1, (2, 6, 6), generator=g)  # the last class is absent: it must not count
    labels[0, :2] = 255
    got = lovasz_softmax(logits, labels)
    assert got.item() == pytest.approx(lovasz_by_definition(logits.softmax(1), labels), rel=1e-5)
    changed = logits.clone()
    changed[0, :, :2] += 5 * torch.randn(P, 2, 6, generator=g)  # only ignored pixels change
    assert lovasz_softmax(changed, labels).item() == pytest.approx(got.item(), rel=1e-6)


def test_lovasz_softmax_reads_labels_where_upsampling_puts_the_logits() -> None:
    """Labels made by upsampling confident logits (align_corners=True) to 29x29 cost nothing at 8x8:
    every logit sits exactly on a label pixel (28 / 7 = 4), but not at the cell centres."""
    g = torch.Generator().manual_seed(4)
    logits = 40.0 * F.one_hot(torch.randint(0, P, (1, 8, 8), generator=g), P).permute(0, 3, 1, 2)
    labels = upsample_logits(logits, (29, 29)).argmax(1)
    assert lovasz_softmax(logits, labels).item() < 1e-6
    assert lovasz_softmax(logits, labels.flip(-1)).item() > 0.1


def test_lovasz_weight_adds_to_the_parsing_part() -> None:
    out, (heatmaps, labels) = fake_output(2), targets()
    plain, parts = mula_loss(out, heatmaps, labels, beta=0.5)
    total, mixed = mula_loss(out, heatmaps, labels, beta=0.5, lovasz_weight=2.0)
    for t, parsing in enumerate(out.parsing, start=1):
        torch.testing.assert_close(mixed[f"s{t}/parsing"], parts[f"s{t}/parsing"] + 2.0 * lovasz_softmax(parsing, labels))
    torch.testing.assert_close(total, plain + 0.5 * sum(mixed[f"s{t}/parsing"] - parts[f"s{t}/parsing"] for t in (1, 2)))
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in out.parsing)
