"""Generators for the attack: adapt any callable to ``z -> images``, check its output, load it from disk.

A generator is any callable ``z -> images`` (NCHW float). NVIDIA-style ``G(z, c)`` is called with
``c=None`` (or zeros when it declares ``c_dim > 0``). ``load_generator`` (defined in
``generator_loading``, re-exported here) turns a CLI spec or file into one.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from gmia_defend.errors import GeneratorError

__all__ = ["GeneratorAdapter", "LatentSampler", "check_images", "eval_mode", "load_generator"]

_CHECKPOINT_SUFFIXES = (".ckpt",)
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")


def _required_positional(fn: Callable) -> int | None:
    """Number of required positional parameters of ``fn`` (bound methods exclude self), or None."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)


class GeneratorAdapter:
    """Calls a generator as ``z -> images`` whatever its signature; knows its ``z_dim`` and modules.

    >>> import torch
    >>> def generate(z, c):  # an NVIDIA-style signature
    ...     return torch.zeros(z.shape[0], 3, 8, 8)
    >>> adapter = GeneratorAdapter(generate, z_dim=4)
    >>> tuple(adapter(torch.zeros(2, 4)).shape)
    (2, 3, 8, 8)
    """

    def __init__(self, generator: Callable, z_dim: int | None = None) -> None:
        if not callable(generator):
            raise GeneratorError(f"the generator must be callable (z -> images), got {type(generator).__name__}")
        self.generator = generator
        self.z_dim = int(z_dim) if z_dim is not None else self._find_z_dim(generator)
        c_dim = getattr(generator, "c_dim", 0)
        self.c_dim = int(c_dim) if isinstance(c_dim, (int, np.integer)) else 0
        target = generator.forward if isinstance(generator, nn.Module) else generator
        required = _required_positional(target)
        # None: signature unknown (TorchScript, C extensions) -> try z alone first, then (z, c).
        self._with_c: bool | None = None if required is None else required >= 2

    @staticmethod
    def _find_z_dim(generator: Any) -> int:
        for attr in ("z_dim", "latent_dim", "nz"):
            value = getattr(generator, attr, None)
            if isinstance(value, (int, np.integer)) and value > 0:
                return int(value)
        raise GeneratorError(
            f"cannot tell the latent size of {type(generator).__name__}: it has no `z_dim` attribute; "
            "pass z_dim=... to IdentityMembershipAttack (CLI: --z-dim)")

    @property
    def modules(self) -> list[nn.Module]:
        """nn.Modules to switch to eval mode during the attack (the generator and its owner)."""
        out = [m for m in (self.generator, getattr(self.generator, "__self__", None)) if isinstance(m, nn.Module)]
        return out

    def _c(self, z: Tensor) -> Tensor | None:
        return torch.zeros(z.shape[0], self.c_dim, device=z.device) if self.c_dim > 0 else None

    def __call__(self, z: Tensor) -> Any:
        if self._with_c is True:
            return self.generator(z, self._c(z))
        if self._with_c is False:
            return self.generator(z)
        try:
            out = self.generator(z)
            self._with_c = False
        except (TypeError, RuntimeError) as err:
            if "argument" not in str(err):
                raise
            out = self.generator(z, self._c(z))
            self._with_c = True
        return out


@contextlib.contextmanager
def eval_mode(modules: list[nn.Module]) -> Iterator[None]:
    """Put modules (all submodules) in eval mode, restoring every submodule's flag afterwards."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


class LatentSampler:
    """Fixed standard-normal latents: sample i depends only on (seed, i), never on batch or shard.

    Latents come in blocks of ``block`` rows; block b is drawn on the CPU from a generator seeded by
    a hash of (seed, b), so any slice (a batch, a DDP shard, the evidence indices) is reproducible
    on any device.

    >>> sampler = LatentSampler(seed=0, z_dim=4, block=8)
    >>> bool((sampler.get(0, 10)[6:9] == sampler.get(6, 9)).all())
    True
    """

    def __init__(self, seed: int, z_dim: int, block: int = 1024) -> None:
        self.seed, self.z_dim, self.block = int(seed), int(z_dim), int(block)
        self._cached: tuple[int, Tensor] | None = None

    def _block(self, b: int) -> Tensor:
        if self._cached is not None and self._cached[0] == b:
            return self._cached[1]
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, b]).generate_state(2, np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        z = torch.randn(self.block, self.z_dim, generator=gen)
        self._cached = (b, z)
        return z

    def get(self, start: int, stop: int) -> Tensor:
        """Latents of samples ``start .. stop-1`` as a [stop-start, z_dim] CPU tensor."""
        parts = []
        i = start
        while i < stop:
            b, off = divmod(i, self.block)
            take = min(stop - i, self.block - off)
            parts.append(self._block(b)[off:off + take])
            i += take
        return torch.cat(parts) if parts else torch.empty(0, self.z_dim)

    def take(self, indices: list[int]) -> Tensor:
        """Latents of arbitrary sample indices (for regenerating evidence)."""
        return torch.stack([self.get(i, i + 1)[0] for i in indices]) if indices else torch.empty(0, self.z_dim)


def check_images(x: Any, batch: int, input_range: tuple[float, float], warned: list[bool] | None = None) -> Tensor:
    """Validate a generated batch and map it from ``input_range`` to [-1, 1] (float32, clamped).

    Range policy: generators without a final tanh (StyleGAN) overshoot their range, a lot early in
    training; such tails are clamped (with one warning). A *one-sided* excursion of more than half
    the range's width that holds over a quarter of the values (e.g. [0, 255] or [-1, 1] images
    declared as [0, 1]) or values sitting entirely at or below the range's bottom (e.g. [-1, 1] declared as (0, 255)) mean a wrong
    ``input_range`` and raise ``GeneratorError``.
    """
    if isinstance(x, (tuple, list)):
        raise GeneratorError(
            f"the generator returned a {type(x).__name__}, not an image tensor; wrap it so it returns "
            "only the images, e.g. lambda z: G(z)[0]")
    if not isinstance(x, Tensor):
        raise GeneratorError(f"the generator returned {type(x).__name__}; it must return a torch.Tensor NCHW")
    if x.ndim != 4:
        raise GeneratorError(f"generated images have shape {tuple(x.shape)}; expected 4-D NCHW [batch, 3, H, W]")
    if x.shape[0] != batch:
        raise GeneratorError(f"the generator returned {x.shape[0]} images for {batch} latents; return one per latent")
    if x.shape[1] != 3:
        hint = ("it looks channels-last: permute(0, 3, 1, 2)" if x.shape[-1] == 3 else
                "grayscale generators: repeat the channel, x.expand(-1, 3, -1, -1)" if x.shape[1] == 1 else
                "return RGB images")
        raise GeneratorError(
            f"generated images have {x.shape[1]} channels (shape {tuple(x.shape)}); expected 3: {hint}")
    if not x.is_floating_point():
        raise GeneratorError(
            f"generated images have dtype {x.dtype}; return floats (for uint8 images use "
            "x.float() and input_range=(0, 255))")
    x = x.float()
    lo_v, hi_v = (float(v) for v in torch.stack(torch.aminmax(x)).tolist())
    if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
        bad = int((~torch.isfinite(x)).sum())
        raise GeneratorError(
            f"the generator produced {bad} NaN/inf pixel values; its weights may have diverged: audit an "
            "earlier checkpoint or fix training")
    lo, hi = input_range
    width = hi - lo
    below, above = lo_v < lo - 0.5 * width, hi_v > hi + 0.5 * width
    inside_low, inside_high = lo_v >= lo - 0.05 * width, hi_v <= hi + 0.05 * width
    one_sided = (below and inside_high) or (above and inside_low)
    # A wrong declared range puts the bulk of the values outside it; an early StyleGAN only its tails.
    bulk_outside = one_sided and float(((x < lo - 0.05 * width) | (x > hi + 0.05 * width)).float().mean()) > 0.25
    if bulk_outside or (lo_v < lo and hi_v < lo + 0.05 * width):
        raise GeneratorError(
            f"generated values span [{lo_v:.3g}, {hi_v:.3g}], which does not fit input_range=({lo:g}, {hi:g}); "
            "pass the generator's real output range as input_range (CLI: --input-range LO HI), e.g. (0, 1) "
            "or (0, 255)")
    if warned is not None and not warned[0]:
        if below or above:
            warned[0] = True
            warnings.warn(f"generated values span [{lo_v:.3g}, {hi_v:.3g}], far beyond input_range=({lo:g}, "
                          f"{hi:g}); clamping (normal for an untrained or early StyleGAN)",
                          stacklevel=3)
        elif lo < 0 and lo_v >= 0.0:
            warned[0] = True
            warnings.warn(f"all generated values are >= 0 with input_range=({lo:g}, {hi:g}); if the generator "
                          "outputs [0, 1] images pass input_range=(0, 1)", stacklevel=3)
    if (lo, hi) != (-1.0, 1.0):
        x = (x - lo) * (2.0 / width) - 1.0
    return x.clamp_(-1.0, 1.0)


from gmia_defend.attack.generator_loading import load_generator  # noqa: E402 - re-export
