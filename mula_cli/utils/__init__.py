"""Cross-cutting utilities every layer may use: errors a user can cause, atomic file writes, ``MULA_HOME``,
the consoles and progress bars, the device option, signal handling, and the dataset manifests.

- ``errors``: MulaError (one line, exit code 2); ``files``: atomic writes, JSON, new output folders;
- ``paths``: MULA_HOME; ``console`` / ``progress``: Rich output and progress bars;
- ``devices``: ``--device``, autocast and device facts; ``interrupts``: stopping on a signal without losing work;
- ``manifests``: the loader of ``data_manifests/``, the one home of every dataset fact.

May import: nothing else in mula_cli (the bottom layer).
"""
