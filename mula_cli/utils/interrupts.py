"""Stopping on a signal without losing work, however the signal arrives.

A scheduler stops a job by signalling every process of it at once (SLURM's ``scancel`` and time limit,
``kill -- -PGID``, ``docker stop``, ``systemd``), and a terminal's Ctrl-C reaches the whole foreground
process group. So the rules here are:

* Worker processes (DataLoader workers, process pools) ignore SIGINT and SIGTERM: the main process
  decides how to stop and shuts its workers down itself. A worker that died of the signal would take
  the main process's batch, and its save, with it.
* A worker must ignore them from its first instruction, not only from its initializer on: a job's
  signal often arrives while the next epoch's workers start. A child inherits ignored signals through
  ``fork`` and ``exec`` alike (and Python then leaves SIGINT ignored), so :func:`starting_workers`
  ignores the two in this process while ``spawn`` or ``forkserver`` start their processes (for
  ``forkserver``: the server, which then forks every later worker ignoring them). Those milliseconds are
  the one moment where a signal can be missed. ``fork`` needs no such moment: a forked child runs the
  parent's Python handlers, and ours do nothing in a process other than the one that installed them.
* In the main process SIGTERM means what Ctrl-C means (:func:`raising_on_stop_signals`); the exception
  says which signal it was, so that the command exits with 128 + its number, as a shell reports it.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM in the main process; ``signum`` says which (the exit code is 128 + it)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


# The stop signal mula's handler last raised for. Signals are the process's, not an object's: a library
# that catches the Interrupted and raises a plain KeyboardInterrupt instead would otherwise turn a
# SIGTERM during start-up into Ctrl-C's exit code (seen once: `mula predict` on a video exited 130).
_last_stop_signal: list[int] = []


def signal_number(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGINT unless it is an :class:`Interrupted` saying otherwise."""
    return getattr(exc, "signum", int(signal.SIGINT))


def ignore_stop_signals(owner: int | None = None, *_: object) -> None:
    """Make this worker process ignore SIGINT, and SIGTERM unless ``owner`` (the pid of the process that
    started the worker) sends it.

    The owner sends SIGTERM only to shut its own workers down (``Process.terminate``: a DataLoader or a
    pool ending, the interpreter's exit); a worker deaf to that would leave its owner waiting forever.
    The sender is told apart by a thread that takes SIGTERM with ``sigwaitinfo`` (Linux); where that is
    missing (macOS), SIGTERM keeps its default and only SIGINT is ignored.

    A DataLoader ``worker_init_fn`` (``functools.partial(ignore_stop_signals, os.getpid())``, then
    called with the worker id) and a process pool ``initializer`` (``initargs=(os.getpid(),)``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if owner is None or not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN if owner is None else signal.SIG_DFL)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # pending while blocked, for the thread below to take
    threading.Thread(target=_end_on_owners_sigterm, args=(owner,), name="mula-sigterm", daemon=True).start()


def _end_on_owners_sigterm(owner: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == owner:
            os._exit(0)  # the owner's shut-down: nothing of this worker's needs saving


def worker_init(owner: int | None = None):
    """The ``worker_init_fn`` for workers of this process (picklable for ``spawn``)."""
    return functools.partial(ignore_stop_signals, os.getpid() if owner is None else owner)


@contextmanager
def starting_workers() -> Iterator[None]:
    """Start worker processes inside this block (see the module text): under ``spawn`` and ``forkserver``
    SIGINT and SIGTERM are ignored by this process meanwhile, so that the children start ignoring them.

    Outside the main thread (where handlers cannot be changed) and under ``fork`` nothing changes.
    """
    if threading.current_thread() is not threading.main_thread() or multiprocessing.get_start_method() == "fork":
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def this_process_only(handler: Callable[[int, FrameType | None], None]) -> Callable[[int, FrameType | None], None]:
    """``handler`` in the process that installs it; nothing in a forked child (a worker), which inherits it."""
    owner = os.getpid()

    def handle(signum: int, frame: FrameType | None) -> None:
        if os.getpid() == owner:
            handler(signum, frame)

    return handle


@contextmanager
def raising_on_stop_signals() -> Iterator[None]:
    """In the main thread: SIGINT and SIGTERM raise :class:`Interrupted` (a KeyboardInterrupt) there.

    Elsewhere (a command run from a thread) the handlers stay as they are. The previous handlers are
    restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        _last_stop_signal[:] = [int(signum)]
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, this_process_only(handle)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def exiting_on_stop_signals() -> Iterator[None]:
    """While the program starts: SIGINT or SIGTERM exits at once with 128 + the signal, printing nothing
    (nothing has begun that could be lost)."""
    try:
        with raising_on_stop_signals():
            yield
    except KeyboardInterrupt as exc:  # ours, or a plain one a library made of ours on its way up
        signum = exc.signum if isinstance(exc, Interrupted) else \
            (_last_stop_signal[-1] if _last_stop_signal else int(signal.SIGINT))
        raise SystemExit(128 + signum) from None


@contextmanager
def deferring_stop_signals() -> Iterator[None]:
    """In the main thread: a SIGINT or SIGTERM arriving inside the block takes effect when it ends (the
    handler in place then runs); a second one inside the block takes effect at once.

    For handing a batch over from a DataLoader worker: a stop raised in the middle of it leaves the
    worker's file-descriptor server with a connection cut short, which it reports with a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def hold(signum: int, frame: FrameType | None) -> None:
        if pending:  # asked twice: do not wait for the block to end
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            else:
                raise Interrupted(signum)
        pending.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, this_process_only(hold))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])  # now to the handler in place
