"""``serve``: generate the pages, build them with mkdocs in this process and serve them with live
reload; after an edit, regenerate only what it changed and rebuild only those pages.

mkdocs' own ``serve`` would poll ``docs/`` (every 0.5 s, over a thousand files) and start each
rebuild by compiling the theme's templates again. Here the watcher that sees an edit also tells the
live-reload server to rebuild, right after the changed pages are written; the rebuild is mkdocs'
dirty build (only pages whose source is newer than their output), with the compiled templates and
the theme's file list kept between builds and the 404 page (the whole navigation) left as built,
and one Markdown converter for every page (:mod:`tools.site.converter`).
A dirty build does not refresh the navigation of unchanged pages, and leaves the search index of the
last full build as it is; an edit to the code, ``mkdocs.yml`` or the theme's files makes a full
rebuild, and ``python -m tools build`` stays the reference.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .build import GENERATED, mkdocs_environment, write_changed
from .converter import one_converter
from .preview import Preview

__all__ = ["serve_site", "snapshot"]

# Sources of the generated pages: an edit here regenerates pages (polled often).
_PAGE_SOURCES = ("papers", "taxonomy", "notebooks", "reference_impls/results")
# Everything else mkdocs reads: an edit here makes a full mkdocs build (polled less often).
_BUILD_SOURCES = ("reference_impls", "docs", "mkdocs.yml", "CONTRIBUTING.md")
_SKIPPED = {"__pycache__", ".ipynb_checkpoints"}


def _walk(path: Path, skip: set[Path]) -> Iterator[os.DirEntry]:
    try:
        with os.scandir(path) as found:
            for item in found:
                if item.name in _SKIPPED or item.name.startswith(".") or Path(item.path) in skip:
                    continue
                if item.is_dir(follow_symlinks=False):
                    yield from _walk(Path(item.path), skip)
                else:
                    yield item
    except (FileNotFoundError, NotADirectoryError):
        return


def snapshot(root: Path, names: tuple[str, ...], skip: set[Path] = frozenset()) -> dict[Path, tuple[int, int]]:
    """(modification time, size) of every file under ``names`` (files or folders of ``root``)."""
    seen: dict[Path, tuple[int, int]] = {}
    for name in names:
        top = root / name
        entries = _walk(top, set(skip)) if top.is_dir() else ([top] if top.is_file() else [])
        for item in entries:
            try:
                stat = item.stat()
            except OSError:
                continue
            seen[Path(item.path if isinstance(item, os.DirEntry) else item)] = (stat.st_mtime_ns, stat.st_size)
    return seen


def _differences(before: dict[Path, Any], after: dict[Path, Any]) -> set[Path]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


class _Builder:
    """The live-reload server's builder: mkdocs' build, full the first time and when asked, dirty
    otherwise, with compiled templates kept between builds."""

    def __init__(self, root: Path, site_dir: str, serve_url: str):
        import jinja2

        class Remembered(jinja2.BytecodeCache):
            def __init__(self) -> None:
                self.store: dict[str, bytes] = {}

            def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
                if bucket.key in self.store:
                    bucket.bytecode_from_string(self.store[bucket.key])  # checks the source's checksum

            def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
                self.store[bucket.key] = bucket.bytecode_to_string()

        self.root, self.site_dir, self.serve_url = root, site_dir, serve_url
        self.bytecode = Remembered()
        self.templates: dict[Any, list[str]] = {}
        self.full = True
        self.plugins: Any = None

    def config(self) -> Any:
        from mkdocs.config import load_config

        # Not strict (mkdocs.yml says strict): every dirty build warns that it is dirty;
        # ``build`` (and CI) stays strict.
        config = load_config(config_file=str(self.root / "mkdocs.yml"), site_dir=self.site_dir, strict=False)
        config.site_url = self.serve_url
        return config

    def __call__(self, config: Any = None) -> None:
        from mkdocs.commands.build import build

        config = config or self.config()
        full, self.full = self.full, False
        if full:
            self.templates.clear()
        theme, make_env = config.theme, config.theme.get_env

        def get_env() -> Any:
            env = make_env()
            env.bytecode_cache = self.bytecode
            listed = env.list_templates

            def list_templates(extensions: Any = None, filter_func: Any = None) -> list[str]:
                # The theme's files (thousands) are listed on every build; a filter is a new
                # function each time, the same code.
                key = (tuple(extensions or ()), getattr(filter_func, "__code__", filter_func))
                if key not in self.templates:
                    self.templates[key] = listed(extensions, filter_func)
                return list(self.templates[key])

            env.list_templates = list_templates
            return env

        theme.get_env = get_env
        if not full:
            theme.static_templates.discard("404.html")  # the whole navigation, unchanged by an edit
            # A dirty build would replace the search index by one of the rebuilt pages only; without
            # the search plugin the full build's index stays (stale for the edited pages only).
            search = config.plugins.get("material/search")
            for handlers in getattr(config.plugins, "events", {}).values():
                handlers[:] = [handler for handler in handlers if getattr(handler, "__self__", None) is not search]
        started = time.perf_counter()
        with one_converter():
            build(config, serve_url=self.serve_url, dirty=not full)
        print(f"serve: {'full' if full else 'dirty'} mkdocs build in {time.perf_counter() - started:.2f} s", flush=True)


def _request_rebuild(server: Any, builder: _Builder, full: bool) -> None:
    # What the server's own file watcher does on a change (mkdocs 1.6 LiveReloadServer).
    builder.full = builder.full or full
    with server._rebuild_cond:
        server._want_rebuild = True
        server._rebuild_cond.notify_all()


def _watch(root: Path, preview: Preview, server: Any, builder: _Builder, stop: threading.Event, poll_s: float) -> None:
    docs = root / "docs"
    # Generated pages are written here; results are page sources.
    skip = {docs / name for name in GENERATED} | {root / "reference_impls" / "results"}
    pages = snapshot(root, _PAGE_SOURCES)
    others = snapshot(root, _BUILD_SOURCES, skip)
    rounds = 0
    while not stop.wait(poll_s):
        rounds += 1
        now = snapshot(root, _PAGE_SOURCES)
        changed = _differences(pages, now)
        code_changed = hand_written = False
        if rounds % 5 == 0:  # the rest about once a second
            later = snapshot(root, _BUILD_SOURCES, skip)
            edited = _differences(others, later)
            others = later
            # A hand-written page is rebuilt alone; code, theme files and mkdocs.yml need a full build.
            hand_written = any(docs in path.parents and path.suffix == ".md" for path in edited)
            code_changed = any(not (docs in path.parents and path.suffix == ".md") for path in edited)
        if hand_written and not changed and not code_changed:
            _request_rebuild(server, builder, full=False)
            continue
        if not changed and not code_changed:
            continue
        pages = now
        started = time.perf_counter()
        update = None if code_changed else preview.update(changed)
        if update is None:
            files = preview.full()
            written = write_changed(root, docs, files) if files is not None else 0
            how = "all pages"
        else:
            files, removed = update
            written = write_changed(root, docs, files, removed) if files or removed else 0
            how = f"{len(files)} pages"
        print(
            f"serve: regenerated {how}, {written} files changed, in {time.perf_counter() - started:.2f} s",
            flush=True,
        )
        if written or code_changed:
            _request_rebuild(server, builder, full=code_changed)


def serve_site(
    root: Path, *, address: str = "127.0.0.1:8000", execute_notebooks: bool = True, poll_s: float = 0.2
) -> int:
    """Generate, build and serve on ``address`` until Ctrl+C; rebuild after every edit."""
    import tempfile

    from mkdocs.livereload import LiveReloadServer

    os.environ.update(mkdocs_environment())
    logging.basicConfig(level=logging.INFO, format="%(levelname)-8s -  %(message)s")
    # mkdocs warns about every dirty build; that is what this preview does on purpose.
    logging.getLogger("mkdocs.commands.build").setLevel(logging.ERROR)
    root = Path(root).resolve()

    def stop_on_terminate(*_: Any) -> None:
        raise KeyboardInterrupt  # a terminate signal stops like Ctrl+C: the temporary site is removed

    signal.signal(signal.SIGTERM, stop_on_terminate)
    preview = Preview(root, execute_notebooks=execute_notebooks)
    files = preview.full()
    if files is None:
        return 1
    write_changed(root, root / "docs", files)
    host, _, port = address.rpartition(":")
    site_dir = tempfile.mkdtemp(prefix="atlas-serve-")
    builder = _Builder(root, site_dir, f"http://{address}/")
    config = builder.config()
    config.plugins.on_startup(command="serve", dirty=True)
    server = LiveReloadServer(builder=builder, host=host, port=int(port), root=site_dir)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(root, preview, server, builder, stop, poll_s), daemon=True)
    try:
        builder(config)
        watcher.start()
        print(f"serving on http://{address}/ (Ctrl+C stops)", flush=True)
        try:
            server.serve()
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            server.shutdown()
    finally:
        config.plugins.on_shutdown()
        import shutil

        shutil.rmtree(site_dir, ignore_errors=True)
    print("serve: stopped", file=sys.stderr)
    return 0
