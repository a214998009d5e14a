"""``Embedder``: images in [-1, 1] -> float32 unit-norm identity embeddings, plus a verification threshold.

Subclasses set ``name``, ``input_size`` and ``dim``, implement ``embed_preprocessed`` (the network)
and, where the network expects another input scale, override ``normalize``. Resizing, range handling,
L2 normalisation, batching and threshold calibration live here so every embedder behaves the same.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gmia_defend.embedders.verification import DEFAULT_MAX_IMPOSTOR_PAIRS, verification_metrics
from gmia_defend.errors import UserError


class Embedder(nn.Module):
    """Base class of identity embedders.

    Attributes: ``name`` (short, used in metric keys), ``input_size`` (square side the network sees),
    ``dim`` (embedding size), ``threshold`` (cosine similarity at or above which two images are the same
    identity; ``None`` until calibrated) and ``threshold_far`` (the false-accept rate it was set at).
    ``amp``: use autocast (float16) when running on CUDA; never on the CPU.

    A subclass implements ``embed_preprocessed``; calling it gives unit vectors:

    >>> import torch
    >>> class Flat(Embedder):
    ...     def __init__(self):
    ...         super().__init__(input_size=8, dim=192, name="flat")
    ...     def embed_preprocessed(self, x):
    ...         return x.flatten(1)
    >>> e = Flat().eval()(torch.full((2, 3, 16, 16), 0.5))
    >>> tuple(e.shape), round(float(e[0].norm()), 4)
    ((2, 192), 1.0)
    """

    name: str = "embedder"

    def __init__(self, input_size: int, dim: int, name: str | None = None) -> None:
        super().__init__()
        if name is not None:
            self.name = name
        self.input_size = int(input_size)
        self.dim = int(dim)
        self.threshold: float | None = None
        self.threshold_far: float | None = None
        self.calibration: dict | None = None
        self.amp = True

    # ----------------------------------------------------------------------------- network input
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] (already resized) to the network's input scale. Default: unchanged."""
        return x

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images NCHW in [-1, 1] (float; or uint8 in [0, 255]; 1 or 3 channels) -> network input.

        Floats are clamped to [-1, 1] (generators overshoot slightly), then resized to
        ``input_size`` with antialiased bilinear interpolation, then ``normalize``\\ d.
        """
        if not isinstance(images, torch.Tensor):
            raise UserError(f"embedder {self.name!r} needs a torch.Tensor of images; got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UserError(
                f"embedder {self.name!r} needs images shaped [N, 3, H, W] (or [N, 1, H, W]); got "
                f"{tuple(images.shape)}; add a batch dimension or convert to RGB"
            )
        if images.dtype == torch.uint8:
            x = images.float() / 127.5 - 1.0
        elif images.is_floating_point():
            x = images.float().clamp(-1.0, 1.0)
        else:
            raise UserError(f"embedder {self.name!r} needs float images in [-1, 1] or uint8; got {images.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.normalize(x)

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """The network: preprocessed input -> raw features [N, dim] (normalised by ``forward``)."""
        raise NotImplementedError

    def _autocast(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        if x.is_cuda and self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] -> float32 L2-normalised embeddings [N, dim] (differentiable)."""
        x = self.preprocess(images)
        with self._autocast(x):
            feats = self.embed_preprocessed(x)
        return F.normalize(feats.float(), dim=1)

    # ----------------------------------------------------------------------------- batched inference
    def _compute_device(self, fallback: torch.device) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return fallback

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def embed(self, images: torch.Tensor, batch_size: int = 256,
              device: torch.device | str | None = None) -> torch.Tensor:
        """Embed many images in batches, in eval mode and without gradients.

        Runs on the embedder's own device; the result (float32, unit rows, [N, dim]) is returned on
        ``device`` if given, else on the device ``images`` came on. The training flag is restored.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1; got {batch_size}")
        if not isinstance(images, torch.Tensor):
            raise UserError(f"embedder {self.name!r} needs a torch.Tensor of images; got {type(images).__name__}")
        out_device = torch.device(device) if device is not None else images.device
        run_device = self._compute_device(images.device)
        if images.shape[0] == 0:
            return torch.zeros(0, self.dim, dtype=torch.float32, device=out_device)
        chunks = []
        with torch.no_grad(), self._eval_mode():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start:start + batch_size].to(run_device, non_blocking=True)
                chunks.append(self(batch).to(out_device))
        return torch.cat(chunks)

    # ----------------------------------------------------------------------------- verification
    def calibrate_threshold(self, images: torch.Tensor, labels: torch.Tensor, far: float = 1e-3,
                            batch_size: int = 256,
                            max_impostor_pairs: int | None = DEFAULT_MAX_IMPOSTOR_PAIRS,
                            seed: int = 0) -> float:
        """Set ``threshold`` so impostor pairs of these real images are accepted at rate ``<= far``.

        Uses all genuine pairs and all impostor pairs (a seeded subsample of ``max_impostor_pairs``
        when there are more). Stores ``threshold``, ``threshold_far`` and ``calibration`` (AUC, TAR at
        that FAR, pair counts) and returns the threshold. Raises ``DataError`` with fewer than 2
        identities or no identity having 2+ images. Resolve FAR 1e-3 with >= ~1e4 impostor pairs.
        """
        emb = self.embed(images, batch_size=batch_size, device="cpu")
        metrics = verification_metrics(emb, labels, far=far, max_impostor_pairs=max_impostor_pairs, seed=seed)
        self.threshold = float(metrics["threshold"])
        self.threshold_far = float(far)
        self.calibration = metrics
        return self.threshold

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, dim={self.dim}, threshold={self.threshold}"
