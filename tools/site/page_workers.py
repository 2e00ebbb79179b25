"""A ``mkdocs build``'s two page loops shared with a second process.

mkdocs reads and renders every page in one loop (``_populate_page``), then builds each page's file
in a second (``_build_page``: the template, the search index entry, the write); at 10,000 entries
the two loops are most of the build, and no page in them needs the ones before. Inside
:func:`page_workers`, the first page of each loop of a clean ``build`` forks one worker that takes
the pages from the last one back while the parent goes on from the first, until they meet (so each
does the share its core allows). The worker starts from the parent's state at the fork.

Rendering: the worker reads the page and runs the plugins' ``on_pre_page`` and ``on_page_markdown``
on its own copy, renders it and records what ``Page.render`` sets: the HTML, the table of contents,
the title, the anchors the page holds and the links it makes to other pages' anchors, and the
anchors it registered with autorefs. The parent still runs the whole loop in order, every hook
included; at a worker's page it takes that result instead of rendering and replays the autorefs
registrations there, so the plugins see what a serial build shows them. It renders the page itself
(as a serial build does) whenever the worker could differ: the Markdown the worker rendered is not
the one the parent's hooks produced (compared by digest), the render logged anything (a warning
must be counted by the parent's ``--strict``) or registered an anchor for another page, the page
has a mkdocstrings block (``:::``: its handler keeps state), or the worker stopped.

Building: the worker builds its pages' files as ``_build_page`` does and sends back the search
index entries each added, which the parent inserts where its loop reaches that page. Only where
the plugins' ``on_page_context`` and ``on_post_page`` are the search plugin's (entries) and the
tags plugin's (the page's context only); a page that logged anything is built again by the parent.

``serve`` (threads, dirty builds) and one-core machines stay serial, and so does
``ATLAS_SITE_WORKERS=1`` (:mod:`tools.site.forked`). The built site is byte-identical
(tests/tools/test_build_workers.py).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from .forked import worker_count

__all__ = ["LAST_BUILD", "REPORT_VARIABLE", "page_workers", "write_report"]

REPORT_VARIABLE = "ATLAS_SITE_REPORT"  # a JSON file for bench-site: LAST_BUILD and this process's CPU seconds
_log = logging.getLogger("mkdocs.tools.page_workers")
# What the last build inside page_workers did: processes, pages, pages the worker rendered and built, CPU.
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
        self.done, self.cpu_s = 0, 0.0  # pages the parent took from the worker; the worker's CPU seconds

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


def _build_in_child(file: Any, said: list[bool], build_page: Any, arguments: tuple, entries: list) -> tuple:
    """Build (template, hooks, file) one page as ``_build_page`` does; the message for the parent:
    the search index entries it added."""
    config, doc_files, nav, env = arguments
    before = len(entries)
    said[0] = False
    build_page(file.page, config, doc_files, nav, env, False, excluded=file.inclusion.is_excluded())
    return ("skip", file.src_uri) if said[0] else ("page", file.src_uri, entries[before:])


def _child(results: BinaryIO, pages: list[Any], worker: _Worker, work: Callable[[Any, list[bool]], tuple]) -> None:
    """The worker: ``work`` on pages from the last one back until it meets the parent."""
    said, started = _quiet_child(), time.process_time()
    try:
        while True:
            with worker.lock:
                at = worker.bounds[1] - 1
                if at < worker.bounds[0]:
                    break  # the parent has reached this page
                worker.bounds[1] = at
            try:
                message = work(pages[at], said)
            except Exception:  # noqa: BLE001 (the parent does it and reports the error)
                message = ("skip", pages[at].src_uri)
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


def _fork(pages: list[Any], work: Callable[[Any, list[bool]], tuple]) -> _Worker | None:
    """Start a worker doing ``work`` on ``pages`` from the last one back; None where it cannot start."""
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
        _child(results, pages, worker, work)
    return worker


def _search_entries(config: Any) -> list | None:
    """The search index's entries, when the plugins' ``on_page_context`` and ``on_post_page`` do
    nothing the parent cannot replay (the search plugin adds entries; the tags plugin only fills
    the page's context); else None: those pages are built by the parent alone."""
    events = getattr(config.plugins, "events", {})
    owners = {type(getattr(handler, "__self__", None)).__name__ for name in ("page_context", "post_page")
              for handler in events.get(name, [])}  # fmt: skip
    search = config.plugins.get("material/search")
    index = getattr(search, "search_index", None)
    if not owners <= {"SearchPlugin", "TagsPlugin"} or not isinstance(getattr(index, "entries", None), list):
        return None
    return index.entries


def _stats(worker: _Worker | None) -> tuple[int, float]:
    if worker is None:
        return 0, 0.0
    worker.close()
    return worker.done, worker.cpu_s


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
    build, populate, build_page, render = (
        build_module.build, build_module._populate_page, build_module._build_page, Page.render
    )  # fmt: skip
    state: dict[str, Any] = {"armed": set(), "renderer": None, "builder": None}

    def populate_sharing(page: Any, config: Any, files: Any, dirty: bool = False) -> None:
        if "populate" in state["armed"]:
            state["armed"].discard("populate")  # one fork per build, at its first page
            from mkdocs.structure.files import InclusionLevel

            def work(file: Any, said: list[bool]) -> tuple:
                if file.page is None:
                    Page(None, file, config)  # as the build loop does for pages outside the navigation
                return _render_in_child(file.page, config, files, render, said)

            state["renderer"] = _fork(list(files.documentation_pages(inclusion=InclusionLevel.is_included)), work)
        return populate(page, config, files, dirty)

    def render_sharing(page: Any, config: Any, files: Any) -> None:
        worker = state["renderer"]
        uri = page.file.src_uri
        message = worker.result(uri) if worker is not None and not worker.claim(uri) else None
        if message is None or message[0] != "page" or not _apply(message, page, files, _autorefs(config)):
            return render(page, config, files)
        worker.done += 1

    def build_page_sharing(
        page: Any, config: Any, doc_files: Any, nav: Any, env: Any, dirty: bool = False, excluded: bool = False
    ) -> None:
        entries = _search_entries(config)
        if "build" in state["armed"] and not dirty and not excluded:
            state["armed"].discard("build")
            if state["renderer"] is not None:
                state["renderer"].close()  # done: every page is rendered
            if entries is not None:
                arguments = (config, doc_files, nav, env)
                state["builder"] = _fork(
                    list(doc_files), lambda file, said: _build_in_child(file, said, build_page, arguments, entries)
                )
        worker = state["builder"]
        message = (
            worker.result(page.file.src_uri) if worker is not None and not worker.claim(page.file.src_uri) else None
        )
        if message is None or message[0] != "page" or entries is None:
            return build_page(page, config, doc_files, nav, env, dirty, excluded)
        entries.extend(message[2])  # the file is written; its search entries go where they belong
        worker.done += 1

    def build_sharing(config: Any, *, serve_url: str | None = None, dirty: bool = False) -> None:
        state["armed"] = {"populate", "build"} if not serve_url and not dirty else set()
        LAST_BUILD.clear()
        LAST_BUILD.update(workers=1)
        try:
            return build(config, serve_url=serve_url, dirty=dirty)
        finally:
            state["armed"] = set()
            renderer, builder = state["renderer"], state["builder"]
            state["renderer"] = state["builder"] = None
            if renderer is not None or builder is not None:
                pages = len((renderer or builder).index)
                (rendered, render_cpu_s), (built, build_cpu_s) = _stats(renderer), _stats(builder)
                LAST_BUILD.update(workers=2, pages=pages, worker_pages=rendered, worker_cpu_s=round(render_cpu_s, 2),
                                  worker_built=built, worker_build_cpu_s=round(build_cpu_s, 2))  # fmt: skip
                _log.info(f"page worker: rendered {rendered} and built {built} of {pages} pages "
                          f"({render_cpu_s + build_cpu_s:.1f} s CPU)")  # fmt: skip

    patched = (build_sharing, populate_sharing, build_page_sharing, render_sharing)
    build_module.build, build_module._populate_page, build_module._build_page, Page.render = patched
    try:
        yield
    finally:
        build_module.build, build_module._populate_page, build_module._build_page, Page.render = (
            build, populate, build_page, render
        )  # fmt: skip
