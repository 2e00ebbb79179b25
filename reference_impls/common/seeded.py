"""Seeded evaluation: one per-seed evaluation run over the reported seeds, summarised with 95% intervals.

The ToyVLM benchmarks share one checkpoint but draw their evaluation samples per seed: each reported
seed draws its own held-out scenes, so a mean over seeds and its interval say how much a number
depends on the samples drawn. A benchmark writes a function ``evaluate(seed) -> rows`` (one row per
setting, the samples drawn from ``seed``), and this module

- runs it over the reported seeds (:func:`run_seeds`, which tags every row with its seed and times
  each seed),
- summarises the per-seed rows into one row per setting with a mean, a 95% half-width and a count
  per metric (:func:`summarise`, built on :func:`~reference_impls.common.seed_stats.interval_fields`),
- pairs settings seed by seed (:func:`paired_tests`: the sign test and bootstrap of
  :func:`~reference_impls.common.seed_stats.paired_rows`), and
- records the seed lists (:class:`Seeds`), refusing tuning seeds that are also reported, and
- checks seeds nobody reported against the published per-seed ranges (:func:`inside_ranges`: the
  lowest and highest value over the reported seeds, written by :func:`summarise` for its ``ranges``;
  :func:`check_published` does it against a results file and prints :func:`range_report`), and
- keeps each seed's rows on disk when asked (:class:`SeedCache`), so that a long benchmark can be
  extended by more seeds, or resumed after an interruption, and its results file still be what one
  command over all reported seeds writes: a seed already in the cache is read back, not re-run.

``python -m reference_impls.common.seeded [FILE ...]`` rephrases the verdicts of committed tests files
(default: every ``*-tests.json`` in ``reference_impls/results``) in the current wording of
:func:`~reference_impls.common.seed_stats.compare`, from their stored sign-test fields (:func:`reword_tests`).

Anything tuned (a threshold, a budget picked, a draft setting) is chosen on :attr:`Seeds.tuning`,
never on a reported seed.

Examples:
    >>> seeds = Seeds(reported=(10, 11, 12), tuning=(2,))
    >>> rows, _ = run_seeds(lambda s: [{"method": "a", "acc": s}, {"method": "b", "acc": 0}], seeds.reported, log=None)
    >>> [(r["method"], r["acc"], r["acc_n"]) for r in summarise(rows, ("method",), ("acc",))]
    [('a', 11.0, 3), ('b', 0.0, 3)]
    >>> paired_tests(rows, "acc", "b")[0]["wins"]  # b vs a: a is higher on every seed
    0
    >>> Seeds(reported=(1, 2), tuning=(2,))
    Traceback (most recent call last):
    ...
    ValueError: seeds [2] are used both for tuning and for reported results; keep them disjoint
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RESULTS_DIR, Column, Results, load_results, paired_tests_results, save_results
from .seed_stats import compare, disjoint_seeds, interval_fields, paired_rows, range_coverage, range_fields, row_verdict

__all__ = [
    "REPORTED",
    "QUICK",
    "Seeds",
    "SeedCache",
    "seed_arguments",
    "seeds_from_args",
    "run_seeds",
    "summarise",
    "inside_ranges",
    "range_report",
    "check_published",
    "paired_tests",
    "compare_rows",
    "interval_columns",
    "save_seeded",
    "parse_seeded",
    "reword_tests",
]

REPORTED = tuple(range(10, 20))
"""Default reported evaluation seeds of the ToyVLM benchmarks (10 seeds)."""
QUICK = (10, 11)
"""Seeds of a ``--quick`` smoke run (two, so that intervals and tests are computed)."""


@dataclass(frozen=True)
class Seeds:
    """Evaluation seeds: ``reported`` (numbers shown) and ``tuning`` (anything chosen), disjoint."""

    reported: tuple[int, ...]
    tuning: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.reported:
            raise ValueError("at least one reported seed is needed")
        if len(set(self.reported)) != len(self.reported):
            raise ValueError(f"reported seeds repeat: {list(self.reported)}")
        disjoint_seeds(self.tuning, self.reported)

    def record(self) -> dict[str, list[int]]:
        """The ``seeds`` field of a results file."""
        return {"tuning": list(self.tuning), "reported": list(self.reported)}


class SeedCache:
    """Per-seed results of one benchmark configuration as JSON files under ``directory``.

    ``key`` is everything the rows depend on besides the seed (configuration, checkpoint, threads);
    every file stores it, and a file written under another key is refused, never silently reused.
    Code changes are not in the key: clear the directory after changing the benchmark's code.

    Examples:
        >>> import tempfile
        >>> cache = SeedCache(tempfile.mkdtemp(), {"steps": 60})
        >>> cache.get("calibration", lambda: {"rho": 0.03})
        {'rho': 0.03}
        >>> cache.get("calibration", lambda: 1 / 0)  # read back, not recomputed
        {'rho': 0.03}
        >>> SeedCache(cache.directory, {"steps": 10}).get("calibration", dict)
        Traceback (most recent call last):
        ...
        ValueError: ...calibration.json: field 'key' is {'steps': 60}, expected {'steps': 10}: written for another configuration; clear the directory or use another one
    """

    def __init__(self, directory: Path | str, key: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.key = json.loads(json.dumps(key))  # as it reads back (tuples become lists)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def get(self, name: str, compute: Callable[[], Any]) -> Any:
        """The stored value ``name``, or ``compute()`` stored (atomically) under it."""
        path = self.path(name)
        if path.exists():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                key, value = stored["key"], stored["value"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}: not a seed-cache file (JSON with 'key' and 'value'): {error}") from None
            if key != self.key:
                raise ValueError(
                    f"{path}: field 'key' is {key}, expected {self.key}: written for another configuration; "
                    "clear the directory or use another one"
                )
            return value
        value = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({"key": self.key, "value": value}, indent=1) + "\n", encoding="utf-8")
        temporary.replace(path)
        return value


def seed_arguments(parser: argparse.ArgumentParser, reported: Sequence[int] = REPORTED) -> None:
    """Add ``--seeds`` (the reported evaluation seeds) to a benchmark's command line."""
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=f"reported evaluation seeds, each drawing its own samples (default {list(reported)}; --quick: {list(QUICK)})",
    )


def seeds_from_args(args: argparse.Namespace, tuning: Sequence[int] = (), reported: Sequence[int] = REPORTED) -> Seeds:
    """The :class:`Seeds` of a parsed command line (``--seeds``, else the quick or full default)."""
    chosen = args.seeds if args.seeds else (QUICK if getattr(args, "quick", False) else reported)
    return Seeds(reported=tuple(chosen), tuning=tuple(tuning))


def run_seeds(
    evaluate: Callable[[int], list[dict[str, Any]]],
    seeds: Sequence[int],
    log: Callable[..., Any] | None = print,
    cache: SeedCache | None = None,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Run ``evaluate(seed)`` for every seed; returns its rows tagged with ``seed`` and the seconds per seed.

    With a ``cache``, a seed stored there is read back (its seconds are those of the run that stored
    it) and a seed run here is stored as soon as it finishes.
    """
    rows: list[dict[str, Any]] = []
    seconds: list[float] = []
    for seed in seeds:

        def once(seed: int = seed) -> dict[str, Any]:
            start = time.perf_counter()
            found = evaluate(seed)
            return {"rows": found, "seconds": time.perf_counter() - start}

        ran = cache.get(f"seed-{seed}", once) if cache is not None else once()
        rows += [{**row, "seed": seed} for row in ran["rows"]]
        seconds.append(ran["seconds"])
        if log is not None:
            log(f"seed {seed}: {seconds[-1]:.0f} s")
    return rows, seconds


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _groups(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


def summarise(
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    metrics: Sequence[str],
    ranges: Sequence[str] = (),
    by_seed: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per setting (rows sharing ``keys``), in first-seen order.

    Each metric becomes its mean over seeds, ``<metric>_ci`` (95% half-width) and ``<metric>_n``
    (seeds where it is defined: a non-numeric value such as "" counts as undefined); each metric in
    ``ranges`` also gets ``<metric>_low`` and ``<metric>_high``, its range over seeds (what
    :func:`inside_ranges` checks a new seed against); each metric in ``by_seed`` (default: every
    metric) also gets ``<metric>_by_seed``, its value per seed (``{"10": 71.9, ...}``), so that any two
    settings of the file can later be paired seed by seed (the literature-agreement page does, for the
    pairs papers name, offsets included). Other fields are taken from the setting's first row;
    ``seeds`` counts its rows.

    Examples:
        >>> rows = [{"m": "a", "seed": 10, "acc": 50.0}, {"m": "a", "seed": 11, "acc": 60.0}]
        >>> summarise(rows, ("m",), ("acc",))[0]["acc_by_seed"]
        {'10': 50.0, '11': 60.0}
    """
    by_seed = metrics if by_seed is None else by_seed
    out = []
    for members in _groups(rows, keys).values():
        row = {k: v for k, v in members[0].items() if k not in metrics and k != "seed"}
        for metric in metrics:
            values = [_number(m.get(metric)) for m in members]
            row.update(interval_fields(metric, values))
            if metric in ranges:
                row.update(range_fields(metric, values))
            if metric in by_seed:
                row[f"{metric}_by_seed"] = {
                    str(m["seed"]): value for m, value in zip(members, values) if value is not None
                }
        row["seeds"] = len(members)
        out.append(row)
    return out


def inside_ranges(
    published: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Each value of ``rows`` (new seeds) against the published range of its setting, bounds included.

    ``published`` are summary rows carrying ``<metric>_low`` and ``<metric>_high`` (:func:`summarise`);
    a row's setting is its ``keys`` fields. Returns one row per defined value: the setting, ``seed``,
    ``metric``, ``value``, ``low``, ``high`` and ``inside``. A new setting, or a metric without a
    published range, is an error: the check would otherwise pass by skipping it.

    Examples:
        >>> published = [{"method": "a", "f1_low": 80.0, "f1_high": 99.0}]
        >>> [c["inside"] for c in inside_ranges(published, [{"method": "a", "seed": 40, "f1": 99.0},
        ...                                                  {"method": "a", "seed": 41, "f1": 70.0}], ("method",), ("f1",))]
        [True, False]
    """
    ranges = {tuple(row.get(k) for k in keys): row for row in published}
    out = []
    for row in rows:
        setting = tuple(row.get(k) for k in keys)
        if setting not in ranges:
            raise ValueError(f"no published row for {dict(zip(keys, setting))}")
        for metric in metrics:
            value = _number(row.get(metric))
            if value is None:
                continue
            low, high = (_number(ranges[setting].get(f"{metric}_{end}")) for end in ("low", "high"))
            if low is None or high is None:
                raise ValueError(f"published row {dict(zip(keys, setting))} has no range for {metric!r}")
            check = {"metric": metric, "value": value, "low": low, "high": high, "inside": low <= value <= high}
            out.append({**dict(zip(keys, setting)), "seed": row.get("seed"), **check})
    return out


def range_report(checks: Sequence[dict[str, Any]], reported: int) -> list[str]:
    """Lines saying how many checked values (:func:`inside_ranges`) landed inside, per metric, and the misses.

    ``reported`` is the number of seeds the ranges were taken over; each line states the least
    probability of landing inside (:func:`~reference_impls.common.seed_stats.range_coverage`).
    """
    coverage = range_coverage(reported)
    lines = []
    for metric in dict.fromkeys(c["metric"] for c in checks):
        mine = [c for c in checks if c["metric"] == metric]
        inside = sum(c["inside"] for c in mine)
        lines.append(
            f"{metric}: {inside} of {len(mine)} values inside the range of the {reported} reported seeds "
            f"(expected at least {coverage:.1%}, about {coverage * len(mine):.0f})"
        )
    for c in checks:
        if not c["inside"]:
            setting = ", ".join(
                f"{k} {v}" for k, v in c.items() if k not in ("metric", "value", "low", "high", "inside")
            )
            lines.append(
                f"  outside: {c['metric']} {c['value']:.1f} not in [{c['low']:.1f}, {c['high']:.1f}] ({setting})"
            )
    return lines


def check_published(
    published: Path | str, rows: Sequence[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Check new seeds' ``rows`` against the ranges of the results file ``published``; print and return the checks.

    The file's reported seeds must not include the checked ones (a seed inside its own range proves
    nothing); a reused seed, a setting or metric the file has no range for, is a ``SystemExit`` naming
    the file. Prints :func:`range_report` over the file's reported seeds; returns :func:`inside_ranges`.
    """
    results = load_results(Path(published))
    reported = results.seeds.get("reported", [])
    reused = sorted({r.get("seed") for r in rows} & set(reported))
    if reused:
        raise SystemExit(f"error: {published}: seeds {reused} are among its reported seeds; check seeds nobody used")
    try:
        checks = inside_ranges(results.rows, rows, keys, metrics)
    except ValueError as error:
        raise SystemExit(f"error: {published}: {error}") from None
    for line in range_report(checks, len(reported)):
        print(line)
    return checks


def paired_tests(
    rows: Sequence[dict[str, Any]],
    metric: str,
    reference: str,
    within: Sequence[str] = (),
    by: str = "method",
    versus: Sequence[str] | None = None,
    higher: str = "higher",
) -> list[dict[str, Any]]:
    """``reference`` against every other ``by`` value (or those in ``versus``), paired by seed.

    Rows are compared only within groups that share the ``within`` fields (for example the same
    budget); each test row carries those fields, the metric label names them, and its ``family`` is the
    compared method's (the reference's when that is empty).
    """
    out = []
    for key, members in _groups(rows, within).items():
        seeds = sorted({r["seed"] for r in members})
        table = {(r[by], r["seed"]): _number(r.get(metric)) for r in members}
        family = {r[by]: r.get("family", "") for r in members}
        names = [n for n in dict.fromkeys(r[by] for r in members) if versus is None or n == reference or n in versus]
        per_seed = {n: [table.get((n, s)) for s in seeds] for n in names}
        per_seed = {n: v for n, v in per_seed.items() if all(x is not None for x in v)}
        if reference not in per_seed or len(seeds) < 2:
            continue
        label = metric + "".join(f", {k} {v}" for k, v in zip(within, key))
        for test in paired_rows(label, per_seed, reference, higher=higher):
            test["family"] = family[test["versus"]] or family[reference]
            out.append({**dict(zip(within, key)), **test})
    return out


def compare_rows(a: dict[str, Any], b: dict[str, Any], metric: str = "accuracy", names: tuple[str, str] | None = None):
    """Two summary rows of one results file compared seed by seed from their ``<metric>_by_seed``
    (:func:`summarise`): the :func:`~reference_impls.common.seed_stats.compare` of ``a`` against ``b``.
    Any two settings can be paired this way, not only those the benchmark's tests file names.

    Examples:
        >>> a = {"method": "x", "acc_by_seed": {"10": 60.0, "11": 62.0, "12": 61.0, "13": 64.0, "14": 60.0, "15": 66.0}}
        >>> b = {"method": "y", "acc_by_seed": {"10": 50.0, "11": 52.0, "12": 55.0, "13": 50.0, "14": 51.0, "15": 49.0}}
        >>> compare_rows(a, b, "acc").verdict
        'x higher than y by 11 on average (sign test p = 0.031, n = 6)'
    """
    left, right = a.get(f"{metric}_by_seed"), b.get(f"{metric}_by_seed")
    if not isinstance(left, dict) or not isinstance(right, dict) or sorted(left) != sorted(right):
        raise ValueError(f"both rows need {metric}_by_seed over the same seeds")
    seeds = sorted(left)
    first, second = names or (str(a.get("method")), str(b.get("method")))
    return compare(first, [left[s] for s in seeds], second, [right[s] for s in seeds])


def interval_columns(columns: Sequence[Column], metrics: Sequence[str]) -> list[Column]:
    """``columns`` with a "± 95% CI" column after each metric's, and a final ``seeds`` column."""
    out: list[Column] = []
    for column in columns:
        out.append(column)
        if column.key in metrics:
            out.append(Column(f"{column.key}_ci", "± 95% CI", column.unit, column.digits))
    return [*out, Column("seeds", "Seeds")]


def save_seeded(
    results: Results,
    tests: list[dict[str, Any]],
    seeds: Seeds,
    reference: str,
    directory: Path | str | None = None,
    notes: str = "",
) -> list[Path]:
    """Save ``results`` with its seed lists, and its paired tests as ``<id>-tests`` (when there are any)."""
    results.seeds = seeds.record()
    paths = [save_results(results, directory)]
    if tests:
        table = paired_tests_results(
            f"{results.id}-tests",
            f"{results.title}: paired tests over seeds",
            results.command,
            results.families,
            tests,
            seeds.record(),
            reference,
            notes,
            ablation=results.ablation,
        )
        paths.append(save_results(table, directory))
    return paths


def parse_seeded(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    tuning: Sequence[int] = (),
    reported: Sequence[int] = REPORTED,
) -> tuple[argparse.Namespace, Seeds]:
    """Add ``--seeds`` and ``--out`` to a benchmark's parser, parse ``argv`` and build its :class:`Seeds`."""
    seed_arguments(parser, reported)
    parser.add_argument("--out", default=None, help="directory for the results JSON (default: reference_impls/results)")
    args = parser.parse_args(argv)
    return args, seeds_from_args(args, tuning, reported)


def reword_tests(path: Path | str) -> bool:
    """Rephrase every verdict of the tests file ``path`` from its stored fields; True when the file changed.

    Numbers, date and environment are kept (the benchmark is not re-run); the file is rewritten only
    when a verdict's wording changed.
    """
    path = Path(path)
    results = load_results(path)
    if results.id != path.stem:
        raise ValueError(f"{path}: id {results.id!r} does not match the file name")
    rows = []
    for index, row in enumerate(results.rows):
        try:
            rows.append({**row, "verdict": row_verdict(row)})
        except KeyError as missing:
            raise ValueError(f"{path}: row {index} lacks the field {missing}, which a tests row needs") from None
        except ValueError as error:
            raise ValueError(f"{path}: row {index}: {error}") from None
    if rows == results.rows:
        return False
    results.rows = rows
    save_results(results, path.parent)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rephrase the verdicts of paired-tests results files.")
    parser.add_argument("files", nargs="*", type=Path, help="tests files (default: every *-tests.json in results)")
    args = parser.parse_args(argv)
    for path in args.files or sorted(RESULTS_DIR.glob("*-tests.json")):
        try:
            changed = reword_tests(path)
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {error}") from None
        print(("reworded " if changed else "unchanged ") + str(path))


if __name__ == "__main__":
    main()
