"""Benchmark the per-sample depthwise convolution on a CUDA GPU: the script form of ``mula benchmark dynconv``.

Triton vs the grouped convolution (NCHW and channels_last) over B in {8, 16, 32}, C in {256, 512},
H=W in {32, 64}, h in {3, 7}, fp32 and bf16: forward, backward and forward+backward, each against
max(byte floor, FMA floor) from the card's measured copy bandwidth and fp32 FMA rate; a sweep of tile
shapes for B=16, C=256, 64x64, 7x7; the compiler's register/spill report; the hg-5s training step
with each implementation. The code is :mod:`mula_cli.bench.dynconv`; this script only saves the
result in the repository, ``benchmarks/results/dynconv_<card>.json`` (or ``--out``).

    python benchmarks/dynconv_cuda.py [--quick] [--sweep | --no-sweep] [--no-train] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mula_cli.bench import dynconv
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only B=16, C=256, 64x64; fewer repeats")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the tile sweep")
    parser.add_argument("--sweep", dest="sweep", action="store_true", help="time the tile sweep (default: not with --quick)")
    parser.set_defaults(sweep=None)
    parser.add_argument("--no-train", dest="train", action="store_false", help="skip the hg-5s training step")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/results/dynconv_<card>.json)"
    )
    args = parser.parse_args()

    def target(report: dict) -> Path:
        return args.out or RESULTS / f"dynconv_{dynconv.card_name(report)}.json"

    try:
        report = dynconv.run(
            quick=args.quick,
            sweep=not args.quick if args.sweep is None else args.sweep,
            train=args.train,
            save=lambda report: write_json(target(report), report, indent=1),
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except MulaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dynconv.print_summary(report)
    print(f"wrote {target(report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
