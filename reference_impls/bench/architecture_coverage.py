"""Which method runs on which VLM architecture: the coverage table of the site.

Runs :func:`reference_impls.common.architectures.coverage.coverage_rows` (every matrix method on a
tiny random model of every architecture transformers 5.24 ships that the atlas knows: no-op
setting equal to the unmodified model, reduced setting acts; see that module) and writes
``reference_impls/results/architecture-coverage.json``: one row per method, one column per
architecture, ``yes`` or ``refused (Rn)`` with the reasons listed in the notes.
``tests/test_architectures.py`` reruns the matrix and checks the committed file still matches it.

Run from the repository root (about 25 s of CPU time on one thread, 60 s wall on a
busy machine)::

    python -m reference_impls.bench.architecture_coverage
"""

from __future__ import annotations

import argparse

import torch

from reference_impls.common.architectures.coverage import coverage_rows, left_out_note
from reference_impls.common.architectures.zoo import ARCHITECTURES
from reference_impls.common.results import Column, Results, command_line, save_results
from reference_impls.registry import get_method

__all__ = ["coverage_results", "main"]

RESULTS_ID = "architecture-coverage"


def column_key(arch: str) -> str:
    """The results column of an architecture (results keys are identifiers: ``qwen2.5-vl`` -> ``qwen2_5_vl``)."""
    return arch.replace("-", "_").replace(".", "_")


def coverage_results(cells: list[dict], command: str) -> Results:
    """The results file for ``cells`` (the output of ``coverage_rows``)."""
    reasons: list[str] = []
    rows: dict[str, dict] = {}
    for cell in cells:
        name = cell["method"]
        row = rows.setdefault(name, {"method": name, "family": get_method(name).family})
        if cell["status"] == "supported":
            row[column_key(cell["architecture"])] = "yes"
        elif cell["status"] == "refused":
            if cell["reason"] not in reasons:
                reasons.append(cell["reason"])
            row[column_key(cell["architecture"])] = f"refused (R{reasons.index(cell['reason']) + 1})"
        else:
            row[column_key(cell["architecture"])] = f"FAILED: {cell['reason']}"
    notes = (
        "Each cell ran the method on a tiny random model of the architecture (2 text layers, hidden 32, one "
        "image; built in code by reference_impls/common/architectures/zoo.py). yes: at the no-op setting "
        "(budget 1.0; alpha 0 for VCD and PAI; a speculative draft that sees every visual token) the greedy "
        "tokens equal the unmodified model's and the logits agree within 1e-5 (most exactly), and at a reduced "
        "setting the method acts (fewer KV bytes or visual tokens kept, or changed logits). refused: the method "
        "raises an error that names what is missing instead of running wrongly. "
        + " ".join(f"R{i + 1}: {reason}." for i, reason in enumerate(reasons))
        + " Gemma 3: KV-cache methods refuse once a sequence outgrows a sliding-window layer's window (the "
        "matrix prompt fits in it); layer-drop methods refuse when a pruned layer uses a sliding window (the "
        "tiny model's layer 0 does, as five of every six layers of the released models). Qwen3-VL: pruning is "
        "refused up to the last DeepStack layer (layer 0 here, layers 0-2 in the released models). "
        "To apply a method to your own checkpoint: python -m reference_impls run --model LOCAL_DIR --method "
        'NAME --budget 0.2 --image a.png --question "..." (README, section Apply a method to your checkpoint). '
        f"Rows are every registered method except: {left_out_note()}."
    )
    families = sorted({row["family"] for row in rows.values()})
    columns = [Column("method", "Method")] + [Column(column_key(arch), arch) for arch in ARCHITECTURES]
    return Results(
        id=RESULTS_ID,
        title="Method coverage across VLM architectures (transformers 5.24, tiny random models)",
        command=command,
        families=families,
        columns=columns,
        rows=list(rows.values()),
        notes=notes,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = coverage_results(coverage_rows(), command_line("reference_impls.bench.architecture_coverage", argv))
    path = save_results(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
