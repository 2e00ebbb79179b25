"""Every registered continual-ad method runs the protocol; routing and the baselines' own invariants."""

import numpy as np
import pytest
import torch

from reference_impls.continual_ad.data import Setting
from reference_impls.continual_ad.diffusion import load_pretrained
from reference_impls.continual_ad.gpm_projection import project_gradient
from reference_impls.continual_ad.learner import TrainConfig, run_continual
from reference_impls.continual_ad.olora import olora_penalty
from reference_impls.continual_ad.routing import PrototypeRouter, routing_features
from reference_impls.continual_ad.scorer import DiffusionScorer
from reference_impls.registry import all_methods

METHODS = [s for s in all_methods("continual-ad") if s.name != "diffusion-recon"]
FAMILIES = {
    "hf-olb": "parameter-isolation",
    "replay": "continual-replay",
    "o-lora": "continual-regularization",
    "gpm-projection": "continual-regularization",
    "diffusion-recon": "diffusion-detectors",
}


def test_registry_families():
    names = {s.name: s.family for s in all_methods("continual-ad")}
    for name, family in FAMILIES.items():
        assert names[name] == family


@pytest.mark.parametrize("spec", METHODS, ids=lambda s: s.name)
def test_method_runs_two_tasks(spec, procad_data, tiny_unet, schedule):
    kw = {"train": TrainConfig(steps=3, batch=4)}
    if spec.name == "hf-olb":
        kw.update(positions=16, n_tau=1)
    if spec.name == "gpm-projection":
        kw.update(positions=16, n_tau=1, train=TrainConfig(steps=3, batch=4, lr=0.02))
    method = spec.target(**kw)
    setting = Setting("t", (("stripes_h",), ("checker",)))
    data = {c: procad_data[c] for c in setting.categories}
    res = run_continual(method, setting, data, tiny_unet, schedule, DiffusionScorer(ddim_steps=2, n_seeds=1))
    s = res.summary()
    assert np.isfinite(s["image_a_auroc"]) and np.isfinite(s["pixel_a_auroc"]) and np.isfinite(s["aupro"])
    assert np.isnan(s["image_fm"]) if method.offline else np.isfinite(s["image_fm"])
    assert s["params_per_task"][0] > 0


def test_prototype_routing_is_exact_on_distinct_categories(procad_data, schedule):
    tiny_unet = load_pretrained()  # R1 features come from the frozen pretrained base
    router = PrototypeRouter(k=3, seed=0)
    cats = list(procad_data)
    for t, c in enumerate(cats):
        router.add(c, t, routing_features(tiny_unet, procad_data[c].train, schedule))
    for t, c in enumerate(cats):
        d = procad_data[c]
        normals = d.test[d.labels == 0]
        assert (router.route(routing_features(tiny_unet, normals, schedule)) == t).all()


def test_gpm_gradient_projection_and_olora_penalty():
    U, _ = torch.linalg.qr(torch.randn(12, 3))
    G = project_gradient(torch.randn(5, 12), U)
    assert torch.allclose(G @ U, torch.zeros(5, 3), atol=1e-5)
    conv = project_gradient(torch.randn(4, 3, 2, 2), U)  # d_in = 3*2*2
    assert torch.allclose(conv.reshape(4, -1) @ U, torch.zeros(4, 3), atol=1e-5)
    A_old = torch.eye(4)[:2]
    assert float(olora_penalty(torch.eye(4)[2:], [A_old])) == 0.0
    assert float(olora_penalty(torch.eye(4)[:1], [A_old])) == 1.0


def test_replay_buffer_keeps_per_category_images_and_fills_half_of_each_later_batch(procad_data, tiny_unet, schedule):
    from reference_impls.continual_ad.replay import Replay

    replay = Replay(train=TrainConfig(steps=1, batch=8), per_category=3)
    replay.begin(tiny_unet, schedule, seed=0)
    first = procad_data["stripes_h"].train
    replay.learn_task(0, {"stripes_h": first})
    assert len(replay.buffer) == 1 and replay.buffer[0].shape[0] == 3
    assert all((first == image).flatten(1).all(1).any() for image in replay.buffer[0])  # stored images are real ones
    second = procad_data["checker"].train
    batch = replay._sampler(second)(torch.Generator().manual_seed(0))
    from_buffer = [bool((replay.buffer[0] == image).flatten(1).all(1).any()) for image in batch]
    assert sum(from_buffer) == 4 and from_buffer[4:] == [True] * 4


def test_gpm_updates_leave_the_stored_input_subspace_untouched(procad_data, tiny_unet, schedule):
    from reference_impls.continual_ad.gpm_projection import GPMProjection

    gpm = GPMProjection(train=TrainConfig(steps=3, batch=4, lr=0.02), positions=16, n_tau=1)
    gpm.begin(tiny_unet, schedule, seed=0)
    gpm.learn_task(0, {"stripes_h": procad_data["stripes_h"].train})
    before = {name: spec.module.weight.detach().clone() for name, spec in gpm.layers.items()}
    bases = {name: U.clone() for name, U in gpm.U.items()}
    gpm.learn_task(1, {"checker": procad_data["checker"].train})
    moved = 0.0
    for name, spec in gpm.layers.items():
        delta = (spec.module.weight.detach() - before[name]).reshape(before[name].shape[0], -1)  # (d_out, d_in)
        moved = max(moved, float(delta.abs().max()))
        if bases[name].shape[1]:
            # relative to the step (without the projection the ratio is about 0.8), plus float32
            # rounding of the weights themselves
            tolerance = 1e-3 * float(delta.abs().max()) + 1e-6 * float(before[name].abs().max())
            assert float((delta @ bases[name]).abs().max()) <= tolerance, name
    assert moved > 0  # the second task did train
