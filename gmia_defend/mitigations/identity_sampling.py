"""Batch samplers whose randomness the privacy accountant assumes: Poisson over images or identities.

DP-SGD's accounting (Opacus RDP/PRV) assumes Poisson subsampling: at every step each privacy unit
joins the batch independently with probability ``q``, with fresh randomness, unknown to the
adversary. For image-level DP the unit is an image; for identity-level DP it is a person: an
identity is drawn with probability ``q`` and then contributes up to ``m`` of its images (a random
subset). Batches therefore vary in size and may be empty; ``private_dataloader`` collates an empty
batch into zero-length tensors instead of failing.

Indices are positions in the training dataset the DataLoader wraps. ``targets[i]`` is the identity
of image ``i``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from gmia_defend.errors import DataError, UserError


def _as_targets(targets: Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
    arr = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError("identity targets must be a non-empty 1-D sequence (the identity of every training image)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError("identity targets must be integers (identity index per training image)")
    return arr.astype(np.int64)


def identity_units(targets: Sequence[int] | torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """Image indices of each identity present in ``targets`` (ordered by identity index)."""
    arr = _as_targets(targets)
    order = np.argsort(arr, kind="stable")
    _, starts = np.unique(arr[order], return_index=True)
    return list(np.split(order, starts[1:]))


def capped_images(targets: Sequence[int] | torch.Tensor | np.ndarray, max_images_per_identity: int | None) -> int:
    """Images that can enter training when each identity contributes at most ``m`` per batch."""
    arr = _as_targets(targets)
    counts = np.bincount(arr - arr.min())
    counts = counts[counts > 0]
    return int(counts.sum() if max_images_per_identity is None else np.minimum(counts, max_images_per_identity).sum())


def identity_sample_rate(targets: Sequence[int] | torch.Tensor | np.ndarray, batch_size: float,
                         max_images_per_identity: int | None) -> float:
    """q such that a batch holds ``batch_size`` images on average: batch_size / sum_k min(n_k, m)."""
    q = float(batch_size) / capped_images(targets, max_images_per_identity)
    if not 0 < q <= 1:
        raise UserError(f"batch_size={batch_size} gives identity sample rate {q:.4g}, outside (0, 1]; use a "
                        "batch size between 1 and the number of usable training images")
    return q


def default_steps_per_epoch(sample_rate: float) -> int:
    """One epoch = 1/q steps, the number of steps that shows every unit once on average."""
    return max(1, int(round(1.0 / sample_rate)))


class UnitBatchSampler(Sampler[list[int]]):
    """Yield index batches built from privacy units (lists of image indices).

    ``poisson=True``: each unit joins a batch independently with probability ``sample_rate``.
    ``poisson=False``: units are shuffled each epoch and cut into batches of ``round(q * units)``
    (what most training does; the Poisson accounting does NOT hold for it, so DP refuses it unless
    the user accepts an epsilon that is not a valid bound).
    A selected unit contributes ``max_per_unit`` of its images at most, a fresh random subset each time.
    ``seed=None`` draws the sampling randomness from the OS: the guarantee assumes nobody can
    reproduce which units were sampled, so keep an explicit seed secret. ``salt()`` (e.g. the DP
    step counter) mixes into each epoch's seed so a resumed run does not replay earlier batches.

    Several ranks (``world_size > 1``): every rank makes the same global draw over ALL units (same
    seed: pass the one rank 0 chose) and keeps the units ``u`` with ``u % world_size == rank``, so the
    union over ranks is one Poisson draw and a unit's inclusion is independent of every other
    unit's, across ranks too. Each draw (a step's inclusion mask, a unit's image subset) has its own
    seed ``(seed, salt, epoch, step[, unit])``, so ranks never fall out of step.

    >>> a = image_poisson_sampler(8, 0.5, seed=3, rank=0, world_size=2, steps_per_epoch=1)
    >>> b = image_poisson_sampler(8, 0.5, seed=3, rank=1, world_size=2, steps_per_epoch=1)
    >>> whole = image_poisson_sampler(8, 0.5, seed=3, steps_per_epoch=1)
    >>> sorted(next(iter(a)) + next(iter(b))) == sorted(next(iter(whole)))
    True
    """

    def __init__(self, units: Sequence[Sequence[int]], sample_rate: float, *, max_per_unit: int | None = None,
                 steps_per_epoch: int | None = None, poisson: bool = True, seed: int | None = None,
                 salt: Callable[[], int] | None = None, rank: int = 0, world_size: int = 1) -> None:
        if not 0 < sample_rate <= 1:
            raise UserError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if max_per_unit is not None and max_per_unit < 1:
            raise UserError(f"max_images_per_identity must be >= 1, got {max_per_unit}")
        self.all_units = [np.asarray(u, dtype=np.int64) for u in units]
        self.rank, self.world_size = int(rank), max(1, int(world_size))
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {rank} outside 0..{world_size - 1}")
        if len(self.all_units) < self.world_size:
            raise DataError("no training units to sample from (empty dataset or more ranks than units)")
        self.sample_rate = float(sample_rate)
        self.max_per_unit = max_per_unit
        self.poisson = bool(poisson)
        self.batch_units = max(1, int(round(self.sample_rate * len(units))))  # global, shuffled mode
        if steps_per_epoch is None:
            steps_per_epoch = (default_steps_per_epoch(self.sample_rate) if self.poisson
                               else max(1, len(self.all_units) // self.batch_units))
        self.steps_per_epoch = int(steps_per_epoch)
        self.entropy = int(np.random.SeedSequence().entropy if seed is None else seed)
        self.salt = salt
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def units(self) -> list[np.ndarray]:
        """This rank's units."""
        return self.all_units[self.rank::self.world_size]

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.entropy, *key]))

    def global_mask(self, salt: int, epoch: int, step: int) -> np.ndarray:
        """Inclusion of every unit (all ranks) at this step: one Poisson draw, the same on every rank."""
        return self._rng(salt, epoch, step).random(len(self.all_units)) < self.sample_rate

    def _take(self, key: tuple[int, ...], chosen: np.ndarray) -> list[int]:
        out: list[int] = []
        for u in chosen:
            images = self.all_units[u]
            if self.max_per_unit is not None and len(images) > self.max_per_unit:
                images = self._rng(*key, int(u)).choice(images, size=self.max_per_unit, replace=False)
            out.extend(int(i) for i in images)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        salt = int(self.salt()) if self.salt is not None else 0
        epoch = self.epoch
        self.epoch += 1
        mine = np.arange(len(self.all_units)) % self.world_size == self.rank
        if self.poisson:
            for step in range(self.steps_per_epoch):
                mask = self.global_mask(salt, epoch, step)
                yield self._take((salt, epoch, step), np.flatnonzero(mask & mine))
        else:
            order = self._rng(salt, epoch).permutation(len(self.all_units))
            for step in range(self.steps_per_epoch):
                chosen = order[step * self.batch_units:(step + 1) * self.batch_units]
                yield self._take((salt, epoch, step), chosen[chosen % self.world_size == self.rank])


def image_poisson_sampler(num_images: int, sample_rate: float, **kwargs: Any) -> UnitBatchSampler:
    """Image-level Poisson batch sampler over ``range(num_images)``."""
    return UnitBatchSampler([[i] for i in range(int(num_images))], sample_rate, **kwargs)


def identity_poisson_sampler(targets: Sequence[int] | torch.Tensor | np.ndarray, sample_rate: float,
                             max_images_per_identity: int | None = None, **kwargs: Any) -> UnitBatchSampler:
    """Identity-level Poisson batch sampler: identities drawn with rate q, up to m images each."""
    return UnitBatchSampler(identity_units(targets), sample_rate, max_per_unit=max_images_per_identity, **kwargs)


def _empty_like(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.new_empty((0, *item.shape))
    if isinstance(item, (bool, int)):
        return torch.empty(0, dtype=torch.long)
    if isinstance(item, float):
        return torch.empty(0, dtype=torch.float64)
    if isinstance(item, (tuple, list)):
        return type(item)(_empty_like(x) for x in item)
    if isinstance(item, dict):
        return {k: _empty_like(v) for k, v in item.items()}
    raise TypeError(f"cannot build an empty batch for items of type {type(item).__name__}")


class EmptySafeCollate:
    """``default_collate`` that turns an empty batch into zero-length tensors shaped like ``template``
    (one dataset item). Poisson sampling yields empty batches now and then; they still count as steps."""

    def __init__(self, template: Any) -> None:
        self.empty = _empty_like(template)

    def __call__(self, batch: list) -> Any:
        return default_collate(batch) if batch else self.empty


def private_dataloader(dataset: Dataset, batch_sampler: Sampler[list[int]], **kwargs: Any) -> DataLoader:
    """A DataLoader over ``dataset`` with a privacy batch sampler (kwargs: num_workers, pin_memory, ...)."""
    kwargs.setdefault("collate_fn", EmptySafeCollate(dataset[0]))
    return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
