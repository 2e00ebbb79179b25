"""Ctrl-C handling for the steps that must not be cut in half (swaps) or that run a kernel."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["deferred_interrupt", "interrupt_flag"]


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is done, then raise it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def interrupt_flag() -> Iterator[list[int]]:
    """Record Ctrl-C while a kernel runs: the kernel gets it too and may die first, so the error
    nbclient raises then (DeadKernelError, ...) is really the interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    received: list[int] = []
    default = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, default)
