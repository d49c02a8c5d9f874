"""The measurements behind ``mula benchmark``, shipped with the package (a wheel has them too).

- :mod:`mula_cli.bench.predict`: prediction per picture end to end, the fast path against the plain
  eager model (``mula benchmark predict``), and which dynamic convolution really ran;
- :mod:`mula_cli.bench.dynconv`: the per-sample depthwise convolution (Triton against the grouped
  convolution) set against the card's floors (``mula benchmark dynconv``, ``benchmarks/dynconv_cuda.py``);
- :mod:`mula_cli.bench.dynconv_step`: a whole model's training step with each implementation;
- :mod:`mula_cli.bench.fma`: the card's fp32 FMA rate, measured with a Triton kernel.

What they may import: torch, NumPy and mula_cli's library modules; Triton only inside the functions that
run on a GPU (so that importing them works without it). Never the repository's ``benchmarks/`` scripts
(a library command must not depend on files outside the package), nor ``mula_cli.commands`` (the
commands import these modules, not the reverse). Within the package, ``dynconv`` uses ``dynconv_step``
and ``fma``; neither imports ``dynconv`` back.

May import: deploy, inference, data, model, ops, codecs, transforms, io, utils.
"""
