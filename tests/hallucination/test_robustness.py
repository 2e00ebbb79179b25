import torch

from reference_impls.hallucination.robustness import gaussian_noise, relearn, worst_case_probe
from reference_impls.hallucination.terms import ga_term
from reference_impls.hallucination.trainer import UnlearningTrainer

from .conftest import make_batch


def _p_target(model, batch):
    _, stats = UnlearningTrainer(model, [ga_term()]).gradients({"forget": batch})
    model.zero_grad(set_to_none=True)
    return stats["p_target"]


def test_relearn_raises_target_probability_on_a_copy(model):
    batch = make_batch(model, seed=4, span=(-3, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = relearn(
        model,
        lambda step: {"relearn": batch},
        checkpoints=(2, 6),
        lr=1e-2,
        evaluate=lambda m: {"p": _p_target(m, batch)},
    )
    assert [r["steps"] for r in rows] == [2, 6]
    assert _p_target(model, batch) < rows[0]["p"] < rows[1]["p"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gaussian_noise_scale_and_copy(model):
    same = gaussian_noise(model, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))
    noisy = gaussian_noise(model, 0.2, seed=1)
    w, n = model.lm_head.weight, noisy.lm_head.weight
    assert ((n - w).std() / w.std()).item() == __import__("pytest").approx(0.2, rel=0.1)
    assert not torch.equal(gaussian_noise(model, 0.2, seed=2).lm_head.weight, n)


def test_worst_case_probe_pushes_towards_hallucination(model):
    batch = make_batch(model, seed=4, span=(-2, -1))
    rows = worst_case_probe(model, batch, rhos=(0.0, 0.05, 0.2))
    assert rows[0]["p_target_pushed"] == rows[0]["p_target"]
    assert rows[0]["p_target"] < rows[1]["p_target_pushed"] < rows[2]["p_target_pushed"]


def test_relearn_updates_only_the_trainable_parameters(model):
    batch = make_batch(model, seed=4, span=(-3, 0))
    before = {k: v.clone() for k, v in model.named_parameters()}
    after = {}
    relearn(
        model,
        lambda step: {"relearn": batch},
        checkpoints=(2,),
        lr=1e-2,
        evaluate=lambda m: after.update({k: v.detach().clone() for k, v in m.named_parameters()}) or {},
        trainable=lambda name: "visual" not in name,
    )
    vision = [k for k in before if "visual" in k]
    language = [k for k in before if "visual" not in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in language)
