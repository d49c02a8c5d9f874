"""`mula train` whose loss turns non-finite on rank 1 only, at its second step (torchrun runs this in
tests/test_train.py: both ranks must stop with the one-line message instead of one waiting forever)."""

import os
import sys

from mula_cli.cli import main
from mula_cli.train import engine

real_step = engine._step
steps = 0


def step(*args, **kwargs):
    global steps
    loss, parts = real_step(*args, **kwargs)
    steps += 1
    if os.environ["RANK"] == "1" and steps == 2:
        loss = loss * float("nan")
    return loss, parts


engine._step = step
main(sys.argv[1:])
