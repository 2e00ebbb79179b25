"""ProcAD: procedural textures with defects and masks, written in the MVTec AD (or VisA) layout.

A seeded generator for a CPU-sized continual anomaly detection benchmark. Six texture
categories (``stripes_h``, ``stripes_diag``, ``checker``, ``dots``, ``waves``, ``blobs``), each
with its own palette and a random phase per image, are clearly distinct, so a model fine-tuned
on one forgets the others. Test images carry ``scratch`` and ``spot`` defects (optionally
``patch_swap`` and ``blur``) with pixel masks. The generator writes real folders, so the same
loaders that read MVTec AD and VisA (:mod:`reference_impls.continual_ad.data`) are exercised.

A second, disjoint texture family (random colour fields, low-frequency noise and random edges,
no periodic structure) is the pretraining domain of the frozen U-Net
(:func:`pretrain_textures`).

Examples:
    >>> import tempfile
    >>> from reference_impls.continual_ad.procad import write_procad
    >>> root = write_procad(tempfile.mkdtemp(), size=16, n_train=4, n_test_good=2, n_per_defect=2)

Deviations / guesses: everything here is ours (``reference_impls/continual_ad/hfolb/README.md``
section 6); defect sizes scale with the image size (first sized at 32 px).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["CATEGORIES", "DEFECTS", "texture", "add_defect", "write_procad", "write_procad_visa", "pretrain_textures"]

CATEGORIES = ("stripes_h", "stripes_diag", "checker", "dots", "waves", "blobs")
DEFECTS = ("scratch", "spot")
_PALETTES = {  # two RGB colours per category, chosen far apart
    "stripes_h": ((0.80, 0.25, 0.20), (0.95, 0.80, 0.55)),
    "stripes_diag": ((0.15, 0.35, 0.75), (0.70, 0.85, 0.95)),
    "checker": ((0.20, 0.55, 0.25), (0.85, 0.90, 0.45)),
    "dots": ((0.45, 0.20, 0.55), (0.90, 0.65, 0.85)),
    "waves": ((0.10, 0.50, 0.55), (0.60, 0.95, 0.80)),
    "blobs": ((0.55, 0.40, 0.20), (0.85, 0.75, 0.60)),
}


def _pattern(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) pattern in [0, 1] with random phase and jitter."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size  # (H, W) in [0, 1)
    phase = rng.uniform(0, 2 * math.pi)
    if category == "stripes_h":
        return 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(4, 5) * y + phase)
    if category == "stripes_diag":
        return 0.5 + 0.5 * np.sin(2 * math.pi * 3 * (x + y) + phase)  # 45 degrees
    if category == "checker":
        cells = 8  # 4 px cells at 32 px
        ox, oy = rng.integers(0, size // cells, 2)
        i = ((np.arange(size) + ox) * cells // size)[None, :]
        j = ((np.arange(size) + oy) * cells // size)[:, None]
        return ((i + j) % 2).astype(np.float64)
    if category == "dots":
        spacing, radius = 6 / 32, 1.6 / 32
        ox, oy = rng.uniform(0, spacing, 2)
        row = np.floor((y + oy) / (spacing * math.sqrt(3) / 2))
        cx = (x + ox + 0.5 * spacing * (row % 2)) % spacing - spacing / 2
        cy = (y + oy) % (spacing * math.sqrt(3) / 2) - spacing * math.sqrt(3) / 4
        return (np.hypot(cx, cy) < radius).astype(np.float64)
    if category == "waves":
        a1, a2 = rng.uniform(0, math.pi, 2)
        w = np.sin(2 * math.pi * 3 * (x * math.cos(a1) + y * math.sin(a1)) + phase)
        w = w + np.sin(2 * math.pi * 2 * (x * math.cos(a2) + y * math.sin(a2)) + rng.uniform(0, 6.3))
        return 0.5 + 0.25 * w
    if category == "blobs":
        noise = torch.from_numpy(rng.standard_normal((1, 1, size, size)))
        k = 9
        g = torch.exp(-0.5 * (torch.arange(k, dtype=torch.float64) - k // 2) ** 2 / (size / 16) ** 2)
        g = (g / g.sum()).view(1, 1, 1, k)
        smooth = F.conv2d(F.pad(noise, (k // 2, k // 2, 0, 0), mode="circular"), g)
        smooth = F.conv2d(F.pad(smooth, (0, 0, k // 2, k // 2), mode="circular"), g.transpose(2, 3))[0, 0].numpy()
        return 1.0 / (1.0 + np.exp(-8.0 * smooth / (smooth.std() + 1e-8)))
    raise ValueError(f"unknown ProcAD category {category!r}")


def texture(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One defect-free image (H, W, 3) in [0, 1] of ``category``."""
    low, high = (np.asarray(c) + rng.uniform(-0.03, 0.03, 3) for c in _PALETTES[category])
    v = _pattern(category, size, rng)[..., None]  # (H, W, 1)
    image = low * (1 - v) + high * v + rng.normal(0, 0.02, (size, size, 3))
    return np.clip(image, 0, 1)


def add_defect(
    image: np.ndarray, defect: str, category: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective image, mask (H, W) bool). ``defect`` in scratch, spot, patch_swap, blur."""
    size = image.shape[0]
    s = size / 32
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    out = image.copy()
    if defect == "scratch":
        length, angle = rng.uniform(8, 14) * s, rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        dx, dy = math.cos(angle), math.sin(angle)
        along = (x - cx) * dx + (y - cy) * dy
        across = np.abs(-(x - cx) * dy + (y - cy) * dx)
        mask = (np.abs(along) <= length / 2) & (across <= rng.uniform(0.5, 1.0) * max(s, 0.75))
        colour = np.array([0.05, 0.05, 0.05]) if rng.random() < 0.5 else np.array([1.0, 1.0, 0.1])
        out[mask] = colour
    elif defect == "spot":
        rx, ry = rng.uniform(2, 5, 2) * s
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        mask = ((x - cx) / max(rx, 1.0)) ** 2 + ((y - cy) / max(ry, 1.0)) ** 2 <= 1
        out[mask] = 0.02 if rng.random() < 0.5 else 0.98
    elif defect == "patch_swap":
        side = int(rng.integers(6, 11) * s)
        x0, y0 = rng.integers(0, size - side, 2)
        other = rng.choice([c for c in CATEGORIES if c != category])
        mask = np.zeros((size, size), dtype=bool)
        mask[y0 : y0 + side, x0 : x0 + side] = True
        out[mask] = texture(str(other), size, rng)[mask]
    elif defect == "blur":
        r = rng.uniform(4, 6) * s
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
        t = torch.from_numpy(image).permute(2, 0, 1)[None]
        blurred = F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), 5, stride=1)[0].permute(1, 2, 0).numpy()
        out[mask] = blurred[mask]
    else:
        raise ValueError(f"unknown defect {defect!r}")
    return out, mask


def _save(array: np.ndarray, path: Path, *, instance_ids: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if instance_ids or array.dtype == bool:
        Image.fromarray(array.astype(np.uint8) * (1 if instance_ids else 255)).save(path)
    else:
        Image.fromarray((array * 255).round().astype(np.uint8)).save(path)


def write_procad(
    root: str | Path,
    *,
    categories=CATEGORIES,
    defects=DEFECTS,
    size: int = 32,
    n_train: int = 48,
    n_test_good: int = 8,
    n_per_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write ProcAD in the MVTec AD layout under ``root`` and return ``root``.

    Args:
        root: output folder; ``<root>/<cat>/{train/good, test/good, test/<defect>, ground_truth/<defect>}``.
        categories: texture categories to write.
        defects: defect types per category.
        size: image side in pixels.
        n_train, n_test_good, n_per_defect: images per split.
        seed: base seed; each category draws from its own stream.
    """
    root = Path(root)
    for c_index, category in enumerate(categories):
        rng = np.random.default_rng([seed, c_index])
        base = root / category
        for i in range(n_train):
            _save(texture(category, size, rng), base / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            _save(texture(category, size, rng), base / "test" / "good" / f"{i:03d}.png")
        for defect in defects:
            for i in range(n_per_defect):
                image, mask = add_defect(texture(category, size, rng), defect, category, rng)
                _save(image, base / "test" / defect / f"{i:03d}.png")
                _save(mask, base / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def write_procad_visa(
    root: str | Path,
    *,
    categories=CATEGORIES[:2],
    size: int = 16,
    n_train: int = 4,
    n_test_good: int = 2,
    n_anomaly: int = 3,
    seed: int = 0,
) -> Path:
    """Write a VisA-layout twin: ``Data/Images/{Normal,Anomaly}/*.JPG``, instance-id masks, ``split_csv/1cls.csv``."""
    root = Path(root)
    rows = []
    for c_index, category in enumerate(categories):
        rng = np.random.default_rng([seed, 100 + c_index])
        images = root / category / "Data" / "Images"
        for i in range(n_train + n_test_good):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            _save(texture(category, size, rng), root / rel)
            rows.append((category, "train" if i < n_train else "test", "normal", rel, ""))
        for i in range(n_anomaly):
            image, mask_a = add_defect(texture(category, size, rng), "spot", category, rng)
            image, mask_b = add_defect(image, "scratch", category, rng)
            ids = np.where(mask_b, 2, np.where(mask_a, 1, 0))  # instance ids, as in VisA
            rel = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
            rel_mask = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            _save(image, root / rel)
            _save(ids, root / rel_mask, instance_ids=True)
            rows.append((category, "test", "anomaly", rel, rel_mask))
        assert images.exists()
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def pretrain_textures(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """The pretraining domain: ``n`` images (n, 3, H, W) in [-1, 1] with no periodic structure.

    Random colour fields (a bilinear 2-4 cell colour grid), low-frequency noise and 1-3 random
    straight edges, disjoint from every ProcAD category.
    """
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    coords = torch.stack(torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij"))
    for i in range(n):
        cells = int(torch.randint(2, 5, (1,), generator=g))
        field = F.interpolate(
            torch.rand(1, 3, cells, cells, generator=g), size=(size, size), mode="bilinear", align_corners=True
        )[0]
        noise = F.interpolate(
            torch.randn(1, 1, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=True
        )[0]
        image = field + 0.15 * float(torch.rand(1, generator=g)) * noise
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            angle = float(torch.rand(1, generator=g)) * 2 * math.pi
            offset = float(torch.rand(1, generator=g)) * 1.2 - 0.6
            side = (coords[1] * math.cos(angle) + coords[0] * math.sin(angle)) > offset  # (H, W)
            image = torch.where(side, 0.5 * image + 0.5 * torch.rand(3, 1, 1, generator=g), image)
        out[i] = image.clamp(0, 1) * 2 - 1
    return out
