"""The stage cost model reproduces the seed survey's example and behaves like a roofline."""

from reference_impls.common.cost_model import (
    A100,
    GPUS,
    QWEN25_VL_7B,
    QWEN25_VL_72B,
    ModelSpec,
    Workload,
    kv_cache_bytes,
    stage_costs,
    visual_tokens,
)
from reference_impls.common.tiny import tiny_qwen25vl_config


def test_survey_example_72b_twenty_images():
    work = Workload(images=20, width=1260, height=1260)
    assert visual_tokens(1260, 1260) == 45 * 45
    assert work.tokens(QWEN25_VL_72B) > 40_000
    assert kv_cache_bytes(QWEN25_VL_72B, work.tokens(QWEN25_VL_72B)) > 13e9


def test_kv_bytes_counts_kv_heads():
    # 7B: 28 layers x 4 KV heads x 128 dims x 2 (K and V) x 2 bytes = 57,344 bytes per token
    assert kv_cache_bytes(QWEN25_VL_7B, 1) == 2 * 28 * 4 * 128 * 2
    assert QWEN25_VL_7B.r_kv == 4 / 28


def test_parameter_counts_match_model_names():
    assert 6.5e9 < QWEN25_VL_7B.llm_params() < 7.7e9
    assert 70e9 < QWEN25_VL_72B.llm_params() < 73e9
    assert 0.6e9 < QWEN25_VL_7B.vision_params() < 0.7e9


def test_roofline_regimes():
    for gpu in GPUS:
        costs = stage_costs(QWEN25_VL_7B, Workload(images=4), gpu)
        assert costs["prefill"].bound == "compute"
        assert costs["encode"].bound == "compute"
        assert costs["decode"].bound == "memory"
        assert costs["ttft_s"] == costs["encode"].seconds + costs["prefill"].seconds
    # decoding is bandwidth-bound, so the faster memory of the H200 lowers TPOT
    assert (
        stage_costs(QWEN25_VL_7B, Workload(), GPUS[2])["tpot_s"]
        < stage_costs(QWEN25_VL_7B, Workload(), GPUS[1])["tpot_s"]
    )


def test_more_images_cost_more():
    few = stage_costs(QWEN25_VL_7B, Workload(images=1), A100)
    many = stage_costs(QWEN25_VL_7B, Workload(images=8), A100)
    assert many["ttft_s"] > 7 * few["ttft_s"] * 0.9
    assert many["kv_bytes"] > 7 * few["kv_bytes"]


def test_from_transformers_config():
    spec = ModelSpec.from_config(tiny_qwen25vl_config(), name="tiny")
    assert spec.layers == 3 and spec.hidden == 32 and spec.kv_heads == 2
    assert kv_cache_bytes(spec, 10) == 2 * 3 * 10 * 2 * 8 * 2
