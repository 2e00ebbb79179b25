"""Half of a ``mkdocs build``'s Markdown rendering in a second process.

mkdocs reads and renders every page in one loop (``_populate_page``), then writes them; rendering
the Markdown is about a third of a 10,000-entry build and nothing in it needs the pages before.
Inside :func:`page_workers`, the first page of a clean ``build`` forks one worker that takes the
pages of that loop from the last one back, while the parent renders from the first one on, until
they meet (so each does the share its core allows). For each page the worker reads it and runs the
plugins' ``on_pre_page`` and ``on_page_markdown`` on its own copy of the build (the state the parent
had at the fork), then renders it and records what ``Page.render`` sets: the HTML, the table of contents, the title, the
anchors the page holds and the links it makes to other pages' anchors, and the anchors it
registered with autorefs. The parent still runs its whole loop in order, every plugin hook included;
when it reaches a worker's page it takes that result instead of rendering, and replays the autorefs
registrations there, so the plugins see what a serial build shows them.

The parent renders the page itself (as a serial build does) whenever the worker could differ: the
Markdown the worker rendered is not the one the parent's hooks produced (compared by digest), the
render logged anything (a warning must be counted by the parent's ``--strict``) or registered an
anchor for another page, the page has a mkdocstrings block (``:::``: its handler keeps state), or
the worker stopped. ``serve`` (threads, dirty builds) and one-core machines stay serial, and so does
``ATLAS_SITE_WORKERS=1`` (:mod:`tools.site.forked`). The built site is byte-identical (tests/tools/test_page_workers.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from .forked import worker_count

__all__ = ["LAST_BUILD", "REPORT_VARIABLE", "page_workers", "write_report"]

REPORT_VARIABLE = "ATLAS_SITE_REPORT"  # a JSON file for bench-site: LAST_BUILD and this process's CPU seconds
_log = logging.getLogger("mkdocs.tools.page_workers")
# What the last build inside page_workers did: processes, pages, pages the worker rendered, its CPU seconds.
LAST_BUILD: dict[str, float] = {}


def write_report() -> None:
    """Write :data:`LAST_BUILD` with this process's CPU seconds to the file ``ATLAS_SITE_REPORT``
    names, if any (the worker's CPU is not this process's: the build's critical path is the larger)."""
    path = os.environ.get(REPORT_VARIABLE)
    if path:
        with open(path, "w", encoding="utf-8") as report:
            json.dump({**LAST_BUILD, "main_cpu_s": round(time.process_time(), 2)}, report)


def _digest(markdown: str) -> bytes:
    return hashlib.blake2b(markdown.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _autorefs(config: Any) -> tuple[str, Any] | None:
    """The autorefs plugin of the build (name, instance), which pages register anchors with."""
    for name, plugin in config.plugins.items():
        if type(plugin).__name__ == "AutorefsPlugin" and hasattr(plugin, "register_anchor"):
            return name, plugin
    return None


class _Worker:
    """The parent's side. Pages are claimed under a lock: the parent from the first page on, as its
    loop renders them; the worker from the last page back. They meet where each has done its share,
    whatever share of the cores each got; then the parent waits for the worker's last page and reads
    its results."""

    def __init__(self, pid: int, results: BinaryIO, index: dict[str, int], bounds: Any, lock: Any) -> None:
        self.pid, self.results_file, self.index, self.bounds, self.lock = pid, results, index, bounds, lock
        self.results: dict[str, tuple] | None = None  # read once the worker has finished
        self.running = True
        self.rendered, self.cpu_s = 0, 0.0  # pages the parent took from the worker; the worker's CPU seconds

    def claim(self, uri: str) -> bool:
        """True when the parent renders page ``uri``; False when the worker has taken it."""
        at = self.index.get(uri)
        if at is None:
            return True
        with self.lock:
            if at < self.bounds[1]:
                self.bounds[0] = max(self.bounds[0], at + 1)
                return True
        return False

    def result(self, uri: str) -> tuple | None:
        """The worker's render of page ``uri``; None when the parent must render it."""
        if self.results is None:
            self.results = self._collect()
        return self.results.pop(uri, None)

    def _collect(self) -> dict[str, tuple]:
        self._wait()
        results: dict[str, tuple] = {}
        self.results_file.seek(0)
        while True:
            try:
                message = pickle.load(self.results_file)
            except EOFError:
                break
            except Exception as error:  # noqa: BLE001 (a broken stream: the parent renders the rest)
                _log.info(f"page worker: unreadable results ({type(error).__name__}); rendering here")
                break
            if message[0] == "stopped":
                if message[1] != "done":
                    _log.info(f"page worker: {message[1]}; its remaining pages render in this process")
                self.cpu_s = message[2]
                break
            results[message[1]] = message
        return results

    def _wait(self) -> None:
        if self.running:
            self.running = False
            os.waitpid(self.pid, 0)

    def close(self) -> None:
        if self.running:
            try:
                os.kill(self.pid, signal.SIGKILL)  # only when the build stopped before the worker's pages
            except ProcessLookupError:
                pass
            self._wait()
        self.results_file.close()


def _apply(message: tuple, page: Any, files: Any, autorefs: tuple[str, Any] | None) -> bool:
    """Set what ``Page.render`` sets from the worker's ``message``; False when it cannot be used."""
    _, _, digest, content, toc, title, present, links, anchors = message
    if digest != _digest(page.markdown) or (anchors and autorefs is None):
        return False
    page.content, page.toc, page._title_from_render, page.present_anchor_ids = content, toc, title, present
    if links is not None:
        page.links_to_anchors = {files.get_file_from_path(uri): anchor_links for uri, anchor_links in links.items()}
    for identifier, anchor, anchor_title, primary in anchors:
        autorefs[1].register_anchor(page, identifier, anchor, title=anchor_title, primary=primary)
    return True


def _quiet_child() -> list[bool]:
    """In the worker: no output; the returned flag turns True when anything would have been logged
    or warned (that page is then rendered by the parent, which shows it)."""
    said = [False]

    def handle(self: logging.Logger, record: logging.LogRecord) -> None:
        said[0] = True

    def show(*args: Any, **kwargs: Any) -> None:
        said[0] = True

    logging.Logger.handle = handle  # ty: ignore[invalid-assignment]
    warnings.showwarning = show
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    return said


def _render_in_child(page: Any, config: Any, files: Any, render: Any, said: list[bool]) -> tuple:
    """Read, hook and render one page as ``_populate_page`` does; the message for the parent."""
    uri = page.file.src_uri
    config._current_page = page
    page = config.plugins.on_pre_page(page, config=config, files=files)
    page.read_source(config)
    page.markdown = config.plugins.on_page_markdown(page.markdown, page=page, config=config, files=files)
    if ":::" in page.markdown:
        return ("skip", uri)
    autorefs, anchors = _autorefs(config), []
    if autorefs is not None:

        def register_anchor(
            on: Any, identifier: str, anchor: str | None = None, *, title: str | None = None, primary: bool = True
        ) -> None:
            if on is not page:
                said[0] = True  # another page's anchor: only the parent may record it
            anchors.append((identifier, anchor, title, primary))

        autorefs[1].register_anchor = register_anchor
    said[0] = False
    try:
        render(page, config, files)
    finally:
        if autorefs is not None:
            del autorefs[1].register_anchor  # the class's method again
    if said[0]:
        return ("skip", uri)
    links = page.links_to_anchors
    if links is not None:
        links = {file.src_uri: anchor_links for file, anchor_links in links.items()}
    return ("page", uri, _digest(page.markdown), page.content, page.toc, page._title_from_render,
            page.present_anchor_ids, links, anchors)  # fmt: skip


def _child(results: BinaryIO, pages: list[Any], worker: _Worker, config: Any, files: Any, render: Any) -> None:
    from mkdocs.structure.pages import Page

    said, started = _quiet_child(), time.process_time()
    try:
        while True:
            with worker.lock:
                at = worker.bounds[1] - 1
                if at < worker.bounds[0]:
                    break  # the parent has reached this page
                worker.bounds[1] = at
            file = pages[at]
            if file.page is None:
                Page(None, file, config)  # as the build loop does for pages outside the navigation
            try:
                message = _render_in_child(file.page, config, files, render, said)
            except Exception:  # noqa: BLE001 (the parent renders it and reports the error)
                message = ("skip", file.src_uri)
            pickle.dump(message, results, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(("stopped", "done", time.process_time() - started), results)
    except BaseException as error:  # noqa: BLE001 (the parent carries on alone)
        try:
            pickle.dump(
                ("stopped", f"stopped ({type(error).__name__}: {error})", time.process_time() - started), results
            )
        except BaseException:  # noqa: BLE001, S110 (the parent reads what was written)
            pass
    finally:
        try:
            results.flush()
        finally:
            os._exit(0)


def _fork(config: Any, files: Any, render: Any) -> _Worker | None:
    """Start the worker on the pages of the build loop, from the last one back; None where it cannot start."""
    from mkdocs.structure.files import InclusionLevel

    pages = list(files.documentation_pages(inclusion=InclusionLevel.is_included))
    context = multiprocessing.get_context("fork")
    try:
        results = tempfile.TemporaryFile()
        worker = _Worker(0, results, {file.src_uri: at for at, file in enumerate(pages)},
                         context.RawArray("q", [0, len(pages)]), context.Lock())  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        worker.pid = os.fork()
    except OSError:
        return None
    if worker.pid == 0:
        _child(results, pages, worker, config, files, render)
    return worker


@contextmanager
def page_workers(workers: int | None = None) -> Iterator[None]:
    """Inside: a clean ``mkdocs build`` shares its pages with a forked worker when ``workers`` (by
    default :func:`tools.site.forked.worker_count`) is 2 or more; otherwise mkdocs is unchanged."""
    from mkdocs.commands import build as build_module
    from mkdocs.structure.pages import Page

    LAST_BUILD.clear()
    LAST_BUILD.update(workers=1)
    if (workers if workers is not None else worker_count()) < 2:
        yield
        return
    build, populate, render = build_module.build, build_module._populate_page, Page.render
    state: dict[str, Any] = {"armed": False, "worker": None}

    def populate_sharing(page: Any, config: Any, files: Any, dirty: bool = False) -> None:
        if state["armed"]:
            state["armed"] = False  # one fork per build, at its first page
            state["worker"] = _fork(config, files, render)
        return populate(page, config, files, dirty)

    def render_sharing(page: Any, config: Any, files: Any) -> None:
        worker = state["worker"]
        uri = page.file.src_uri
        message = worker.result(uri) if worker is not None and not worker.claim(uri) else None
        if message is None or message[0] != "page" or not _apply(message, page, files, _autorefs(config)):
            return render(page, config, files)
        worker.rendered += 1

    def build_sharing(config: Any, *, serve_url: str | None = None, dirty: bool = False) -> None:
        state["armed"] = not serve_url and not dirty
        LAST_BUILD.clear()
        LAST_BUILD.update(workers=1)
        try:
            return build(config, serve_url=serve_url, dirty=dirty)
        finally:
            state["armed"] = False
            worker, state["worker"] = state["worker"], None
            if worker is not None:
                worker.close()
                LAST_BUILD.update(workers=2, pages=len(worker.index), worker_pages=worker.rendered,
                                  worker_cpu_s=round(worker.cpu_s, 2))  # fmt: skip
                _log.info(f"page worker: rendered {worker.rendered} of {len(worker.index)} pages "
                          f"({worker.cpu_s:.1f} s CPU)")  # fmt: skip

    build_module.build, build_module._populate_page, Page.render = build_sharing, populate_sharing, render_sharing
    try:
        yield
    finally:
        build_module.build, build_module._populate_page, Page.render = build, populate, render
