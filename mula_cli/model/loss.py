"""Per-stage supervision of both tasks, weighted as the authors' training script does.

Every stage t contributes ``w_t * (MSE(pose_t, heatmaps) + beta * CE(parsing_t, labels))``:

- pose: mean squared error over all J+1 maps (the background map included), at stride s;
- parsing: cross-entropy of the logits upsampled (bilinear, ``align_corners=True``) to the label
  size, pixels labelled ``ignore_index`` (the manifest's ``ignore_label``; 255 for LIP) left out.
  This is the same math as the authors' upsample + log-softmax + NLL.

``lovasz_weight`` (default 0, the paper's recipe) adds a Lovasz-softmax term (Berman et al., CVPR 2018,
as in SCHP's parsing recipe) to the parsing term: a convex surrogate of each class's Jaccard loss,
averaged over the classes present in the batch, so a class few pixels hold weighs as much as the
background, which is what mIoU counts. It is computed on the logits' own grid (the labels sampled
where ``align_corners=True`` upsampling puts each logit), 16x fewer pixels to sort at stride 4.

The default ``beta = 0.01`` is the authors' weighting (MSE + 0.01 x NLL). Note that our ``beta``
multiplies the *parsing* term, while the paper's beta (L_S + beta * L_J, beta = 100 in its
notation) multiplies the *pose* term; the two agree up to an overall scale of 100.

With the partition branch (multi-person) every stage also adds ``offset_weight * smoothL1(offsets_t)``:
smooth L1 (beta 1) over the target cells of each joint's offset pair, averaged over those cells
(Pose Partition Networks' regression loss; see mula_cli.codecs.partition for the targets).

No ``.item()`` anywhere: the parts stay tensors so a training step needs no host sync.

With ``torch.use_deterministic_algorithms(True)`` (``mula train --deterministic``) three operations that
have no deterministic CUDA kernel are replaced by equivalents that have one: the logits' upsampling
(matrix products, :mod:`mula_cli.ops.resample`) and the cross-entropy (log-softmax and gather instead
of NLL's atomics), both equal to float rounding, and the Lovasz cumulative sums (on integers: exact).
Otherwise nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mula_cli.model.mula import ModelOutput
from mula_cli.ops.resample import upsample_bilinear_aligned

AUTHORS_BETA = 0.01
IGNORE_INDEX = 255


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Parsing logits at stride s to ``size`` (H, W), bilinear with ``align_corners=True`` (see
    :func:`mula_cli.ops.resample.upsample_bilinear_aligned` for the deterministic form)."""
    return upsample_bilinear_aligned(logits, size=size)


def parsing_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the labelled pixels of ``target`` (B, H, W); 0 when none is labelled.

    With deterministic algorithms on, the sum is :func:`labelled_cross_entropy_sum` (CUDA's NLL loss
    accumulates with atomics and has no deterministic kernel); otherwise ``F.cross_entropy``.
    """
    target = target.long()
    upsampled = upsample_logits(logits.float(), (target.shape[-2], target.shape[-1]))
    if torch.are_deterministic_algorithms_enabled():
        total = labelled_cross_entropy_sum(upsampled, target, ignore_index)
    else:
        total = F.cross_entropy(upsampled, target, ignore_index=ignore_index, reduction="sum")
    # Divide by the labelled count without a host sync; clamping avoids 0/0 on an all-ignored batch.
    labelled = (target != ignore_index).sum().clamp_min(1)
    return total / labelled


def labelled_cross_entropy_sum(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")`` of (B, C, H, W)
    logits as log-softmax and gather, whose CUDA backward is deterministic when asked to be."""
    labelled = target != ignore_index
    picked = logits.log_softmax(dim=1).gather(1, torch.where(labelled, target, 0).unsqueeze(1)).squeeze(1)
    # where, not a product: an ignored pixel's picked value may be -inf, and -inf * 0 is NaN
    return -torch.where(labelled, picked, 0.0).sum()


def _cumsum(x: Tensor, dim: int) -> Tensor:
    """``x.cumsum(dim)`` of a 0/1 float tensor; summed as integers (exact) with deterministic algorithms
    on, as CUDA's floating-point cumsum has no deterministic kernel."""
    if torch.are_deterministic_algorithms_enabled():
        return x.to(torch.int32).cumsum(dim=dim).to(x.dtype)
    return x.cumsum(dim=dim)


def lovasz_softmax(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Lovasz-softmax loss of (B, C, h, w) logits against (B, H, W) labels, on the logits' grid.

    Mean over the classes present (in the sampled labels) of the Lovasz extension of 1 - IoU
    applied to each pixel's error |1[class] - p(class)|; ignored pixels have zero error and no
    class, so they change nothing. No boolean indexing, so no host sync.
    """
    return _lovasz(logits, *_lovasz_truth(target, logits.shape, ignore_index))


def _lovasz_truth(target: Tensor, logits_shape: torch.Size, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(C, N) one-hot truth and (1, N) labelled mask of ``target`` read on a (B, C, h, w) logits grid."""
    _, classes, h, w = logits_shape
    rows = torch.linspace(0, target.shape[-2] - 1, h, device=target.device).round().long()
    cols = torch.linspace(0, target.shape[-1] - 1, w, device=target.device).round().long()
    labels = target[:, rows][:, :, cols].long()  # where align_corners=True upsampling puts each logit
    valid = labels != ignore_index
    truth = F.one_hot(torch.where(valid, labels, 0), classes).float() * valid[..., None]
    return truth.reshape(-1, classes).T, valid.reshape(1, -1)


def _lovasz(logits: Tensor, truth: Tensor, valid: Tensor) -> Tensor:
    """The loss of :func:`lovasz_softmax` against targets from :func:`_lovasz_truth`."""
    probs = logits.float().softmax(dim=1)
    probs = probs.permute(1, 0, 2, 3).reshape(probs.shape[1], -1)  # (C, N) in the truth's pixel order
    errors, order = torch.sort((truth - probs).abs() * valid, dim=1, descending=True)
    truth = truth.gather(1, order)
    # Gradient of the Lovasz extension: the Jaccard loss after each pixel in error order, differenced.
    total = truth.sum(dim=1, keepdim=True)
    jaccard = 1.0 - (total - _cumsum(truth, 1)) / (total + _cumsum(1.0 - truth, 1)).clamp_min(1e-6)
    increments = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    per_class = (errors * increments).sum(dim=1)
    present = (total.squeeze(1) > 0).float()
    return (per_class * present).sum() / present.sum().clamp_min(1.0)


def pose_mse(heatmaps: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every pixel of every map (J joints plus the background map)."""
    return F.mse_loss(heatmaps.float(), target.to(torch.float32))


def offset_smooth_l1(offsets: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Smooth L1 of (B, 2J, H, W) offsets over the cells where ``mask`` (B, J, H, W) is 1, per masked cell
    and coordinate; 0 when no cell has a target."""
    weight = mask.to(torch.float32).repeat_interleave(2, dim=1)  # channel 2j and 2j+1 share joint j's mask
    error = F.smooth_l1_loss(offsets.float(), target.to(torch.float32), reduction="none", beta=1.0)
    return (error * weight).sum() / weight.sum().clamp_min(1.0)


def mula_loss(
    out: ModelOutput,
    heatmaps: Tensor,
    parsing_target: Tensor,
    *,
    beta: float = AUTHORS_BETA,
    stage_weights: Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
    offsets: Tensor | None = None,
    offset_mask: Tensor | None = None,
    offset_weight: float = 1.0,
    lovasz_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss over all stages and its unweighted parts.

    Args:
        out: the model's output (one pose and one parsing tensor per stage).
        heatmaps: pose targets (B, J+1, H/s, W/s).
        parsing_target: class ids (B, H, W), ``ignore_index`` = ignore.
        beta: weight of the parsing term (the authors': 0.01).
        stage_weights: one weight per stage (default 1 each).
        ignore_index: the dataset manifest's ``ignore_label`` (default: LIP's, 255).
        offsets: partition-branch targets (B, 2J, H/s, W/s); needed when ``out`` has offsets.
        offset_mask: (B, J, H/s, W/s), 1 where ``offsets`` holds a target.
        offset_weight: weight of the offset term.
        lovasz_weight: weight of the Lovasz-softmax term within the parsing term (0: cross-entropy only).

    Returns:
        ``(total, parts)`` with parts ``"s1/pose"``, ``"s1/parsing"`` (cross-entropy plus
        ``lovasz_weight`` x Lovasz), ``"s1/offsets"`` (with the partition branch), ... before beta,
        the offset weight and the stage weights.
    """
    stages = len(out.pose)
    if stage_weights is None:
        stage_weights = [1.0] * stages
    if len(stage_weights) != stages:
        raise ValueError(f"{len(stage_weights)} stage weights for {stages} stages")
    if out.offsets and (offsets is None or offset_mask is None):
        raise ValueError("the model predicts partition offsets: pass their targets (offsets, offset_mask)")
    parts: dict[str, Tensor] = {}
    total = heatmaps.new_zeros((), dtype=torch.float32)
    # every stage's logits share one grid: the labels are read on it once
    lovasz_target = _lovasz_truth(parsing_target, out.parsing[0].shape, ignore_index) if lovasz_weight else None
    for t, (pose, parsing, weight) in enumerate(zip(out.pose, out.parsing, stage_weights), start=1):
        pose_loss = pose_mse(pose, heatmaps)
        parsing_loss = parsing_cross_entropy(parsing, parsing_target, ignore_index)
        if lovasz_target is not None:
            parsing_loss = parsing_loss + lovasz_weight * _lovasz(parsing, *lovasz_target)
        parts[f"s{t}/pose"] = pose_loss
        parts[f"s{t}/parsing"] = parsing_loss
        total = total + weight * (pose_loss + beta * parsing_loss)
        if out.offsets:
            offset_loss = offset_smooth_l1(out.offsets[t - 1], offsets, offset_mask)
            parts[f"s{t}/offsets"] = offset_loss
            total = total + weight * offset_weight * offset_loss
    return total, parts
