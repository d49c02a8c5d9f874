"""The MuLA model family: building blocks, encoders, adaptation, presets, loss and weights files.

Modules: ``config`` (MulaConfig), ``blocks`` / ``hourglass`` / ``vgg`` (encoders), ``adaptation``
(parameter adapter, dynamic residual, ablation fusions), ``mula`` (the multi-stage model,
MulaOutput, MultiPersonOutput), ``presets`` (PRESETS, build_model), ``loss`` (mula_loss), ``weights`` (save_weights,
load_weights), ``official`` (import of the authors' checkpoints), ``hub`` (weights known by name,
``mula weights get``), ``summary`` (size and FLOPs).
Nothing is imported here, so ``mula_cli.model.config`` stays cheap to import.

May import: ops, utils.
"""
