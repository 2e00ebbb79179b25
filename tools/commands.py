"""The command implementations behind ``python -m tools``; each returns the exit status."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from .catalog import ROOT, Catalog, load_catalog, tidy_title

__all__ = ["run"]


def _print_problems(catalog: Catalog, quiet: bool = False) -> None:
    for problem in catalog.problems:
        if problem.severity == "error" or not quiet:
            print(problem, file=sys.stderr)


def _validated(root: Path, quiet: bool = True) -> Catalog | None:
    catalog = load_catalog(root)
    if catalog.errors:
        _print_problems(catalog, quiet=True)
        print(f"validate: {len(catalog.errors)} error(s); nothing was written", file=sys.stderr)
        return None
    return catalog


def _print_suggestions(catalog: Catalog, items: list[dict], command: str) -> None:
    """Top-3 placements for each item, and how to pass one (the caller then exits 1 without writing)."""
    from .checks import CONTROL_CHARACTERS
    from .triage import Classifier

    model = Classifier.from_catalog(catalog)
    for item in items:
        ranked = model.suggest(item)
        # The title is not validated yet: its control characters are shown, not sent to the terminal.
        title = CONTROL_CHARACTERS.sub(lambda found: ascii(found.group())[1:-1], str(item["title"]))
        print(
            f"{command}: suggested placements for '{title}': "
            + ", ".join(f"{node_id} ({score:.2f})" for node_id, score in ranked)
        )
    print(f"{command}: no --placement given, nothing was written; rerun with --placement ID [ID ...]", file=sys.stderr)


def cmd_validate(args: argparse.Namespace, root: Path) -> int:
    paths = [path if path.is_absolute() else Path.cwd() / path for path in args.paths] or None
    catalog = load_catalog(root, paths)
    _print_problems(catalog, quiet=args.quiet)
    errors, warnings = len(catalog.errors), len(catalog.warnings)
    nodes = catalog.taxonomy.nodes()
    methods = [node for node in nodes if node.is_leaf_method]
    exempt = [node.id for node in nodes if node.kind == "resource"]
    print(
        f"validate: {len(catalog.entries)} entries, {len(nodes)} taxonomy nodes "
        f"({len(methods)} method families; exempt as not methods: {', '.join(exempt) or 'none'}), "
        f"{errors} error(s), {warnings} warning(s)",
        file=sys.stderr if errors else sys.stdout,
    )
    return 1 if errors else 0


def cmd_schema(args: argparse.Namespace, root: Path) -> int:
    from .schema import schema_text
    from .yamlio import write_text_atomic

    catalog = load_catalog(root, check_schema_file=False)
    taxonomy_errors = [p for p in catalog.errors if p.path.startswith("taxonomy") and p.field != "source"]
    if taxonomy_errors:
        for problem in taxonomy_errors:
            print(problem, file=sys.stderr)
        return 1
    write_text_atomic(root / "papers" / "paper.schema.json", schema_text(catalog.taxonomy))
    print("wrote papers/paper.schema.json")
    return 0


def cmd_import_tsv(args: argparse.Namespace, root: Path) -> int:
    from .importer import import_tsv

    try:
        written, messages = import_tsv(args.tsv, root=root, overwrite=args.overwrite)
    except (OSError, ValueError) as error:
        for line in str(error).splitlines():
            print(f"import-tsv: {line}", file=sys.stderr)
        return 1
    for message in messages:
        print(message)
    kept = sum(message.startswith("kept existing ") for message in messages)
    print(f"import-tsv: wrote {len(written)} entries, kept {kept} existing")
    return 0


def _check_then_write(
    root: Path, entries: list[dict], command: str, *, overwrite: bool = False, dry_run: bool = False
) -> int:
    """:func:`~tools.entries.check_then_write` for the command line: each file named, each refusal printed."""
    from .entries import EntryCheckError, check_then_write

    try:
        written = check_then_write(root, entries, overwrite=overwrite, dry_run=dry_run)
    except EntryCheckError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"{command}: {len(error.problems)} error(s); nothing was written", file=sys.stderr)
        return 1
    except ValueError as error:  # an UnsafePathError (one refused key a line), or an entry text that cannot be made
        for line in str(error).splitlines():
            print(f"{command}: {line}", file=sys.stderr)
        print(f"{command}: nothing was written", file=sys.stderr)
        return 1
    for path in written:
        print(f"{'would write' if dry_run else 'wrote'} {path.relative_to(Path(root).resolve())}")
    return 0


def cmd_bib(args: argparse.Namespace, root: Path) -> int:
    from .bib import BibImportError, entries_to_bibtex, new_entries_from_bibtex
    from .yamlio import InputTextError, write_text_atomic

    catalog = _validated(root)
    if catalog is None:
        return 1
    if args.bib_command == "export":
        text = entries_to_bibtex(entry.data for entry in catalog.entries)
        if args.out:
            write_text_atomic(args.out, text)
            print(f"wrote {len(catalog.entries)} entries to {args.out}")
        else:
            sys.stdout.write(text)
        return 0
    unknown = [node_id for node_id in args.placement if node_id not in catalog.taxonomy.by_id]
    if unknown:
        print(f"bib import: unknown taxonomy id(s) {unknown} for --placement", file=sys.stderr)
        return 1
    try:
        fresh, skipped = new_entries_from_bibtex(args.file, catalog, args.placement)
    except (OSError, BibImportError, InputTextError) as error:
        print(f"bib import: {error}", file=sys.stderr)
        return 1
    for message in skipped:
        print(message)
    if not args.placement:
        _print_suggestions(catalog, fresh, "bib import")
        return 1
    status = _check_then_write(root, fresh, "bib import", dry_run=args.dry_run)
    if status == 0:
        print(f"bib import: {len(fresh)} new, {len(skipped)} already present" + (" (dry run)" if args.dry_run else ""))
    return status


def cmd_new(args: argparse.Namespace, root: Path) -> int:
    import datetime as dt

    if not args.placement:
        catalog = _validated(root)
        if catalog is None:
            return 1
        _print_suggestions(catalog, [{"title": args.title}], "new")
        return 1
    data = {
        "key": args.key,
        "title": tidy_title(args.title),
        "authors": args.author,
        "year": args.year,
        "venue": args.venue,
        "arxiv": args.arxiv,
        "url": f"https://arxiv.org/abs/{args.arxiv}" if args.arxiv else "",
        "placement": args.placement,
        "added": dt.date.today().isoformat(),
    }
    status = _check_then_write(root, [data], "new", overwrite=args.force, dry_run=args.dry_run)
    if status == 0 and not args.dry_run:
        print("fill in the remaining fields, then run: python -m tools validate")
    return status


def quality_lines(catalog: Catalog) -> list[str]:
    """How complete the entries are: the figures the data issue tracks."""
    entries = [entry.data for entry in catalog.entries]
    total = len(entries) or 1
    by_id = catalog.taxonomy.by_id

    def share(count: int) -> str:
        return f"{count}/{len(entries)} ({100 * count / total:.1f}%)"

    parent_only = [data for data in entries if all(by_id[node_id].children for node_id in data["placement"])]
    parent_nodes = Counter(node_id for data in parent_only for node_id in data["placement"])
    return [
        f"with authors: {share(sum(bool(data.get('authors')) for data in entries))}",
        f"with a summary: {share(sum(bool(data.get('summary')) for data in entries))}",
        f"with aliases: {share(sum(bool(data.get('aliases')) for data in entries))}",
        f"with reported numbers: {share(sum(bool(data.get('reported')) for data in entries))}",
        f"venue 'arXiv': {share(sum(data.get('venue') == 'arXiv' for data in entries))}",
        f"placed only on a node that has children (no leaf family): {share(len(parent_only))}",
        "  of which on: " + ", ".join(f"{node_id} {count}" for node_id, count in parent_nodes.most_common()),
    ]


def cmd_stats(args: argparse.Namespace, root: Path) -> int:
    from .site.data import SiteData

    catalog = _validated(root)
    if catalog is None:
        return 1
    data = SiteData(catalog)
    print(f"{len(catalog.entries)} papers, {len(catalog.taxonomy.families())} families")
    print("\ndata quality:")
    for line in quality_lines(catalog):
        print(f"  {line}")
    for topic in catalog.taxonomy.topics:
        print(f"\n{topic.name}: {len(data.papers_under(topic))}")
        for node in topic.descendants()[1:]:
            depth = len(node.ancestors) - 1
            print(f"  {'  ' * depth}{node.name} [{node.id}]: {len(data.papers_under(node))}")
    years = Counter(entry.data["year"] for entry in catalog.entries)
    print("\nby year: " + ", ".join(f"{year}: {count}" for year, count in sorted(years.items())))
    venues = Counter(entry.data.get("venue") or "(no venue)" for entry in catalog.entries)
    print("top venues: " + ", ".join(f"{venue}: {count}" for venue, count in venues.most_common(12)))
    return 0


def cmd_triage(args: argparse.Namespace, root: Path) -> int:
    from .bib import BibImportError
    from .triage import (
        Classifier,
        FeedError,
        candidate_data,
        candidate_key,
        candidate_text,
        document,
        drop_bad_links,
        evaluate,
        feed_url,
        read_feed,
        unknown_items,
        write_candidates,
    )

    if args.feed_url:
        print(feed_url(root))
        return 0
    catalog = _validated(root)
    if catalog is None:
        return 1
    if args.evaluate:
        result = evaluate(catalog, folds=args.folds)
        text = f"titles and {result['summaries']} summaries" if result["summaries"] else "titles only"
        print(
            f"triage classifier, {result['method']} over {result['entries']} entries "
            f"({result['classes']} placement ids, {text}): "
            f"top-1 {100 * result['top1']:.1f}%, top-3 {100 * result['top3']:.1f}%; "
            f"counting a leaf under a parent-only placement as right: "
            f"top-1 {100 * result['top1_within']:.1f}%, top-3 {100 * result['top3_within']:.1f}%"
        )
        if args.confusions:
            print("most frequent misses (placement -> first suggestion, none of the top 3 right):")
            for (placement, suggested), count in result["confusions"][: args.confusions]:
                print(f"  {count:4d}  {placement} -> {suggested}")
        return 0
    if args.feed is None:
        print("triage: give a feed file, or --evaluate, or --feed-url", file=sys.stderr)
        return 1
    try:
        items = read_feed(args.feed)
    except (OSError, FeedError, BibImportError) as error:
        print(f"triage: {error}", file=sys.stderr)
        return 1
    for message in drop_bad_links(items, str(args.feed)):
        print(f"triage: warning: {message}", file=sys.stderr)
    items, skipped = unknown_items(items, catalog)
    for message in skipped:
        print(message, file=sys.stderr)
    rankings = Classifier.from_catalog(catalog).rank([document(item) for item in items]) if items else []
    taken = {entry.key for entry in catalog.entries}
    candidates = [candidate_data(item, candidate_key(item, taken), ranked) for item, ranked in zip(items, rankings)]
    if args.out == "-":
        sys.stdout.write("\n".join(candidate_text(data) for data in candidates))
    else:
        out = Path(args.out) if Path(args.out).is_absolute() else root / args.out
        try:
            write_candidates(candidates, out, root)
        except (OSError, FeedError) as error:
            for line in str(error).splitlines():
                print(f"triage: {line}", file=sys.stderr)
            return 1
    print(f"triage: {len(candidates)} new candidate(s), {len(skipped)} already in the catalog", file=sys.stderr)
    return 0


def cmd_build(args: argparse.Namespace, root: Path) -> int:
    from .site.build import build_site

    return build_site(
        root, run_mkdocs=not args.no_mkdocs, execute_notebooks=not args.no_execute, site_dir=args.site_dir
    )


def cmd_serve(args: argparse.Namespace, root: Path) -> int:
    from .site.serve import serve_site

    return serve_site(root, address=args.address, execute_notebooks=not args.no_execute)


def cmd_bench_site(args: argparse.Namespace, root: Path) -> int:
    from .bench_site import bench_site

    return bench_site(root, n=args.n, keep=args.keep, preview=not args.no_preview, out=args.out)


def cmd_compare_sites(args: argparse.Namespace, root: Path) -> int:
    from .site.compare import compare_command

    return compare_command(args.a, args.b)


_COMMANDS = {
    "validate": cmd_validate,
    "schema": cmd_schema,
    "import-tsv": cmd_import_tsv,
    "bib": cmd_bib,
    "new": cmd_new,
    "stats": cmd_stats,
    "triage": cmd_triage,
    "build": cmd_build,
    "serve": cmd_serve,
    "bench-site": cmd_bench_site,
    "compare-sites": cmd_compare_sites,
}


def run(args: argparse.Namespace) -> int:
    root = (args.root or ROOT).resolve()
    return _COMMANDS[args.command](args, root)
