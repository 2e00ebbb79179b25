"""ToyVLM bundle: the Qwen2-VL patch layout, collate, save/load, and micro training."""

import json

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from reference_impls.common.scenes import SceneSpec, make_samples
from reference_impls.common.toyvlm import (
    ToyVLM,
    build_vocab,
    collate,
    load_toyvlm,
    patchify_image,
    patchify_video,
    save_toyvlm,
    toyvlm_config,
)

torch.set_num_threads(1)
SPEC = SceneSpec(n_images=2, image_size=56, max_objects=3)


@pytest.fixture(scope="module")
def bundle():
    vocab = build_vocab()
    config = toyvlm_config(vocab, hidden_size=32, num_layers=2, intermediate_size=64, vision_depth=1, vision_hidden=32)
    torch.manual_seed(0)
    return ToyVLM(Qwen2_5_VLForConditionalGeneration(config).eval(), vocab, spec=SPEC)


def test_patch_layout_matches_the_qwen2vl_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = make_samples(SceneSpec(n_images=1, image_size=112), 1, seed=0)[0].scene.images[0]
    rng = np.random.default_rng(0)
    image = np.ascontiguousarray(
        np.concatenate([image, rng.integers(0, 256, (112, 56, 3), dtype=np.uint8)], axis=1)
    )  # 112 x 168
    reference = Qwen2VLImageProcessorPil()(images=[image], do_resize=False, return_tensors="pt")
    pixels, grid = patchify_image(image)
    assert grid == reference["image_grid_thw"][0].tolist() == [1, 8, 12]
    torch.testing.assert_close(pixels, reference["pixel_values"], rtol=0, atol=1e-5)


def test_video_layout_by_definition():
    """Row r of pixel_values holds frame pair t, patch (y, x) with 2x2 merge groups consecutive."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    pixels, (t, h, w) = patchify_video(frames)
    assert (t, h, w) == (2, 4, 6)
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    normalised = (frames / 255.0 - mean) / std
    for tt in range(t):
        for by in range(h // 2):
            for bx in range(w // 2):
                for my in range(2):
                    for mx in range(2):
                        row = ((tt * (h // 2) + by) * (w // 2) + bx) * 4 + my * 2 + mx
                        y, x = (by * 2 + my) * 14, (bx * 2 + mx) * 14
                        patch = normalised[2 * tt : 2 * tt + 2, y : y + 14, x : x + 14]  # (2, 14, 14, 3)
                        expected = torch.tensor(patch.transpose(3, 0, 1, 2).reshape(-1), dtype=torch.float32)
                        torch.testing.assert_close(pixels[row], expected, rtol=0, atol=1e-5)


def test_collate_layout(bundle):
    samples = make_samples(SPEC, 3, seed=0)
    batch = bundle.collate(samples)
    config = bundle.model.config
    ids = batch["input_ids"]
    assert (ids == config.image_token_id).sum() == 3 * 2 * 4  # two 56 px images: 2x2 merged tokens each
    assert torch.equal(batch["mm_token_type_ids"], (ids == config.image_token_id).long())
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 6
    assert (ids[:, -1] == bundle.vocab.id("answer")).all()
    first = ids[0][batch["attention_mask"][0].bool()].tolist()
    assert bundle.vocab.decode(first).startswith(samples[0].qa.question)
    last = collate(samples, bundle.vocab, config, question_first=False)["input_ids"][0]
    assert bundle.vocab.decode(last[batch["attention_mask"][0].bool()].tolist()).endswith(
        samples[0].qa.question + " answer"
    )
    labelled = bundle.collate(samples, with_answer=True)
    assert [bundle.vocab.words[i] for i in labelled["labels"][0, -2:].tolist()] == [samples[0].qa.answer, "<eos>"]


def test_left_padding_does_not_change_answers(bundle):
    samples = make_samples(SPEC, 4, seed=2, kinds=("colour", "count"))
    with torch.no_grad():
        batched = bundle.model(**bundle.collate(samples)).logits[:, -1]
        single = torch.cat([bundle.model(**bundle.collate([s])).logits[:, -1] for s in samples])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(bundle, tmp_path):
    save_toyvlm(bundle, tmp_path, {"seed": 0, "held_out_accuracy": {"all": 0.5}})
    loaded = load_toyvlm(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["spec"]["image_size"] == 56
    assert loaded.spec == bundle.spec and loaded.vocab == bundle.vocab
    samples = make_samples(SPEC, 2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(**loaded.collate(samples)).logits, bundle.model(**bundle.collate(samples)).logits
        )


def test_micro_training_loss_falls():
    from reference_impls.common.train_toyvlm import _micro

    _micro()  # asserts that the answer loss falls


def test_fast_patch_embedding_equals_the_conv(bundle):
    """Training replaces the patch Conv3d by an equivalent matmul; it must be the same function."""
    from reference_impls.common.train_toyvlm import _fast_patch_embed

    embed = bundle.model.model.visual.patch_embed
    samples = make_samples(SPEC, 1, seed=0)
    pixels = bundle.collate(samples)["pixel_values"]
    video, _ = patchify_video(np.stack(samples[0].scene.images))  # two different frames
    with torch.no_grad():
        reference = embed(pixels), embed(video)
        _fast_patch_embed(bundle.model)
        try:
            fast = embed(pixels), embed(video)
        finally:
            del embed.forward
    torch.testing.assert_close(fast[0], reference[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1], reference[1], atol=1e-5, rtol=1e-5)
