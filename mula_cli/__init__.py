"""mula: train, evaluate, run and export MuLA (Nie, Feng and Yan, ECCV 2018)."""

__version__ = "0.1.0"
