"""The authors' test-time processing, step for step (``--protocol authors``), and their scoring rules.

Step 1 is :mod:`mula_cli.transforms.authors_views` (the data layer builds these windows), steps 2 and 3
are :mod:`mula_cli.inference.authors_predict`; this module holds step 4 and the option rules.

``NieXC/pytorch-mula`` tests LIP pictures with OpenCV and NumPy (``utils/eval_util.py``); their
numbers come out of these steps, which differ from ``mula``'s default protocol
(:mod:`mula_cli.inference.batch`) in small ways that each move PCKh or mIoU a little. ``docs/fidelity.md``
lists every difference and its measured effect. Per picture (H x W, long edge L, window S):

1. Placement: ``base = 1 / (L / S)``; for each test scale s the picture is resized by
   ``f = base * s`` (bicubic, OpenCV's: Keys a = -0.75, no anti-aliasing, size ``round(W f)``),
   the window centre is ``int(W / 2 * f)``, ``int(H / 2 * f)`` and the S x S window is cut
   around it with grey 128 padding. Their crop stops one pixel short of the resized picture's
   last row and column (``min(end, size - 1)`` as an exclusive bound), so those stay grey.
2. Pose: final-stage heatmaps of the window and of its mirror (channels swapped back) resized to
   S (bilinear) and averaged; per scale the part of the window that holds the picture is cut out,
   resized by ``1 / s`` and added into an S x S canvas of zeros at ``int((S - size) / 2)``; the
   sum is divided by the number of scales (scale 1 must be among them). Gaussian blur (sigma 3),
   argmax, and ``(argmax - store_start + crop_start) / base`` with scale 1's window (no
   half-pixel terms). Their CSV holds ``int()`` of that, which is what their PCKh scores.
3. Parsing: scale 1, one pass, no flip: argmax of the logits upsampled to S, pasted into a zero
   (background) map of the resized picture's size, resized to H x W with OpenCV's nearest
   neighbour (``src = floor(dst * src_size / dst_size)``).
4. Scoring: their PCKh reads the predictions back from that CSV (``utils/calc_pckh.py``,
   ``read_data``), which turns the text ``nan`` into -1 and then every negative coordinate into 1,
   x and y each on its own (:func:`as_their_reader_reads`). Their step 2 writes a negative
   coordinate whenever the argmax lies left of or above the picture, e.g. a joint whose fused
   heatmap is <= 0 over the whole picture (the first maximum is then the canvas' zero corner).

Their code reads, resizes and flips with OpenCV. With OpenCV installed (the ``authors`` extra,
``opencv-python-headless``) every one of those calls is OpenCV's own, with the arguments theirs
pass, so the numbers are theirs to the last grey level. Without it the steps are emulated
(:data:`EMULATION_NOTE` says in what they can differ): stock OpenCV wheels resize uint8 pictures
bicubically with Intel IPP, whose rounding no portable code reproduces.
"""

from __future__ import annotations

import numpy as np

from mula_cli.transforms.authors_views import check_scales
from mula_cli.utils.errors import MulaError

EMULATION_NOTE = ("OpenCV is not installed, so --protocol authors emulates it: pictures decoded by Pillow, "
                  "bicubic resizing without Intel IPP (stock OpenCV uses IPP, whose results differ by one grey "
                  "level on a few % of pixels, which can move a joint or a label). For the authors' numbers "
                  "exactly: pip install 'mula[authors]'")


def as_their_reader_reads(joints: np.ndarray) -> np.ndarray:
    """Predicted (..., 2) joints as their PCKh script scores them: each NaN or negative coordinate
    becomes 1, x and y separately (a copy, float64).

    ``utils/calc_pckh.py``, ``read_data``: the text ``nan`` is read as -1 and, for predictions (no
    visibility column), ``data[data<0] = 1`` on the (images, joints, 2) array. So (-37, 0) is scored
    as (1, 0), and a missing joint as (1, 1), which is a hit where the ground truth lies near the
    picture's corner. Ground truth is not touched by this rule (their reader keeps its -1).
    """
    out = np.array(joints, dtype=np.float64, copy=True)
    out[~(out >= 0)] = 1.0  # negative (-0.0 is not) and NaN
    return out


def check_options(pose_flip: bool, parsing_flip: bool, scales: tuple[float, ...]) -> None:
    """The authors' protocol has fixed flips (pose always flip-averaged, parsing never) and needs scale 1."""
    if not pose_flip or parsing_flip:
        raise MulaError("--protocol authors always flip-averages pose and never parsing; drop --flip / "
                        "--no-pose-flip (or use the default protocol)")
    check_scales(scales)

