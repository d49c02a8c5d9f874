"""Dataset manifests (JSON), installed as package data ``mula_cli.data_manifests``."""
