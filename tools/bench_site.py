"""``bench-site``: time validate and the full build on N synthetic entries; report the site size.

The entries are synthetic (random words, unique ids) but shaped like real ones, placed on random
taxonomy nodes, one in ten with reported numbers. The seed papers the taxonomy names are kept.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

from .catalog import ROOT, load_catalog
from .entries import write_entries
from .sandbox import make_sandbox
from .site.build import build_site

__all__ = ["bench_site", "synthetic_entry"]

_WORDS = (
    "visual token pruning cache attention efficient multimodal video decoding sparse adaptive dynamic "
    "fast compression merging layer head budget vision language model inference long context streaming "
    "hierarchical frame resolution encoder projector speculative draft reasoning quantization retrieval"
).split()


def synthetic_entry(index: int, node_ids: list[str], rng: random.Random) -> dict:
    title = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 12))).capitalize() + f" {index}"
    year = rng.randint(2019, 2026)
    arxiv = f"{year % 100:02d}{rng.randint(1, 12):02d}.{index:05d}"
    entry = {
        "key": f"synthetic{year}p{index:05d}",
        "title": title,
        "authors": [f"Author{rng.randint(1, 5000)} Surname{rng.randint(1, 5000)}" for _ in range(rng.randint(0, 8))],
        "year": year,
        "venue": rng.choice(["arXiv", "CVPR", "NeurIPS", "ICLR", "ACL", "TPAMI"]),
        "arxiv": arxiv,
        "url": f"https://arxiv.org/abs/{arxiv}",
        "code": f"https://github.com/example/repo{index}" if rng.random() < 0.5 else "",
        "placement": [rng.choice(node_ids)],
        "tags": rng.sample(["video", "training-free", "kv-cache", "token-pruning", "benchmark"], 2),
        "added": "2026-11-26",
    }
    if rng.random() < 0.1:
        entry["reported"] = [
            {
                "metric": "speedup",
                "value": round(rng.uniform(1, 4), 2),
                "unit": "x",
                "setting": "synthetic",
                "source": "Table 1",
            }
        ]
    return entry


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def bench_site(root: Path = ROOT, n: int = 10000, keep: bool = False, seed: int = 0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    try:
        catalog = load_catalog(root)
        sandbox = make_sandbox(workdir / "repo", [topic.source for topic in catalog.taxonomy.topics], source=root)
        node_ids = sorted(catalog.taxonomy.by_id)
        rng = random.Random(seed)
        write_entries(sandbox / "papers", [synthetic_entry(index, node_ids, rng) for index in range(n)])
        total = n + len(catalog.taxonomy.topics)

        start = time.perf_counter()
        checked = load_catalog(sandbox)
        validate_s = time.perf_counter() - start
        if checked.errors:
            print("\n".join(map(str, checked.errors[:10])))
            return 1

        start = time.perf_counter()
        status = build_site(sandbox, execute_notebooks=False)
        full_build_s = time.perf_counter() - start
        if status:
            return status
        site = sandbox / "site"
        site_bytes = _size(site)
        search_bytes = _size(site / "search")
        print(f"entries:            {total}")
        print(f"validate:           {validate_s:.2f} s")
        print(f"full build:         {full_build_s:.2f} s (validate + generate + mkdocs build --strict)")
        print(
            f"site size:          {site_bytes / 1e6:.1f} MB, {site_bytes / total / 1e3:.1f} KB per entry "
            f"(search index {search_bytes / 1e6:.1f} MB)"
        )
        return 0
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
