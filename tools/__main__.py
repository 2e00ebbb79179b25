"""``python -m tools <command>``: the LVLM Atlas command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import commands


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools", description="LVLM Atlas data and site tools.")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    validate = sub.add_parser("validate", help="check papers/ and taxonomy/; report every problem, exit 1 on any error")
    validate.add_argument("paths", nargs="*", type=Path, help="paper files to report on (default: all)")
    validate.add_argument("--quiet", action="store_true", help="do not print warnings")

    sub.add_parser("schema", help="rewrite papers/paper.schema.json from the taxonomy")

    build = sub.add_parser("build", help="validate, generate the docs pages and run mkdocs build --strict")
    build.add_argument("--no-mkdocs", action="store_true", help="only generate the pages")
    build.add_argument(
        "--no-execute", action="store_true", help="do not execute notebooks; use rendered outputs or a placeholder"
    )
    build.add_argument("--site-dir", type=Path, default=None)

    serve = sub.add_parser("serve", help="build, then serve on http://127.0.0.1:8000 and rebuild on changes")
    serve.add_argument("--address", default="127.0.0.1:8000")
    serve.add_argument("--no-execute", action="store_true")

    importer = sub.add_parser("import-tsv", help="create entries from the shared paper table")
    importer.add_argument("tsv", type=Path)
    importer.add_argument("--overwrite", action="store_true", help="rewrite entries that already exist")

    bib = sub.add_parser("bib", help="BibTeX export and import")
    bib_sub = bib.add_subparsers(dest="bib_command", required=True, metavar="bib-command")
    export = bib_sub.add_parser("export", help="write every entry as BibTeX")
    export.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    bib_import = bib_sub.add_parser(
        "import",
        help="create entries from a .bib file, skipping ones already present; "
        "writes nothing unless every new entry validates",
    )
    bib_import.add_argument("file", type=Path)
    bib_import.add_argument(
        "--placement",
        nargs="+",
        default=[],
        help="taxonomy id(s) for the new entries (omitted: print suggestions, write nothing)",
    )
    bib_import.add_argument("--dry-run", action="store_true", help="check everything and name the files, write nothing")

    new = sub.add_parser("new", help="scaffold a new entry")
    new.add_argument("key")
    new.add_argument("--title", required=True)
    new.add_argument(
        "--placement", nargs="+", default=[], help="taxonomy id(s) (omitted: print suggestions, write nothing)"
    )
    new.add_argument("--year", type=int, required=True)
    new.add_argument("--venue", default="arXiv")
    new.add_argument("--arxiv", default="")
    new.add_argument("--author", action="append", default=[], help="repeat per author, 'First Last'")
    new.add_argument("--force", action="store_true", help="overwrite papers/<key>.yaml if it exists")
    new.add_argument("--dry-run", action="store_true", help="check the entry and name the file, write nothing")

    sub.add_parser("stats", help="data quality (authors, summaries, venues, placements), counts per node")

    triage = sub.add_parser("triage", help="new papers from an arXiv Atom, BibTeX or CSV feed, with placements")
    triage.add_argument("feed", type=Path, nargs="?", help="the feed file (.xml/.atom, .bib or .csv)")
    triage.add_argument(
        "--out", default="triage", help="folder for candidate files, '-' for standard output (default: triage/)"
    )
    triage.add_argument(
        "--evaluate", action="store_true", help="print the classifier's held-out top-1 and top-3 accuracy"
    )
    triage.add_argument("--folds", type=int, default=0, help="with --evaluate: k-fold instead of leave-one-out (0)")
    triage.add_argument(
        "--confusions", type=int, default=0, metavar="N", help="with --evaluate: also print the N most frequent misses"
    )
    triage.add_argument("--feed-url", action="store_true", help="print the arXiv API query for the taxonomy keywords")

    bench = sub.add_parser(
        "bench-site", help="time validate and build on N synthetic entries, then the preview latency of serve"
    )
    bench.add_argument("--n", type=int, default=10000, help="synthetic entries for the build (0: skip the build)")
    bench.add_argument("--no-preview", action="store_true", help="skip the preview latency")
    bench.add_argument("--out", type=Path, default=None, help="JSON file (default: .cache/bench-site.json)")
    bench.add_argument("--keep", action="store_true", help="keep the temporary directories")

    compare = sub.add_parser(
        "compare-sites", help="pages, titles, article text, edit links and broken internal links of two built sites"
    )
    compare.add_argument("a", type=Path, help="a built site folder (say mkdocs')")
    compare.add_argument("b", type=Path, help="another build of the same pages (say Zensical's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return commands.run(args)
    except KeyboardInterrupt:
        # Every command writes through a temporary file or a staging folder and swaps in one step.
        print(f"\npython -m tools {args.command}: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
