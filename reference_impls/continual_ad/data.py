"""Loaders for MVTec AD and VisA folders, and incremental settings as data.

The loaders read a local folder a user points at (nothing is downloaded) and return one
:class:`CategoryData` per category: training normals, test images, binary masks and labels,
as float tensors in [-1, 1]. ProcAD (:mod:`reference_impls.continual_ad.procad`) writes the
same layouts, so tests and benchmarks run these exact loaders.

A :class:`Setting` is a list of category groups (one group per task); every incremental
setting of the continual AD literature is a preset in :data:`PRESETS`.

Examples:
    >>> from reference_impls.continual_ad.data import PRESETS
    >>> PRESETS["mvtec_3x5"].groups[0]
    ('bottle', 'cable', 'capsule')

Deviations / guesses: ``visa_2x6_assumed`` is our reading of "VisA 2x6" (no public source
defines it; ``reference_impls/continual_ad/hfolb/README.md`` section 2.2); tables using it need
a footnote.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "CategoryData",
    "Setting",
    "PRESETS",
    "MVTEC_ORDER",
    "VISA_ORDER",
    "load_mvtec_category",
    "load_visa_category",
    "load_setting",
]

MVTEC_ORDER = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
VISA_ORDER = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class CategoryData:
    """One category: ``train`` (N, 3, H, W), ``test`` (M, 3, H, W) in [-1, 1], ``masks`` (M, H, W) bool,
    ``labels`` (M,) long (1 = defective), ``defect_types`` (M,) names ("good" for normals)."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    defect_types: list[str]


@dataclass(frozen=True)
class Setting:
    """An incremental setting: ``groups[i]`` are the categories of task ``i``."""

    name: str
    groups: tuple[tuple[str, ...], ...]
    note: str = ""

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(c for group in self.groups for c in group)

    def task_of(self, category: str) -> int:
        return next(i for i, group in enumerate(self.groups) if category in group)


def _singles(names) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) for n in names)


_M, _V = MVTEC_ORDER, VISA_ORDER
_ASSUMED = "Assumption: 'VisA 2x6' is defined in no public source; we read it as 2 classes per task over 6 tasks."
PRESETS: dict[str, Setting] = {
    "mvtec_14_1": Setting("mvtec_14_1", (_M[:14], _M[14:])),
    "mvtec_10_5": Setting("mvtec_10_5", (_M[:10], _M[10:])),
    "mvtec_3x5": Setting("mvtec_3x5", tuple(_M[i : i + 3] for i in range(0, 15, 3))),
    "mvtec_10_1x5": Setting("mvtec_10_1x5", (_M[:10],) + _singles(_M[10:])),
    "visa_11_1": Setting("visa_11_1", (_V[:11], _V[11:])),
    "visa_8_4": Setting("visa_8_4", (_V[:8], _V[8:])),
    "visa_8_1x4": Setting("visa_8_1x4", (_V[:8],) + _singles(_V[8:])),
    "visa_2x6_assumed": Setting("visa_2x6_assumed", tuple(_V[i : i + 2] for i in range(0, 12, 2)), _ASSUMED),
}
_P = ("stripes_h", "stripes_diag", "checker", "dots", "waves", "blobs")  # = procad.CATEGORIES
PRESETS.update(
    {
        "procad_2x3": Setting("procad_2x3", tuple(_P[i : i + 2] for i in range(0, 6, 2))),
        "procad_3x2": Setting("procad_3x2", (_P[:3], _P[3:])),
        "procad_5_1": Setting("procad_5_1", (_P[:5], _P[5:])),
        "procad_1x6": Setting("procad_1x6", _singles(_P)),
    }
)


def _read_image(path: Path, size: int | None) -> torch.Tensor:
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
    image = image.permute(2, 0, 1)  # (3, H, W)
    if size is not None and image.shape[-1] != size:
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return image * 2 - 1


def _read_mask(path: Path | None, shape: tuple[int, int], size: int | None) -> torch.Tensor:
    if path is None:
        side = (size, size) if size is not None else shape
        return torch.zeros(side, dtype=torch.bool)
    mask = torch.from_numpy(np.asarray(Image.open(path).convert("L")) != 0)  # instance ids -> binary
    if size is not None and mask.shape[-1] != size:
        mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
    return mask


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []


def _assemble(name, train_paths, test_items, size, max_train) -> CategoryData:
    if max_train is not None:
        train_paths = train_paths[:max_train]
    train = torch.stack([_read_image(p, size) for p in train_paths])
    tests, masks, labels, kinds = [], [], [], []
    for path, mask_path, kind in test_items:
        image = _read_image(path, size)
        tests.append(image)
        masks.append(_read_mask(mask_path, tuple(image.shape[-2:]), size))
        labels.append(int(kind != "good"))
        kinds.append(kind)
    return CategoryData(name, train, torch.stack(tests), torch.stack(masks), torch.tensor(labels), kinds)


def load_mvtec_category(
    root: str | Path, category: str, *, size: int | None = None, max_train: int | None = None
) -> CategoryData:
    """Read ``<root>/<category>/{train/good, test/*, ground_truth/*}`` (MVTec AD layout).

    Args:
        root: dataset root.
        category: category folder name.
        size: resize to ``size`` x ``size`` (masks with nearest neighbour); None keeps the size.
        max_train: keep only the first ``max_train`` training images.
    """
    base = Path(root) / category
    items = []
    for defect_dir in sorted(p for p in (base / "test").iterdir() if p.is_dir()):
        for path in _images(defect_dir):
            mask = (
                None if defect_dir.name == "good" else base / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
            )
            if mask is not None and not mask.exists():
                raise FileNotFoundError(f"missing mask {mask}")
            items.append((path, mask, defect_dir.name))
    return _assemble(category, _images(base / "train" / "good"), items, size, max_train)


def load_visa_category(
    root: str | Path,
    category: str,
    *,
    size: int | None = None,
    max_train: int | None = None,
    split_csv: str = "split_csv/1cls.csv",
) -> CategoryData:
    """Read one VisA category through the official split CSV (``object,split,label,image,mask``).

    Mask pixels are instance ids and are binarised with ``!= 0``. ``max_train=200`` gives the
    CDAD convention (200 normal training images per class).
    """
    root = Path(root)
    train, items = [], []
    with open(root / split_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["object"] != category:
                continue
            if row["split"] == "train":
                train.append(root / row["image"])
            else:
                mask = root / row["mask"] if row["mask"].strip() else None
                items.append((root / row["image"], mask, "good" if row["label"] == "normal" else "anomaly"))
    if not train:
        raise ValueError(f"category {category!r} not found in {root / split_csv}")
    return _assemble(category, train, items, size, max_train)


def load_setting(
    root: str | Path, setting: Setting, *, layout: str = "mvtec", size: int | None = None, max_train: int | None = None
) -> dict[str, CategoryData]:
    """Load every category of ``setting`` (``layout`` is "mvtec" or "visa"), in task order."""
    loader = {"mvtec": load_mvtec_category, "visa": load_visa_category}[layout]
    return {c: loader(root, c, size=size, max_train=max_train) for c in setting.categories}
