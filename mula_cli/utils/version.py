"""The package version: one home, read by setup.cfg, the CLI, weights files, caches and run folders."""

__version__ = "0.1.0"
