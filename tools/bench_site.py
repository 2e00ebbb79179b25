"""``bench-site``: time validate and the full build on N synthetic entries; report the site size;
then time the preview: how long ``serve`` takes to show an edit.

The entries are synthetic (random words, unique ids) but shaped like real ones, placed on random
taxonomy nodes, one in ten with reported numbers. The seed papers the taxonomy names are kept.

The preview runs ``python -m tools serve`` on a copy of the real data (every entry, the taxonomy,
the notebooks and their renders), then edits one paper's title, one family's findings and one
notebook render, and times each from the write until the served page shows the new text.
Figures are printed and written as JSON with the machine's load average before and after, and
the build's CPU time (generation, mkdocs): on shared cores the wall time also counts the waits for
other work, so compare builds by CPU time, or by wall time at the same load. The build uses two
processes where it may (tools/site/forked.py: a chart child in generation, a page worker in mkdocs);
the figures say how many, what each used, and the CPU of the build's own processes, about the wall
time on idle cores. ``ATLAS_SITE_WORKERS=1`` measures the serial build.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .catalog import ROOT, load_catalog
from .entries import entry_text, write_entries
from .nav import node_page
from .sandbox import make_sandbox
from .site.build import generate_pages, mkdocs_build
from .site.forked import worker_count
from .site.page_workers import REPORT_VARIABLE
from .yamlio import write_text_atomic

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


def _children_cpu() -> float:
    """CPU seconds used by finished child processes (mkdocs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def bench_build(root: Path, n: int, keep: bool = False, seed: int = 0) -> dict | None:
    """Validate and build ``n`` synthetic entries (plus the taxonomy's seed papers); None on failure."""
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
            return None

        load_before = _load()
        workers = worker_count()
        start, cpu_start, children_start = time.perf_counter(), time.process_time(), _children_cpu()
        status = generate_pages(sandbox, execute_notebooks=False)
        generate_s, generate_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        children_mid = _children_cpu()  # the chart child of generate (when there is one) has finished
        report = workdir / "mkdocs-report.json"
        os.environ[REPORT_VARIABLE] = str(report)
        try:
            status = status or mkdocs_build(sandbox)
        finally:
            del os.environ[REPORT_VARIABLE]
        full_build_s = time.perf_counter() - start
        mkdocs_cpu_s = _children_cpu() - children_mid
        if status:
            return None
        mkdocs_run = json.loads(report.read_text(encoding="utf-8"))
        worker_cpu_s = mkdocs_run.get("worker_cpu_s", 0.0) + mkdocs_run.get("worker_build_cpu_s", 0.0)
        site = sandbox / "site"
        site_bytes = _size(site)
        search_bytes = _size(site / "search")
        result = {
            "entries": total,
            "validate_s": round(validate_s, 2),
            "full_build_s": round(full_build_s, 1),
            "generate_s": round(generate_s, 1),
            "mkdocs_s": round(full_build_s - generate_s, 1),
            # CPU seconds (user + system) depend less on what else the shared machine runs.
            "generate_cpu_s": round(generate_cpu_s, 1),
            "generate_child_cpu_s": round(children_mid - children_start, 1),
            "mkdocs_cpu_s": round(mkdocs_cpu_s, 1),
            "mkdocs_main_cpu_s": mkdocs_run["main_cpu_s"],
            "mkdocs_worker_cpu_s": round(worker_cpu_s, 2),
            "mkdocs_worker_rendered": mkdocs_run.get("worker_pages", 0),
            "mkdocs_worker_built": mkdocs_run.get("worker_built", 0),
            "workers": workers,
            # The busier process of each stage: about (at least) the wall time on idle cores.
            "longest_path_cpu_s": round(
                max(generate_cpu_s, children_mid - children_start) + max(mkdocs_run["main_cpu_s"], worker_cpu_s), 1
            ),
            "site_mb": round(site_bytes / 1e6, 1),
            "kb_per_entry": round(site_bytes / total / 1e3, 1),
            "search_index_mb": round(search_bytes / 1e6, 1),
            "load_before": load_before,
            "load_after": _load(),
        }
        print(f"entries:            {total}")
        print(f"validate:           {validate_s:.2f} s")
        print(
            f"full build:         {full_build_s:.2f} s (validate + generate {generate_s:.1f} s + mkdocs build --strict "
            f"{full_build_s - generate_s:.1f} s; goal <= 90 s)"
        )
        child_cpu_s = result["generate_child_cpu_s"]
        print(
            f"CPU time:           generate {generate_cpu_s:.1f} s (+ {child_cpu_s:.1f} s its chart child) + mkdocs "
            f"{mkdocs_cpu_s:.1f} s = {generate_cpu_s + child_cpu_s + mkdocs_cpu_s:.1f} s (user + system; the wall "
            "time above also waits for other work)"
        )
        print(
            f"workers:            {workers} process(es) (ATLAS_SITE_WORKERS=1: one); mkdocs' page workers rendered "
            f"{result['mkdocs_worker_rendered']} and built {result['mkdocs_worker_built']} of "
            f"{mkdocs_run.get('pages', '-')} pages with "
            f"{result['mkdocs_worker_cpu_s']:.1f} s CPU (mkdocs' own process {mkdocs_run['main_cpu_s']:.1f} s); "
            f"the busier process of each stage used {result['longest_path_cpu_s']:.1f} s CPU in all (about the wall "
            f"time on {workers} idle core(s), at least)"
        )
        print(
            f"site size:          {site_bytes / 1e6:.1f} MB, {site_bytes / total / 1e3:.1f} KB per entry "
            f"(goal <= 40; search index {search_bytes / 1e6:.1f} MB)"
        )
        print(
            f"load average:       {load_before} before, {result['load_after']} after (1, 5, 15 min; "
            f"{os.cpu_count()} CPUs)"
        )
        return result
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, text: str, timeout: float, server: subprocess.Popen) -> float | None:
    """Seconds until ``url`` serves a page containing ``text``; None after ``timeout`` or when the
    server has stopped."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if text in response.read().decode("utf-8", "replace"):
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    return None


def _edits(sandbox: Path) -> list[tuple[str, Path, str, str]]:
    """(what, file, old text, new text, page URL path) for one paper, one finding, one notebook render."""
    catalog = load_catalog(sandbox)
    entry = next(entry for entry in catalog.entries if entry.key == "zeng2026hybridkv")
    data = dict(entry.data, title=entry.data["title"] + " previewmark1")
    paper = sandbox / entry.relpath
    node = next(node for node in catalog.taxonomy.nodes() if node.findings)
    taxonomy = node.file
    text = taxonomy.read_text(encoding="utf-8")
    first = node.findings.split()[0]
    at = text.index(first, text.index("findings:", text.index(f"id: {node.id}")))
    render = sandbox / "notebooks" / "_rendered" / "decoding" / "hybridkv" / "index.md"
    return [
        ("paper", paper, entry_text(data), "papers/zeng2026hybridkv/", "previewmark1"),
        (
            "finding",
            taxonomy,
            text[:at] + "previewmark2 " + text[at:],
            node_page(node).removesuffix(".md").removesuffix("/index") + "/",
            "previewmark2",
        ),
        (
            "notebook render",
            render,
            render.read_text(encoding="utf-8") + "\npreviewmark3\n",
            "notebooks/decoding/hybridkv/",
            "previewmark3",
        ),
    ]


def bench_preview(root: Path, keep: bool = False, timeout: float = 900.0) -> dict | None:
    """Start ``serve`` on a copy of the real data; time each edit until the served page shows it."""
    workdir = Path(tempfile.mkdtemp(prefix="atlas-preview-"))
    server = None
    try:
        sandbox = make_sandbox(workdir / "repo", None, source=root)
        (sandbox / "notebooks").unlink()
        shutil.copytree(root / "notebooks", sandbox / "notebooks", ignore=shutil.ignore_patterns("__pycache__"))
        entries = len(list((sandbox / "papers").glob("*.yaml")))
        edits = _edits(sandbox)
        address = f"127.0.0.1:{_free_port()}"
        load_before = _load()
        start = time.perf_counter()
        log = workdir / "serve.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "tools", "--root", str(sandbox), "serve", "--no-execute", "--address", address],
            cwd=sandbox,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://{address}/"
        if _wait_for(base + edits[0][3], "HybridKV", timeout, server) is None:
            print("preview: the server did not come up; its output ends with:")
            print("\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]))
            return None
        startup_s = time.perf_counter() - start
        latencies = {}
        for what, path, new_text, page, marker in edits:
            time.sleep(1.0)  # let the previous rebuild settle
            write_text_atomic(path, new_text)
            waited = _wait_for(base + page, marker, 120.0, server)
            latencies[what] = round(waited, 2) if waited is not None else None
        result = {
            "entries": entries,
            "startup_s": round(startup_s, 1),
            "latency_s": latencies,
            "load_before": load_before,
            "load_after": _load(),
        }
        print(f"preview startup:    {startup_s:.1f} s ({entries} entries: generate + first mkdocs build)")
        for what, seconds in latencies.items():
            shown = f"{seconds:.2f} s" if seconds is not None else "not seen within 120 s"
            print(f"preview, {what + ' edit:':<17} {shown} (goal <= 2 s)")
        print(f"load average:       {load_before} before, {result['load_after']} after")
        return result
    finally:
        if server is not None:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bench_site(
    root: Path = ROOT, n: int = 10000, keep: bool = False, seed: int = 0, preview: bool = True, out: Path | None = None
) -> int:
    """The build benchmark on ``n`` synthetic entries, then (``preview``) the preview latency."""
    results: dict = {"cpus": os.cpu_count()}
    if n:
        results["build"] = bench_build(root, n, keep, seed)
        if results["build"] is None:
            return 1
    if preview:
        results["preview"] = bench_preview(root, keep)
        if results["preview"] is None:
            return 1
    out = out or root / ".cache" / "bench-site.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
