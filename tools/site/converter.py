"""One Markdown converter for every page of a mkdocs build.

mkdocs' ``Page.render`` builds a new ``markdown.Markdown`` for every page, loading and configuring
every extension of ``mkdocs.yml`` again (pymdownx, toc, footnotes...): about 0.7 ms a page, 7 s of
a 10,000-entry build. Python-Markdown's own way to convert several documents is one instance with
``reset()`` between them (every extension with per-document state registers a ``reset``); inside
:func:`one_converter`, ``Page.render`` gets that: the instance made for the build's configuration,
reset, to which mkdocs adds its per-page processors (they replace the previous page's by name, in
the same order, so the processing order is the one a new instance has).

A page with a mkdocstrings block (``:::``) keeps a new instance: mkdocstrings prepares its handler
once per instance, for the page it first sees (the links of API pages are relative to that page).

The built site is byte-identical to mkdocs' own build (tests/tools/test_converter.py compares pages
with footnotes, repeated heading ids, tabs and escapes; the whole site was compared when this was
written). ``python -m tools.site.converter build --strict ...`` is ``mkdocs build --strict ...``
with it; mkdocs' own command stays valid (``mkdocs.yml`` has no hook: Zensical reads it too).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["one_converter", "main"]


class _Converters(types.ModuleType):
    """Stands for the ``markdown`` module inside ``mkdocs.structure.pages`` during one page's
    render: ``Markdown(...)`` returns the converter kept for the page's configuration."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__)
        self.real = real
        self.config: Any = None  # the configuration of the page being rendered
        self.kept: tuple[Any, tuple[int, ...], Any] | None = None  # (config, extension ids, converter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def Markdown(self, *, extensions: list[Any], extension_configs: dict[str, Any]) -> Any:  # noqa: N802 (markdown's name)
        key = tuple(map(id, extensions))
        if self.kept is None or self.kept[0] is not self.config or self.kept[1] != key:
            # Kept with its configuration: a new configuration (serve's full rebuild) gets a new one.
            made = self.real.Markdown(extensions=extensions, extension_configs=extension_configs)
            self.kept = (self.config, key, made)
        return self.kept[2].reset()


@contextmanager
def one_converter() -> Iterator[None]:
    """Inside: mkdocs renders pages with one reset converter per configuration (not thread-safe:
    mkdocs renders one page at a time)."""
    from mkdocs.structure import pages

    render, real = pages.Page.render, pages.markdown
    converters = _Converters(real)

    def render_reusing(page: Any, config: Any, files: Any) -> None:
        if page.markdown is None or ":::" in page.markdown:
            return render(page, config, files)
        converters.config, pages.markdown = config, converters
        try:
            return render(page, config, files)
        finally:
            pages.markdown = real

    pages.Page.render = render_reusing
    try:
        yield
    finally:
        pages.Page.render = render


def main(argv: list[str] | None = None) -> int:
    """mkdocs' command line (``build``, ``serve``...) with :func:`one_converter`, and a clean
    ``build`` sharing its pages with a second process (:mod:`tools.site.page_workers`)."""
    from mkdocs.__main__ import cli

    from .page_workers import page_workers, write_report

    with one_converter(), page_workers():
        try:
            cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="mkdocs", standalone_mode=True)
        except SystemExit as stop:  # click ends every run this way (None and 0: success)
            return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        finally:
            write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
