"""mula: train, evaluate, run and export MuLA (Nie, Feng and Yan, ECCV 2018).

The Python API is :class:`Predictor` (imported on first use, so the CLI starts without torch).
"""

from mula_cli.utils.version import __version__

__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):
        from mula_cli.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'mula_cli' has no attribute {name!r}")
