"""Scoring: the runner shared by ``mula evaluate`` and training-time validation, and every metric.

- ``runner``: a model scored on a cache split; ``metrics``: PCKh and the parsing scores (LIP's);
- ``multi_person_metrics``: the MPII multi-person mAP;
- ``authors_protocol``: the authors' protocol described end to end, and their scoring rules.

May import: plots, inference, data, model, ops, codecs, transforms, io, utils.
"""
