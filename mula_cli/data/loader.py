"""The DataLoader every command uses: its worker processes leave stopping to the main process.

A scheduler's SIGTERM and a terminal's Ctrl-C reach the workers too; a worker killed by one makes the
main process fail inside its step (``DataLoader worker ... killed by signal``) instead of saving and
telling how to resume. See :mod:`mula_cli.utils.interrupts`.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from mula_cli.utils.interrupts import deferring_stop_signals, starting_workers, worker_init


class WorkerLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` whose workers ignore SIGINT and SIGTERM from their start,
    under every start method (``fork``, ``spawn``, ``forkserver``).

    Takes DataLoader's arguments; ``worker_init_fn`` may not be given (it is this class's).
    """

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        if "worker_init_fn" in kwargs:
            raise TypeError("WorkerLoader sets worker_init_fn itself")
        super().__init__(dataset, worker_init_fn=worker_init(), **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with starting_workers():  # the workers start ignoring the signals, before ignore_stop_signals runs
            batches = super().__iter__()
        return _HandedOver(batches)


class _HandedOver:
    """The batches of a loader's iterator, each received whole: a stop signal that arrives while a
    batch is handed over from a worker takes effect right after it (:func:`deferring_stop_signals`)."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __iter__(self) -> _HandedOver:
        return self

    def __next__(self) -> Any:
        with deferring_stop_signals():
            return next(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
