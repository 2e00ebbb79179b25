"""The prefilling benchmark on ToyVLM v2's chat suites, with a tiny random-init v2 bundle."""

import json

import pytest
import torch

from reference_impls.common import seeded
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.prefilling import bench


def test_prefilling_bench_runs_on_a_v2_suite(tmp_path):
    torch.set_num_threads(1)
    checkpoint = tmp_path / "toy"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    names = ("fastv", "pyramiddrop", "pyramiddrop+renumber", "block-sparse", "random@0")
    results, tests = bench.run_chat(
        "short",
        n=1,
        budgets=(0.25,),
        checkpoint=str(checkpoint),
        seeds=seeded.Seeds((1, 2), (3,)),
        names=names,
        log=lambda *_: None,
    )
    assert results.id == "prefilling-toyvlm-v2-short"
    rows = {row["method"]: row for row in results.rows}
    assert set(rows) == {"none (all tokens)", *names}
    assert rows["none (all tokens)"]["visual_tokens"] == 1024
    assert rows["random@0"]["visual_tokens"] == rows["fastv"]["visual_tokens"] == 256  # 25% of 16 x 64 tokens
    assert rows["block-sparse"]["visual_tokens"] == 1024  # reads fewer key blocks, drops no token
    assert all({"needle_accuracy", "reply_tokens", "decode_ms"} <= set(row) for row in rows.values())
    versus = {(t["method"], t["versus"]) for t in tests}
    assert ("random@0", "fastv") in versus and ("pyramiddrop", "pyramiddrop+renumber") in versus


def test_command_line_writes_v2_results(tmp_path, monkeypatch):
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    every = bench.method_factories  # two methods keep the run short: the command line and files are checked
    monkeypatch.setattr(
        bench, "method_factories", lambda n: {k: v for k, v in every(n).items() if k in ("fastv", "random@0")}
    )
    bench.main(["--suite", "long", "--checkpoint", str(checkpoint), "--n", "1", "--seeds", "2", "3", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "prefilling-toyvlm-v2-long-tests.json",
        "prefilling-toyvlm-v2-long.json",
    ]
    data = json.loads((out / "prefilling-toyvlm-v2-long.json").read_text())
    assert data["command"].startswith("python -m reference_impls.prefilling.bench --suite long")
    assert {row["budget"] for row in data["rows"]} == {1.0, *bench.CHAT_BUDGETS}


def test_methods_option_writes_its_own_results_with_the_comparators(tmp_path):
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "short", "--checkpoint", str(checkpoint), "--n", "1", "--seeds", "2", "3", "--out", str(out)]
    bench.main([*argv, "--methods", "trim,trim+similar", "--tag", "question-guided"])
    assert sorted(p.name for p in out.iterdir()) == [
        "prefilling-toyvlm-v2-short-question-guided-tests.json",
        "prefilling-toyvlm-v2-short-question-guided.json",
    ]
    data = json.loads((out / "prefilling-toyvlm-v2-short-question-guided.json").read_text())
    assert {row["method"] for row in data["rows"]} == {"none (all tokens)", "trim", "trim+similar", "random@0"}
    assert data["families"] == ["prefilling-question-guided"]
    assert "--methods trim,trim+similar --tag question-guided" in data["command"]
    tests = json.loads((out / "prefilling-toyvlm-v2-short-question-guided-tests.json").read_text())
    versus = {(row["method"], row["versus"]) for row in tests["rows"]}
    assert ("random@0", "trim") in versus and ("trim", "trim+similar") in versus


def test_methods_option_refuses_unknown_names():
    with pytest.raises(SystemExit):
        bench.main(["--suite", "short", "--methods", "trim,nope"])
