"""Pictures of a run's numbers: ``results.png`` of training, the evaluation plots and ``report.html``.

Matplotlib is an optional extra (``pip install 'mula[plots]'``) and is imported only inside the
functions that draw, so the CLI starts fast and runs without it. Nothing here may fail a run:
commands call the drawing through :class:`mula_cli.plots.figures.Plotter`, which turns any error
into one warning line.

May import: inference, data, model, ops, codecs, transforms, io, utils.
"""
