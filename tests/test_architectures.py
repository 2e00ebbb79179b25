"""The method x architecture matrix (tiny random models of 12 VLM families, built in code).

One run of the whole matrix (~25 s of CPU on one thread; rows from the registry) checks, per cell:
the no-op setting gives the unmodified model's tokens (logits within 1e-5), the reduced setting
acts, or the method refuses with an :class:`UnsupportedFeature` message; and the committed
coverage table still matches.
"""

from __future__ import annotations

import json

import pytest
import torch

from reference_impls.bench.architecture_coverage import RESULTS_ID, coverage_results
from reference_impls.common.architectures import (
    UnsupportedArchitecture,
    UnsupportedFeature,
    adapter_for,
)
from reference_impls.common.architectures.coverage import (
    _KIND_NOT_IN_MATRIX,
    MATRIX_METHODS,
    NOT_IN_MATRIX,
    coverage_rows,
    left_out_note,
    run_cell,
)
from reference_impls.common.architectures.mllama import MLLAMA_REASON
from reference_impls.common.architectures.zoo import (
    ARCHITECTURES,
    tiny_config,
    tiny_vlm,
)
from reference_impls.common.results import RESULTS_DIR
from reference_impls.registry import all_methods

ENCODER = (
    "encoding-stage token selection rebuilds the language-model inputs after the vision tower, "
    "not supported on this architecture: "
)
RECORDER = (
    "VisionZip-style attention scoring needs a CLS-free attention recorder for this tower "
    "(only Qwen2.5-VL's windowed ViT has one)"
)


@pytest.fixture(scope="module")
def matrix() -> list[dict]:
    torch.set_num_threads(1)
    return coverage_rows()


def _cell(matrix, method, arch) -> dict:
    return next(c for c in matrix if c["method"] == method and c["architecture"] == arch)


@pytest.mark.parametrize("spec", all_methods(), ids=lambda spec: spec.name)
def test_every_registered_method_is_a_row_unless_left_out_with_a_reason(spec):
    """The rows come from the registry: a new method is a row (and must run or refuse) unless left out."""
    committed = json.loads((RESULTS_DIR / f"{RESULTS_ID}.json").read_text(encoding="utf-8"))
    rows = {row["method"] for row in committed["rows"]}
    left_out = NOT_IN_MATRIX.get(spec.name) or _KIND_NOT_IN_MATRIX.get(spec.kind)
    if left_out is None:
        assert spec.name in MATRIX_METHODS and spec.name in rows
    else:
        assert spec.name not in MATRIX_METHODS and spec.name not in rows
        assert left_out_note() in committed["notes"] and spec.name in left_out_note() and left_out in left_out_note()


def test_left_out_names_are_registered():
    assert set(NOT_IN_MATRIX) <= {spec.name for spec in all_methods()}


@pytest.mark.parametrize("method", MATRIX_METHODS)
def test_no_cell_fails(matrix, method):
    cells = [c for c in matrix if c["method"] == method]
    assert [c["architecture"] for c in cells] == list(ARCHITECTURES)
    failed = [(c["architecture"], c["reason"]) for c in cells if c["status"] not in ("supported", "refused")]
    assert not failed
    assert all(c["reason"] for c in cells if c["status"] == "refused")


def test_supported_cells_reproduce_the_unmodified_model(matrix):
    for cell in matrix:
        if cell["status"] == "supported":
            assert cell["noop_max_logit_gap"] <= 1e-5 and cell["acted"], cell


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "mllama"])
def test_kv_layer_drop_and_hallucination_methods_run_everywhere(matrix, arch):
    for method in (
        "snapkv",
        "h2o",
        "streamingllm",
        "kivi",
        "hybridkv",
        "pyramidkv",
        "adakv",
        "lookm",
        "fastv",
        "sparsevlm",
        "pyramiddrop",
        "op-skip",
        "vcd",
        "pai",
    ):
        assert _cell(matrix, method, arch)["status"] == "supported", (method, arch)


def test_refusals_name_the_missing_feature(matrix):
    assert _cell(matrix, "tome", "llava")["reason"] == ENCODER + (
        "its 1-D positions and feature path are not ported (only Qwen2-VL/Qwen2.5-VL are)"
    )
    deepstack = ENCODER + "its DeepStack visual features would be dropped"
    assert _cell(matrix, "random-pruning", "qwen3-vl")["reason"] == deepstack
    assert _cell(matrix, "speculative", "gemma3")["status"] == "refused"
    assert _cell(matrix, "visionzip", "qwen2-vl")["reason"] == RECORDER
    assert _cell(matrix, "divprune", "qwen3-vl")["reason"] == (
        "pruning before a DeepStack layer is not supported "
        "(first pruned layer 0; qwen3-vl adds visual features after layers [0])"
    )
    sliding = "visual-token pruning at a sliding-window layer (layer 0) is not supported"
    assert _cell(matrix, "divprune", "gemma3")["reason"] == sliding
    # TRIM and VisionSelector select before the LLM (layer 0) as DivPrune does: the same refusals, supported elsewhere.
    for arch in ARCHITECTURES:
        for method in ("trim", "vision-selector"):
            assert _cell(matrix, method, arch)["reason"] == _cell(matrix, "divprune", arch)["reason"], (method, arch)
    assert {c["reason"] for c in matrix if c["architecture"] == "mllama"} == {MLLAMA_REASON}
    for method in ("random-pruning", "tome", "prumerge", "projector-pooling", "visionzip", "speculative"):
        assert _cell(matrix, method, "qwen2.5-vl")["status"] == "supported"


def test_committed_coverage_table_is_current(matrix):
    committed = json.loads((RESULTS_DIR / f"{RESULTS_ID}.json").read_text(encoding="utf-8"))
    current = coverage_results(matrix, committed["command"])
    assert committed["rows"] == current.rows, "rerun: python -m reference_impls.bench.architecture_coverage"
    assert committed["notes"] == current.notes
    assert committed["families"] == current.families


def test_mllama_is_refused_by_name():
    with pytest.raises(UnsupportedArchitecture, match="cross-attention"):
        adapter_for(tiny_config("mllama"))


def test_gemma3_kv_methods_refuse_past_the_sliding_window():
    from reference_impls.decoding.snapkv import SnapKV

    model, inputs = tiny_vlm("gemma3", sliding_window=8)  # shorter than the 27-token prompt
    with pytest.raises(UnsupportedFeature) as error, SnapKV(budget=1.0)(model):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert str(error.value) == (
        "KV-cache methods on a sliding-window layer once the sequence (27 tokens) exceeds "
        "its window (8; layer 0) are not supported"
    )


@pytest.mark.parametrize("method", MATRIX_METHODS)
def test_gemma3_methods_past_the_sliding_window_reproduce_or_refuse(matrix, method):
    """With a window shorter than the prompt: supported, refused for the window, or refused as with the default."""
    model, inputs = tiny_vlm("gemma3", sliding_window=8)
    torch.manual_seed(0)
    cell = run_cell(method, "gemma3", model, inputs)
    assert cell["status"] in ("supported", "refused"), cell
    if cell["status"] == "refused":
        assert "sliding-window" in cell["reason"] or cell["reason"] == _cell(matrix, method, "gemma3")["reason"]


def test_qwen3vl_pruning_inside_the_deepstack_layers_is_refused():
    from reference_impls.prefilling.fastv import FastV

    config = tiny_config("qwen3-vl")
    config.vision_config.deepstack_visual_indexes = [0, 1]  # DeepStack feeds both text layers
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration(config).eval()
    refusal = r"pruning before a DeepStack layer is not supported \(first pruned layer 1"
    with pytest.raises(UnsupportedFeature, match=refusal), FastV(budget=0.5, layer=1)(model):
        pass


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "mllama"])
def test_adapter_finds_layers_tower_and_visual_tokens(arch):
    model, inputs = tiny_vlm(arch)
    adapter = adapter_for(model)
    assert len(adapter.language_layers(model)) == model.config.get_text_config().num_hidden_layers
    assert isinstance(adapter.vision_tower(model), torch.nn.Module)
    visual = adapter.visual_mask(inputs["input_ids"], model.config)
    text_keys = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
    pixels = {k: v for k, v in inputs.items() if k not in text_keys}
    assert int(visual.sum()) == adapter.count_image_tokens(model, pixels) > 0
    assert adapter.positions == ("mrope" if arch.startswith("qwen") else "1d")


@pytest.mark.parametrize("arch", ["llava", "qwen3-vl", "paligemma"])
def test_renumbered_positions_run_on_1d_and_mrope_models(arch):
    from reference_impls.prefilling.pyramiddrop import PyramidDrop

    model, inputs = tiny_vlm(arch)
    with torch.no_grad():
        reference = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        with PyramidDrop(budget=1.0, positions="renumber")(model):
            same = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        method = PyramidDrop(budget=0.25, positions="renumber", boundaries_frac=(0.5,))
        with method(model):
            model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(same, reference)
    assert method.stats["visual_kept"] < method.stats["visual_in"]


def test_renumbered_positions_are_refused_on_gemma3():
    from reference_impls.prefilling.pyramiddrop import PyramidDrop

    model, _ = tiny_vlm("gemma3")
    refusal = "renumbered positions are not supported on gemma3"
    with pytest.raises(UnsupportedFeature, match=refusal), PyramidDrop(budget=0.5, positions="renumber")(model):
        pass


def test_vcd_patch_masking_is_refused_without_qwen_patch_rows():
    from reference_impls.hallucination.contrastive_decoding import (
        VisualContrastiveDecoding,
    )

    model, _ = tiny_vlm("llava")
    refusal = "VCD mode='mask' needs Qwen's per-patch pixel rows"
    with pytest.raises(UnsupportedFeature, match=refusal), VisualContrastiveDecoding(mode="mask")(model):
        pass


def _layer_calls(model, inputs) -> list[tuple[dict, torch.Tensor]]:
    """(keyword inputs, output) of every language layer during one prefill of the unpatched model."""
    layers = adapter_for(model).language_layers(model)
    calls: list = [None] * len(layers)
    hooks = [
        layer.register_forward_hook(
            lambda m, args, kwargs, out, i=i: calls.__setitem__(
                i, (dict(kwargs, hidden_states=args[0] if args else kwargs["hidden_states"]), out)
            ),
            with_kwargs=True,
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


@pytest.mark.parametrize(
    "arch, overrides",
    [(a, {}) for a in ARCHITECTURES if a != "mllama"] + [("gemma3", {"sliding_window": 8})],
    ids=[a for a in ARCHITECTURES if a != "mllama"] + ["gemma3-window8"],
)
def test_op_skip_layer_rebuilds_every_architectures_layer(arch, overrides):
    """Operation skipping's layer (the function its patch calls) with nothing skipped equals each
    family's own decoder layer, given the model's mask (causal, sliding window, bidirectional image
    blocks) and norms; with the visual queries and FFN skipped, the visual tokens leave the layer
    unchanged and the text tokens' output is the layer's own."""
    from reference_impls.prefilling.op_skip import operation_indices, skip_layer

    model, inputs = tiny_vlm(arch, **overrides)
    adapter = adapter_for(model)
    visual = adapter.visual_mask(inputs["input_ids"], model.config)[0]
    layers = adapter.language_layers(model)
    for index, (kwargs, out) in enumerate(_layer_calls(model, inputs)):
        hidden, mask = kwargs["hidden_states"], kwargs.get("attention_mask")
        groups = [visual.nonzero()[:, 0]]
        with torch.no_grad():
            _, query, mlp = operation_indices(hidden.shape[1], groups, [])
            full = skip_layer(
                layers[index], hidden, kwargs["position_embeddings"], query, mlp, mask, norms=adapter.decoder_norms
            )
            _, query, mlp = operation_indices(hidden.shape[1], groups, [(0, "query"), (0, "mlp")])
            skipped = skip_layer(
                layers[index], hidden, kwargs["position_embeddings"], query, mlp, mask, norms=adapter.decoder_norms
            )
        torch.testing.assert_close(full, out, rtol=1e-5, atol=1e-6)
        assert torch.equal(skipped[:, visual], hidden[:, visual])
        # Within the layer the text tokens still read every visual key/value: their output is unchanged.
        torch.testing.assert_close(skipped[:, ~visual], out[:, ~visual], rtol=1e-5, atol=1e-6)


_LEFT_OUT_PATCHES = [spec for spec in all_methods() if spec.kind == "visual-token" and spec.name in NOT_IN_MATRIX]


@pytest.mark.parametrize("spec", _LEFT_OUT_PATCHES, ids=lambda spec: spec.name)
def test_methods_outside_the_matrix_run_or_refuse_by_name(spec):
    """A method left out of the matrix still meets the matrix's contract on every architecture:
    it runs, or it raises UnsupportedFeature before patching anything (never an AttributeError
    from a config field that only Qwen has)."""
    for arch in ARCHITECTURES:
        if arch == "mllama":  # no tiny model: every method is refused by name (test_mllama_is_refused_by_name)
            continue
        model, inputs = tiny_vlm(arch)
        method = spec.target()
        if hasattr(method, "budget"):
            method.budget = 0.5
        try:
            with method(model), torch.no_grad():
                model.generate(**inputs, max_new_tokens=2, do_sample=False)
        except UnsupportedFeature:
            continue
