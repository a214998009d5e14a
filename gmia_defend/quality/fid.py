"""FID / Fréchet distance fed batch by batch, so it can consume the attack's generated samples.

Two feature spaces:

- ``FrechetQuality.inception(weights_path)``: the standard FID (torchmetrics' InceptionV3 feature
  extractor, 2048-d pool features) from a local weights file, logged as ``quality/fid``. No download.
- ``FrechetQuality.for_embedder(embedder)``: the Fréchet distance in the identity embedder's space,
  logged as ``quality/fd_<embedder.name>``: works offline with any embedder; lower is better, like FID,
  but the numbers are not comparable with published FIDs.

Real statistics are computed once (``set_real_images``) and cached; generated statistics are reset
before each audit. Under DDP each process feeds its shard and ``reduce`` sums the statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from gmia_defend.embedders.weights import load_torch_weights_only
from gmia_defend.errors import UserError, WeightsError
from gmia_defend.quality.frechet import GaussianStats, frechet_from_stats


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255], **rounded** to the nearest level.

    Real photos loaded from 8-bit files map back to exactly their pixel values, and generated images
    are quantised the same way; truncation would bias generated images half a level darker than
    reals of the same float value.

    >>> to_uint8(torch.tensor([-1.0, 0.0, 0.999, 1.0])).tolist()
    [0, 128, 255, 255]
    """
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class _InceptionFeatures(nn.Module):
    """torchmetrics' InceptionV3 (FID weights from a local file) on images in [-1, 1]."""

    num_features = 2048

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"FID Inception weights not found at {path}; pass fid_weights_path= the local file "
                "'weights-inception-2015-12-05-6726825d.pth' (torch-fidelity's pt_inception weights), "
                "or leave it None to use the Fréchet distance in the embedder's feature space")
        load_torch_weights_only(path, "FID Inception weights")  # refuse unsafe pickles before torch-fidelity
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.num_features)],
                                      feature_extractor_weights_path=str(path))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_uint8(images))


class FrechetQuality:
    """Fréchet distance between real-image and generated-image features, accumulated in float64.

    ``update(images)`` is the ``on_batch`` hook of ``IdentityMembershipAttack.run``. Features are
    computed on the device the extractor lives on, in chunks of ``batch_size``.

    >>> fd = FrechetQuality(lambda x: x.flatten(1)[:, :4], dim=4, key="quality/fd_demo")
    >>> images = torch.rand(64, 3, 8, 8) * 2 - 1
    >>> fd.set_real_images(images); fd.update(images)
    >>> round(fd.compute(), 6)
    0.0
    """

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor], dim: int, key: str,
                 batch_size: int = 256) -> None:
        self.extractor = extractor
        self.dim = int(dim)
        self.key = key
        self.batch_size = int(batch_size)
        self.real: GaussianStats | None = None
        self.fake = GaussianStats(self.dim)

    # --------------------------------------------------------------------------------- builders
    @classmethod
    def for_embedder(cls, embedder: nn.Module, batch_size: int = 256) -> "FrechetQuality":
        """Fréchet distance in ``embedder``'s space, logged as ``quality/fd_<embedder.name>``."""
        name = getattr(embedder, "name", "embedder")
        if not isinstance(getattr(embedder, "dim", None), int):
            raise UserError(f"embedder {name!r} has no integer .dim, which the Fréchet distance in its space "
                            "needs; give it a .dim, pass fid_weights_path= (Inception FID), or fid=False")
        return cls(embedder, int(embedder.dim), f"quality/fd_{name}", batch_size)

    @classmethod
    def inception(cls, weights_path: str | Path, batch_size: int = 64) -> "FrechetQuality":
        """Standard FID with InceptionV3 weights from a local file, logged as ``quality/fid``."""
        net = _InceptionFeatures(weights_path)
        return cls(net, net.num_features, "quality/fid", batch_size)

    # --------------------------------------------------------------------------------- features
    def _device(self, fallback: torch.device) -> torch.device:
        if isinstance(self.extractor, nn.Module):
            for p in self.extractor.parameters():
                return p.device
        return fallback

    def to(self, device: torch.device | str) -> "FrechetQuality":
        if isinstance(self.extractor, nn.Module):
            self.extractor.to(device)
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features [N, dim] (float64, CPU-or-extractor device) of images NCHW in [-1, 1]."""
        device = self._device(images.device)
        module = self.extractor if isinstance(self.extractor, nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            out = [self.extractor(images[i:i + self.batch_size].to(device)).double()
                   for i in range(0, images.shape[0], self.batch_size)]
        finally:
            if module is not None:
                module.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.dim, dtype=torch.float64, device=device)

    # --------------------------------------------------------------------------------- statistics
    @property
    def has_real(self) -> bool:
        return self.real is not None

    def set_real_images(self, images: torch.Tensor) -> None:
        """Compute and cache the real-image statistics (done once per run)."""
        stats = GaussianStats(self.dim)
        stats.update(self.features(images).cpu())
        self.real = stats

    def set_real_state(self, state: dict[str, torch.Tensor]) -> None:
        self.real = GaussianStats.from_state_dict(state)

    def reset_fake(self) -> None:
        self.fake = GaussianStats(self.dim)

    def update(self, images: torch.Tensor) -> None:
        """Add generated images (the ``on_batch`` hook)."""
        self.fake.update(self.features(images).cpu())

    def update_features(self, features: torch.Tensor) -> None:
        """Add features already computed by this extractor (e.g. shared with the attack)."""
        self.fake.update(features.cpu())

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Sum the generated statistics over processes (real ones are computed on every process).

        ``None``: torchmetrics' ``"sum"`` reduction over the default process group (``metric_sum``).
        """
        self.fake.reduce(reduce_sum)

    def compute(self) -> float:
        if self.real is None:
            raise RuntimeError("real-image statistics are missing; call set_real_images first")
        return frechet_from_stats(self.real, self.fake)
