"""Loaders on generated MVTec/VisA layouts, presets, the GPM rule and rank allocation."""

import numpy as np
import pytest
import torch

from reference_impls.continual_ad.data import PRESETS, load_mvtec_category, load_visa_category
from reference_impls.continual_ad.procad import write_procad_visa
from reference_impls.continual_ad.subspace import Novelty, allocate_ranks, gpm_extend, novelty


def test_mvtec_loader_finds_defects_and_masks(procad_root):
    d = load_mvtec_category(procad_root, "checker")
    assert d.train.shape == (16, 3, 16, 16) and d.test.shape == (8, 3, 16, 16)
    assert set(d.defect_types) == {"good", "scratch", "spot"}
    good = torch.tensor([k == "good" for k in d.defect_types])
    assert (d.labels == (~good).long()).all()
    assert not d.masks[good].any() and all(m.any() for m in d.masks[~good])
    assert d.train.min() >= -1 and d.train.max() <= 1
    assert load_mvtec_category(procad_root, "checker", size=8).masks.shape == (8, 8, 8)


def test_visa_csv_loader_binarises_instance_masks(tmp_path):
    root = write_procad_visa(tmp_path)
    d = load_visa_category(root, "stripes_h")
    assert d.train.shape[0] == 4 and d.test.shape[0] == 5 and int(d.labels.sum()) == 3
    assert d.masks.dtype == torch.bool and d.masks[d.labels == 1].any() and not d.masks[d.labels == 0].any()
    from PIL import Image

    raw = np.asarray(Image.open(next((root / "stripes_h/Data/Masks/Anomaly").iterdir())))
    assert raw.max() == 2  # instance ids, not 255
    assert load_visa_category(root, "stripes_h", max_train=2).train.shape[0] == 2


def test_presets_match_the_published_groups():
    assert PRESETS["mvtec_14_1"].groups[1] == ("zipper",) and len(PRESETS["mvtec_14_1"].groups[0]) == 14
    assert PRESETS["mvtec_10_5"].groups[1] == ("tile", "toothbrush", "transistor", "wood", "zipper")
    assert PRESETS["mvtec_3x5"].groups[2] == ("leather", "metal_nut", "pill")
    assert len(PRESETS["mvtec_10_1x5"].groups) == 6 and PRESETS["mvtec_10_1x5"].groups[-1] == ("zipper",)
    assert PRESETS["visa_11_1"].groups[1] == ("pipe_fryum",)
    assert PRESETS["visa_8_4"].groups[1] == ("pcb2", "pcb3", "pcb4", "pipe_fryum")
    assert [g for g in PRESETS["visa_8_1x4"].groups[1:]] == [("pcb2",), ("pcb3",), ("pcb4",), ("pipe_fryum",)]
    assert "visa_2x6" not in PRESETS and "Assumption" in PRESETS["visa_2x6_assumed"].note
    assert PRESETS["visa_2x6_assumed"].groups[3] == ("macaroni2", "pcb1")
    assert len(PRESETS["procad_1x6"].groups) == 6


def test_gpm_rule_on_a_known_spectrum():
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    C = Q @ torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ Q.T  # trace 15
    U, m = gpm_extend(torch.zeros(5, 0, dtype=torch.float64), C, eps=0.55)  # need 8.25: 5 + 4 = 9 -> m = 2
    assert m == 2 and torch.allclose(U.T @ U, torch.eye(2, dtype=torch.float64), atol=1e-10)
    U, m = gpm_extend(Q[:, 4:5], C, eps=0.6)  # captured 1; need 9: 1 + 5 + 4 = 10 -> m = 2
    assert m == 2 and U.shape[1] == 3 and torch.allclose(U[:, :1], Q[:, 4:5])
    assert torch.allclose(U.T @ U, torch.eye(3, dtype=torch.float64), atol=1e-10)
    U, m = gpm_extend(Q[:, :2], C, eps=0.55)  # already captures 9 >= 8.25
    assert m == 0 and U.shape[1] == 2
    U, m = gpm_extend(torch.zeros(5, 0, dtype=torch.float64), C, eps=1.0)  # saturates: k -> d_in
    assert U.shape[1] == 5


def test_novelty_and_rank_allocation():
    C = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    s = novelty(C, torch.eye(4)[:, :1], tau_rank=0.8)  # residual spectrum 3, 2, 1 (6); 80% -> 3 + 2 = 5 -> rho 2
    assert s.nu == pytest.approx(0.6) and s.rho == 2 and s.rank == 3
    stats = {"a": Novelty(0.5, 6, 10, None), "b": Novelty(0.9, 2, 2, None), "c": Novelty(0.1, 1, 5, None)}
    sizes = {"a": (10, 10), "b": (10, 10), "c": (100, 10)}
    caps = {"a": 4, "b": 8, "c": 4}
    assert allocate_ranks(stats, ["a", "b", "c"], caps, sizes) == {"a": 4, "b": 2, "c": 1}
    # budget 150: costs a 80 + b 40 + c 110; smallest nu*d_in is a (5) then c (10)
    ranks = allocate_ranks(stats, ["a", "b", "c"], caps, sizes, budget=150)
    assert sum(r * sum(sizes[n]) for n, r in ranks.items()) <= 150
    assert ranks == {"b": 2, "c": 1}


def test_row_and_covariance_moments_agree():
    from reference_impls.continual_ad.subspace import Moments, residual_share

    R = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # n < d
    rows, cov = Moments(rows=R), Moments(cov=R.T @ R)
    U0 = torch.linalg.qr(torch.randn(10, 2, dtype=torch.float64))[0]
    Ur, mr = gpm_extend(U0, rows, 0.9)
    Uc, mc = gpm_extend(U0, cov, 0.9)
    assert mr == mc and torch.allclose(Ur @ Ur.T, Uc @ Uc.T, atol=1e-8)
    assert residual_share(rows, U0) == pytest.approx(residual_share(cov, U0))
    a, b = novelty(rows, U0), novelty(cov, U0)
    assert (a.rho, a.rank) == (b.rho, b.rank) and a.nu == pytest.approx(b.nu)
