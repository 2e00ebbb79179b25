"""Statistics over seeds: a mean with its 95% interval, and paired tests between two methods.

A reproduced comparison ("A forgets less than B") is only worth stating when it survives the seeds.
Every benchmark that trains or samples reports, per configuration, the mean over reported seeds with
a Student-t 95% confidence interval, and a finding that says "A beats B" cites a paired test over the
same seeds: the exact two-sided sign test and a paired bootstrap of the mean difference. Below the
threshold (p < 0.05) a finding says "no significant difference".

Whether a new seed agrees with the published numbers is a different question from where the mean
lies: the 95% interval of the mean narrows as seeds are added, while a single new seed scatters as
widely as the reported seeds do. The published range for one more seed is the lowest and highest value
over the reported seeds (:func:`range_fields`): if the seeds are exchangeable (each a draw of the
same random process), a new seed lands inside it with probability at least (n - 1) / (n + 1)
(:func:`range_coverage`: 90.5% for 20 seeds), whatever the distribution -- bimodal, discrete or
tied -- while a normal prediction interval assumes a shape that a failure mode on a few seeds breaks.

Seeds used to calibrate or tune anything (a threshold, a learning rate, rho) are never among the
reported seeds; :func:`disjoint_seeds` checks that and results files record both lists.

Examples:
    >>> iv = mean_interval([1.0, 2.0, 3.0, 4.0])
    >>> round(iv.mean, 2), round(iv.low, 2), round(iv.high, 2)
    (2.5, 0.45, 4.55)
    >>> sign_test([3, 4, 5, 6, 7, 8, 9, 10], [1, 1, 1, 1, 1, 1, 1, 1]).p_value
    0.0078125
    >>> compare("sare", [1, 2, 3], "npo", [1, 2, 3]).verdict
    'no significant difference between sare and npo (sign test p = 1, n = 3, 3 ties)'
    >>> compare("vcd", [0, 0, 0, 0, 0], "base", [90, 88, 91, 93, 90]).verdict
    'no significant difference between vcd and base (sign test p = 0.062, n = 5); with 5 untied seeds the sign test cannot reach p < 0.05'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _stats

__all__ = [
    "Comparison",
    "Interval",
    "PairedTest",
    "mean_interval",
    "sign_test",
    "paired_bootstrap",
    "compare",
    "verdict",
    "row_verdict",
    "disjoint_seeds",
    "sign_test_can_reject",
    "interval_fields",
    "range_fields",
    "range_coverage",
    "paired_rows",
]

ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    """Mean over seeds and its two-sided 95% Student-t confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}]"


@dataclass(frozen=True)
class PairedTest:
    """Outcome of a paired comparison of two methods over the same seeds.

    ``mean_difference`` is mean(a - b); ``wins`` counts seeds with a > b, ``losses`` a < b, and
    ``ties`` a == b (ties carry no information in the sign test and are dropped from it).
    """

    test: str
    p_value: float
    mean_difference: float
    wins: int
    losses: int
    ties: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with a Student-t confidence interval (degenerate for one value)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"mean_interval needs finite values, got {list(values)!r}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    t = float(_stats.t.ppf((1 + confidence) / 2, df=x.size - 1))
    return Interval(mean, mean - t * sem, mean + t * sem, int(x.size))


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired tests need two equally long, non-empty lists (got {len(a)} and {len(b)})")
    return np.asarray(a, dtype=float) - np.asarray(b, dtype=float)


def sign_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Exact two-sided sign test of ``a`` against ``b`` paired by position (one pair per seed)."""
    d = _paired(a, b)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    p = 1.0 if n == 0 else float(_stats.binomtest(wins, n, 0.5, alternative="two-sided").pvalue)
    return PairedTest("sign test", p, float(d.mean()), wins, losses, int(d.size - n))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """Two-sided paired bootstrap of mean(a - b): how often a resampled mean crosses zero.

    The p-value is twice the smaller tail of the resampled mean differences around 0 (clipped to 1),
    the percentile-interval test; it is deterministic given ``seed``.
    """
    d = _paired(a, b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)  # (resamples,)
    if np.all(d == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return PairedTest("paired bootstrap", p, float(d.mean()), wins, losses, int(d.size - wins - losses))


@dataclass(frozen=True)
class Comparison:
    """A sentence-ready comparison: the sign test decides, the bootstrap is reported beside it."""

    sign: PairedTest
    bootstrap: PairedTest
    verdict: str


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], higher: str = "higher") -> Comparison:
    """Compare two methods over paired seeds and phrase the outcome for a finding.

    Args:
        name_a, name_b: method names used in the sentence.
        a, b: one value per seed, same seed order.
        higher: the word for "greater value" in the sentence (for example "lower hallucination" when
            the caller passes negated values; by default the verdict just says "higher").
    """
    sign, boot = sign_test(a, b), paired_bootstrap(a, b)
    return Comparison(sign, boot, verdict(name_a, name_b, sign, higher))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def verdict(name_a: str, name_b: str, sign: PairedTest, higher: str = "higher") -> str:
    """The sentence of :func:`compare` for a sign test of ``name_a`` against ``name_b``.

    Examples:
        >>> verdict("a", "b", PairedTest("sign test", 1.0, 0.1, 1, 0, 5))
        'no significant difference between a and b (sign test p = 1, n = 6, 5 ties); with 1 untied seed the sign test cannot reach p < 0.05'
    """
    untied = sign.wins + sign.losses
    stat = f"sign test p = {sign.p_value:.2g}, n = {untied + sign.ties}"
    if sign.ties:
        stat += f", {_count(sign.ties, 'tie')}"
    if sign.significant:
        first, second = (name_a, name_b) if sign.mean_difference > 0 else (name_b, name_a)
        return f"{first} {higher} than {second} by {abs(sign.mean_difference):.2g} on average ({stat})"
    sentence = f"no significant difference between {name_a} and {name_b} ({stat})"
    if untied and not sign_test_can_reject(untied):
        sentence += f"; with {_count(untied, 'untied seed')} the sign test cannot reach p < {ALPHA}"
    return sentence


def sign_test_can_reject(n: int, alpha: float = ALPHA) -> bool:
    """Whether ``n`` untied pairs can give a two-sided sign-test p below ``alpha`` at all.

    The smallest p is ``2 / 2**n`` (every pair one way): 0.0625 for 5 seeds, 0.031 for 6, so a
    benchmark that states comparisons needs at least 6 reported seeds.

    Examples:
        >>> sign_test_can_reject(5), sign_test_can_reject(6)
        (False, True)
    """
    return n > 0 and 2 / 2**n < alpha


def disjoint_seeds(tuning: Sequence[int], reported: Sequence[int]) -> None:
    """Raise if a seed used for calibration or tuning is also a reported seed."""
    shared = sorted(set(tuning) & set(reported))
    if shared:
        raise ValueError(f"seeds {shared} are used both for tuning and for reported results; keep them disjoint")


def interval_fields(key: str, values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Results-row fields for one metric over seeds: ``key`` (mean), ``key_ci`` (95% half-width), ``key_n``.

    Seeds where the metric is undefined (None or NaN) are left out and counted by ``key_n``.
    """
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return {key: None, f"{key}_ci": None, f"{key}_n": 0}
    iv = mean_interval(kept)
    return {key: iv.mean, f"{key}_ci": iv.half_width if iv.n > 1 else None, f"{key}_n": iv.n}


def range_fields(key: str, values: Sequence[float | None]) -> dict[str, float | None]:
    """Results-row fields ``key_low`` and ``key_high``: the lowest and highest value over seeds.

    Together they are the distribution-free range a new seed's value is checked against
    (:func:`range_coverage`); undefined values (None or NaN) are left out.

    Examples:
        >>> range_fields("f1", [97.0, None, 78.5, 99.0])
        {'f1_low': 78.5, 'f1_high': 99.0}
    """
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return {f"{key}_low": min(kept, default=None), f"{key}_high": max(kept, default=None)}


def range_coverage(n: int) -> float:
    """Least probability that one more exchangeable seed lands inside the range of ``n`` seeds (bounds included).

    Among ``n + 1`` exchangeable values the new one is the strict minimum with probability at most
    ``1 / (n + 1)``, and likewise the strict maximum, whatever their distribution.

    Examples:
        >>> round(range_coverage(10), 3), round(range_coverage(20), 3), range_coverage(39)
        (0.818, 0.905, 0.95)
    """
    if n < 1:
        raise ValueError(f"range_coverage needs at least one seed, got {n}")
    return (n - 1) / (n + 1)


def paired_rows(
    metric: str, per_seed: dict[str, Sequence[float]], reference: str, family: str = "", higher: str = "higher"
) -> list[dict]:
    """One results row per (reference, other method) pair: mean difference, wins, sign-test and bootstrap p.

    ``per_seed`` maps a method to its values in the same seed order; methods with a missing value on
    any seed are skipped (they cannot be paired).
    """
    rows = []
    ref = per_seed[reference]
    for name, values in per_seed.items():
        if name == reference or any(v is None or math.isnan(v) for v in [*values, *ref]):
            continue
        result = compare(reference, ref, name, values, higher=higher)
        rows.append(
            {
                "metric": metric,
                "method": reference,
                "versus": name,
                "family": family,
                "mean_difference": result.sign.mean_difference,
                "wins": result.sign.wins,
                "losses": result.sign.losses,
                "ties": result.sign.ties,
                "sign_p": result.sign.p_value,
                "bootstrap_p": result.bootstrap.p_value,
                "verdict": result.verdict,
            }
        )
    return rows


def row_verdict(row: dict) -> str:
    """The verdict of a stored :func:`paired_rows` row, phrased anew from its stored sign-test fields.

    A verdict depends only on the sign test (p-value, mean difference, wins, losses, ties), all kept in
    the row, so a tests file written under older wording is rephrased without its per-seed values or a
    re-run. The comparison word (``higher`` of :func:`compare`) is read back from the stored verdict of
    a significant row.

    Examples:
        >>> row = {"method": "a", "versus": "b", "mean_difference": -2.0, "wins": 0, "losses": 6, "ties": 0}
        >>> row_verdict({**row, "sign_p": 0.03125, "verdict": "b forgets more than a by 2 on average (...)"})
        'b forgets more than a by 2 on average (sign test p = 0.031, n = 6)'
    """
    sign = PairedTest("sign test", row["sign_p"], row["mean_difference"], row["wins"], row["losses"], row["ties"])
    higher = "higher"
    if sign.significant:
        first, second = (row["method"], row["versus"]) if sign.mean_difference > 0 else (row["versus"], row["method"])
        head, found, _ = str(row.get("verdict", "")).partition(f" than {second} by ")
        if not found or not head.startswith(f"{first} "):
            raise ValueError(
                f"tests row {row['method']!r} vs {row['versus']!r}: verdict {row.get('verdict')!r} does not read "
                f"'{first} <comparison> than {second} by ...', so its comparison word cannot be kept"
            )
        higher = head[len(first) + 1 :]
    return verdict(row["method"], row["versus"], sign, higher)
