"""The Typer subcommands; ``mula_cli.cli`` assembles them into the ``mula`` application.

May import: every package (the top layer).
"""
