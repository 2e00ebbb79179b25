"""Task-agnostic routing for bank prefixes: prototypes of frozen-base features, or reconstruction error.

- :class:`PrototypeRouter` (R1): an image's feature is the global average pool of the frozen
  base U-Net's mid block and last down block at a fixed small timestep with fixed noise,
  L2-normalised; each category keeps ``k`` k-means prototypes; the nearest prototype by cosine
  names the category and hence the task whose bank prefix is activated.
- :func:`reconstruction_route` (R2): the prefix with the smallest median one-step denoising
  error at two fixed (τ, ε) pairs wins (the median, because defects raise the error under
  every prefix). It costs one forward per prefix and pair.

Examples:
    >>> import torch
    >>> from reference_impls.continual_ad.routing import PrototypeRouter
    >>> router = PrototypeRouter(k=1)
    >>> router.add("a", 0, torch.eye(3)[:1]); router.add("b", 1, torch.eye(3)[1:2])
    >>> router.route(torch.eye(3)[1:2]).tolist()
    [1]

Paper: arXiv 2606.02042 (the abstract does not say how inference picks banks; both routers
are our reconstruction, ``reference_impls/continual_ad/hfolb/README.md`` section 4.6).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

__all__ = ["routing_features", "PrototypeRouter", "reconstruction_route"]


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return model.base_model.model if hasattr(model, "base_model") else model


@torch.no_grad()
def routing_features(
    base: torch.nn.Module, images: torch.Tensor, schedule, *, tau_frac: float = 0.1, seed: int = 777, batch: int = 64
) -> torch.Tensor:
    """(N, C_mid + C_down) L2-normalised pooled features of the frozen ``base`` at τ_p = ``tau_frac`` · T."""
    tau = int(round(tau_frac * schedule.config.num_train_timesteps))
    inner, out = _inner(base), []
    for start in range(0, images.shape[0], batch):
        x = images[start : start + batch]
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # fixed noise per position
        x_t = schedule.add_noise(x, noise, torch.full((x.shape[0],), tau))
        captured = {}
        hooks = [
            inner.mid_block.register_forward_hook(lambda m, a, o: captured.__setitem__("mid", o)),
            inner.down_blocks[-1].register_forward_hook(lambda m, a, o: captured.__setitem__("down", o[0])),
        ]
        try:
            base(x_t, torch.full((x.shape[0],), tau))
        finally:
            for h in hooks:
                h.remove()
        feats = torch.cat([captured["mid"].mean((2, 3)), captured["down"].mean((2, 3))], dim=1)  # (B, D)
        out.append(F.normalize(feats, dim=1))
    return torch.cat(out)


class PrototypeRouter:
    """k-means prototypes per category; ``route`` returns the task of the nearest prototype by cosine."""

    def __init__(self, k: int = 3, seed: int = 0):
        self.k, self.seed = k, seed
        self.prototypes: list[torch.Tensor] = []
        self.tasks: list[int] = []
        self.categories: list[str] = []

    def add(self, category: str, task: int, features: torch.Tensor) -> None:
        """Fit ``k`` prototypes (seeded k-means) on a category's normal features (N, D)."""
        k = min(self.k, features.shape[0])
        centres = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(features.double().numpy()).cluster_centers_
        for centre in torch.from_numpy(centres).float():
            self.prototypes.append(F.normalize(centre, dim=0))
            self.tasks.append(task)
            self.categories.append(category)

    def route(self, features: torch.Tensor, max_task: int | None = None) -> torch.Tensor:
        """Task id (N,) of the nearest prototype, among tasks ≤ ``max_task`` if given."""
        protos = torch.stack(self.prototypes)  # (P, D)
        tasks = torch.tensor(self.tasks)
        similarity = features @ protos.T  # (N, P)
        if max_task is not None:
            similarity[:, tasks > max_task] = -float("inf")
        return tasks[similarity.argmax(1)]


@torch.no_grad()
def reconstruction_route(
    model: torch.nn.Module,
    activate_prefix: Callable[[int], None],
    n_prefixes: int,
    images: torch.Tensor,
    schedule,
    *,
    taus: tuple[float, float] = (0.1, 0.3),
    seed: int = 4242,
) -> torch.Tensor:
    """Prefix index (N,) with the smallest median ε-prediction error over pixels, averaged over 2 (τ, ε) pairs."""
    T = schedule.config.num_train_timesteps
    errors = torch.zeros(n_prefixes, images.shape[0])
    for j in range(n_prefixes):
        activate_prefix(j)
        for i, frac in enumerate(taus):
            tau = torch.full((images.shape[0],), int(round(frac * T)))
            noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed + i))
            eps = model(schedule.add_noise(images, noise, tau), tau).sample
            errors[j] += (eps - noise).pow(2).mean(1).flatten(1).median(1).values / len(taus)
    return errors.argmin(0)
