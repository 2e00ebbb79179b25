"""Shared tiny fixtures: ProcAD folders at 16 px and a tiny random U-Net (channels 8/16)."""

import pytest
import torch

from reference_impls.continual_ad.data import Setting, load_setting
from reference_impls.continual_ad.diffusion import build_unet, make_schedule
from reference_impls.continual_ad.procad import write_procad

CATS = ("stripes_h", "checker", "dots")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def procad_root(tmp_path_factory):
    return write_procad(
        tmp_path_factory.mktemp("procad"), categories=CATS, size=16, n_train=16, n_test_good=4, n_per_defect=2, seed=0
    )


@pytest.fixture(scope="session")
def procad_data(procad_root):
    return load_setting(procad_root, Setting("t", tuple((c,) for c in CATS)))


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return build_unet(16, channels=(8, 16))


@pytest.fixture(scope="session")
def schedule():
    return make_schedule()
