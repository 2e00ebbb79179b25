"""How many processes a build may use, and a function run in a forked child beside the build.

The build of 10,000 entries is CPU-bound and single-threaded; the machine it targets has two cores.
Work that a second process can do without changing the output (drawing the results charts, rendering
pages' Markdown in mkdocs: :mod:`tools.site.page_workers`) goes to a child made by ``fork``, which
starts with the parent's state as it is, so nothing is re-read or re-imported. One core, or
``ATLAS_SITE_WORKERS=1``, keeps every build serial; so does a process that runs threads (``serve``:
a child forked from it could inherit a lock another thread holds).
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WORKERS_VARIABLE", "Forked", "worker_count"]

WORKERS_VARIABLE = "ATLAS_SITE_WORKERS"


def worker_count() -> int:
    """Processes a build may use: 2 where this process may run on two cores or more, else 1
    (``ATLAS_SITE_WORKERS=1`` asks for 1; so does a process running other threads)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    serial = os.environ.get(WORKERS_VARIABLE, "").strip() == "1" or threading.active_count() > 1
    return 1 if cores < 2 or serial or not hasattr(os, "fork") else 2


class Forked:
    """``function()`` run in a forked child: :meth:`result` waits for it and returns its value
    (pickled through a temporary file), or None when the child failed or could not start; the
    caller then does the work itself. The child writes nothing else and leaves by ``os._exit``."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.cpu_s = 0.0  # the child's CPU seconds, once it has finished
        self._file = tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            self._pid: int | None = os.fork()
        except OSError:
            self._pid = None
            return
        if self._pid == 0:
            started = time.process_time()
            try:
                value = function()
                pickle.dump((value, time.process_time() - started), self._file, protocol=pickle.HIGHEST_PROTOCOL)
                self._file.flush()
            finally:
                os._exit(0)

    def result(self) -> Any:
        if self._pid is None:
            return None
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        try:
            self._file.seek(0)
            value, self.cpu_s = pickle.load(self._file) if status == 0 else (None, 0.0)
        except Exception:  # noqa: BLE001 (a child that died half-way: the caller does the work)
            value = None
        finally:
            self._file.close()
        return value
