"""PixelEmbedder: a sample-level baseline in the style of GAN-Leaks (Chen et al., CCS 2020).

GAN-Leaks scores a query image by the distance to its nearest generated sample in pixel space. Here
each image is centred and scaled to unit norm (so brightness and contrast do not dominate), and
then the L2 distance between two images is a monotone function of their cosine similarity: with
``score="max_sim"`` and ``reference_reduction="max"`` the identity membership attack becomes that
nearest-neighbour attack, run over the same split, latents and metrics. It shows what a sample-level
attack misses: a generator that re-creates a *person* in a new pose is far from every reference
photo in pixels, but close in a face matcher's space.
"""

from __future__ import annotations

import torch

from gmia_defend.embedders.base import Embedder


class PixelEmbedder(Embedder):
    """Images -> centred, unit-norm pixel vectors at ``input_size`` (no learned parameters).

    >>> import torch
    >>> tuple(PixelEmbedder(8)(torch.rand(2, 3, 32, 32) * 2 - 1).shape)
    (2, 192)
    """

    name = "pixels"

    def __init__(self, input_size: int = 32) -> None:
        super().__init__(input_size=input_size, dim=3 * input_size * input_size)

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).float()
        return flat - flat.mean(dim=1, keepdim=True)
