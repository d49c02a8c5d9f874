"""Deployable models: ``mula export`` writes files that run without mula's training code, verified
against the model they came from (they are run back through :mod:`mula_cli.inference.runtime`).

May import: inference, model, ops, codecs, transforms, io, utils.
"""
