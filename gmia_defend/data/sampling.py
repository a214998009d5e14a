"""Dataset diversification: per-identity caps, identity-balanced sampling, and split builders.

Why: identities that are over-represented in the training set leak most (Webster et al.). These
tools change how often each identity is seen: cap its images, sample identities uniformly, hold the
total number of training images fixed while varying how many identities share it (diversity vs
frequency), or deliberately over-represent a few identities to measure the effect.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from gmia_defend.data.specs import IdentityDataset
from gmia_defend.data.split import IdentitySplit
from gmia_defend.errors import DataError

__all__ = [
    "cap_per_identity",
    "IdentityBalancedSampler",
    "ResumableBatchSampler",
    "fixed_budget_split",
    "overrepresented_split",
    "synthetic_split",
]


def cap_per_identity(
    indices: Sequence[int], targets: torch.Tensor | Sequence[int], max_images: int, seed: int = 0
) -> list[int]:
    """Keep at most ``max_images`` of ``indices`` per identity (``targets[i]`` is index i's identity).

    The kept images are a seeded random choice; their original order is preserved.
    """
    if max_images is None or int(max_images) < 1:
        raise DataError(
            f"max_images_per_identity must be >= 1, got {max_images}: a cap of 0 would leave "
            "identities with no training images; use None for no cap"
        )
    indices = [int(i) for i in indices]
    if not indices:
        return []
    t = torch.as_tensor(targets)
    ident = t[torch.as_tensor(indices, dtype=torch.int64)].tolist()
    groups: dict[int, list[int]] = {}
    for pos, who in enumerate(ident):
        groups.setdefault(who, []).append(pos)
    rng = random.Random(int(seed))
    keep: list[int] = []
    for who in sorted(groups):
        pos = groups[who]
        keep.extend(pos if len(pos) <= max_images else rng.sample(pos, int(max_images)))
    return [indices[p] for p in sorted(keep)]


class IdentityBalancedSampler(Sampler[int]):
    """Draw an identity uniformly, then one of its images uniformly (with replacement).

    ``labels[i]`` is the identity of item ``i`` of the dataset being sampled; yields item positions.
    ``num_samples`` (default: the number of items) is the epoch length. Seeded: epoch ``e`` (set by
    ``set_epoch``, as Lightning does, or counted per iteration) always gives the same order.
    """

    def __init__(self, labels: torch.Tensor | Sequence[int], num_samples: int | None = None, seed: int = 0) -> None:
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if labels.numel() == 0:
            raise DataError("cannot sample from an empty training set; check the split and caps")
        _, inverse = torch.unique(labels, return_inverse=True)
        self._order = torch.argsort(inverse, stable=True)
        self._counts = torch.bincount(inverse)
        self._starts = torch.cumsum(self._counts, 0) - self._counts
        self.num_identities = int(self._counts.numel())
        self.num_samples = int(num_samples) if num_samples is not None else int(labels.numel())
        if self.num_samples < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        self.epoch += 1
        ident = torch.randint(self.num_identities, (self.num_samples,), generator=g)
        counts = self._counts[ident]
        pos = (torch.rand(self.num_samples, generator=g) * counts).to(torch.int64)
        pos = torch.minimum(pos, counts - 1)
        return iter(self._order[self._starts[ident] + pos].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch order whose position can be saved and restored.

    The order of epoch ``e`` is a function of ``(seed, e)`` only: a shuffle of the ``num_items``
    items, or, with ``labels``, identity-balanced draws (an identity uniformly, then one of its
    images). ``resume(epoch, batches)`` makes the next pass over epoch ``epoch`` skip the batches a
    previous run already trained on, so a run restarted from a checkpoint sees exactly the batches
    of the uninterrupted one. ``set_epoch`` (called by Lightning) selects the epoch; without it,
    epochs count up per pass. With ``world_size > 1`` each rank takes every ``world_size``-th item.

    >>> sampler = ResumableBatchSampler(10, batch_size=4, seed=0)
    >>> first = list(sampler)
    >>> [len(b) for b in first]
    [4, 4]
    >>> again = ResumableBatchSampler(10, batch_size=4, seed=0)
    >>> again.resume(epoch=0, batches=1)
    >>> list(again) == first[1:]
    True
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, labels: torch.Tensor | Sequence[int] | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if int(num_items) < 1 or int(batch_size) < 1:
            raise DataError(f"cannot batch {num_items} items in batches of {batch_size}")
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.balanced = IdentityBalancedSampler(labels, num_samples=self.num_items, seed=self.seed) \
            if labels is not None else None
        self.rank, self.world_size = int(rank), max(1, int(world_size))
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches of epoch ``epoch`` (once, when that epoch is iterated)."""
        self._skip = (int(epoch), int(batches))
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """This rank's items of epoch ``epoch``, in order."""
        if self.balanced is not None:
            self.balanced.set_epoch(epoch)
            items = list(self.balanced)
        elif self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + 7_919 * int(epoch) + 1) % (2**63))
            items = torch.randperm(self.num_items, generator=g).tolist()
        else:
            items = list(range(self.num_items))
        return items[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(range(self.rank, self.num_items, self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1  # a pass without set_epoch moves on to the next epoch
        skip = 0
        if self._skip is not None and self._skip[0] == epoch:
            skip, self._skip = self._skip[1], None
        items = self.order(epoch)
        for b in range(skip, len(self)):
            yield items[b * self.batch_size:(b + 1) * self.batch_size]


def _trim(split: IdentitySplit, quotas: dict[str, int], seed: int, **meta) -> IdentitySplit:
    """Keep a seeded random ``quotas[name]`` of each member's training keys."""
    rng = random.Random(int(seed) + 7919)
    members: dict[str, list[str]] = {}
    for name, keys in split.members.items():
        q = quotas[name]
        if q < 1:
            raise DataError(f"member {name} would be left with no training images; give every member >= 1")
        if len(keys) < q:
            raise DataError(
                f"member {name} has {len(keys)} training images, fewer than the {q} requested; "
                "use a dataset with more images per identity or request fewer"
            )
        members[name] = sorted(rng.sample(keys, q)) if len(keys) > q else list(keys)
    return split.with_training(members, **meta)


def fixed_budget_split(
    dataset: IdentityDataset,
    total_train_images: int,
    num_members: int,
    num_nonmembers: int,
    references_per_identity: int = 5,
    num_population_identities: int = 0,
    seed: int = 0,
) -> IdentitySplit:
    """A split with exactly ``total_train_images`` training images shared by ``num_members``.

    Sweeping ``num_members`` at a fixed total trades identity diversity for per-identity frequency
    (the paper's diversity vs frequency experiment). Shares differ by at most one image.
    """
    total, m = int(total_train_images), int(num_members)
    if m < 2:
        raise DataError(f"num_members must be >= 2, got {num_members}")
    if total < m:
        raise DataError(
            f"total_train_images={total} < num_members={m}: some members would have no training "
            "images; raise total_train_images or lower num_members"
        )
    base, extra = divmod(total, m)
    need = base + (1 if extra else 0)
    split = IdentitySplit.create(
        dataset,
        m,
        num_nonmembers,
        references_per_identity=references_per_identity,
        num_population_identities=num_population_identities,
        seed=seed,
        min_member_images=int(references_per_identity) + need,
    )
    quotas = {name: base + (1 if i < extra else 0) for i, name in enumerate(split.members)}
    return _trim(split, quotas, seed, builder="fixed_budget", total_train_images=total, images_per_member=need)


def overrepresented_split(
    dataset: IdentityDataset,
    num_members: int,
    num_nonmembers: int,
    num_overrepresented: int,
    frequent_images: int,
    rare_images: int,
    references_per_identity: int = 5,
    num_population_identities: int = 0,
    seed: int = 0,
) -> IdentitySplit:
    """Members where ``num_overrepresented`` identities get ``frequent_images`` training images and
    the rest ``rare_images``; ``split.meta["overrepresented"]`` lists the frequent ones."""
    m, k = int(num_members), int(num_overrepresented)
    if not 0 <= k <= m:
        raise DataError(f"num_overrepresented must be in [0, num_members={m}], got {num_overrepresented}")
    if int(rare_images) < 1 or int(frequent_images) < 1:
        raise DataError("frequent_images and rare_images must be >= 1")
    r = int(references_per_identity)
    counts = dataset.counts()
    order = list(dataset.identities)
    random.Random(int(seed) + 104729).shuffle(order)
    frequent = [n for n in order if counts[n] >= r + int(frequent_images)][:k]
    if len(frequent) < k:
        raise DataError(
            f"only {len(frequent)} identities have >= {r + int(frequent_images)} images "
            f"(references + frequent_images) for num_overrepresented={k}; use a dataset with more "
            "images per identity or lower frequent_images"
        )
    chosen = set(frequent)
    rare = [n for n in order if n not in chosen and counts[n] >= r + int(rare_images)][: m - k]
    if len(rare) < m - k:
        raise DataError(
            f"only {len(rare)} further identities have >= {r + int(rare_images)} images for the "
            f"{m - k} rarely seen members; lower num_members or rare_images"
        )
    split = IdentitySplit.create(
        dataset,
        None,
        num_nonmembers,
        references_per_identity=r,
        num_population_identities=num_population_identities,
        seed=seed,
        member_identities=frequent + rare,
    )
    quotas = {n: int(frequent_images) if n in chosen else int(rare_images) for n in split.members}
    return _trim(
        split,
        quotas,
        seed,
        builder="overrepresented",
        overrepresented=sorted(frequent),
        frequent_images=int(frequent_images),
        rare_images=int(rare_images),
    )


def synthetic_split(
    num_members: int,
    num_nonmembers: int,
    member_images: int,
    references_per_identity: int = 5,
    num_population_identities: int = 0,
    other_images: int | None = None,
    num_identities: int | None = None,
    resolution: int = 32,
    seed: int = 0,
    identity_offset: int = 0,
    nuisance: str = "mild",
    split_seed: int = 0,
):
    """A ``SyntheticFaces`` whose member identities have ``member_images`` training images each,
    plus the matching split: the cheap way to get over-represented members.

    Non-member and population identities get ``other_images`` images (default
    ``references_per_identity``). Returns ``(dataset, split)``.
    """
    from gmia_defend.data.synthetic import SyntheticFaces

    r = int(references_per_identity)
    other = int(other_images) if other_images is not None else r
    needed = int(num_members) + int(num_nonmembers) + int(num_population_identities)
    n = int(num_identities) if num_identities is not None else needed
    if n < needed:
        raise DataError(
            f"num_identities={n} < num_members + num_nonmembers + num_population_identities = {needed}; "
            "raise num_identities or leave it unset"
        )
    if int(member_images) < 1:
        raise DataError(f"member_images must be >= 1, got {member_images}")
    picks = sorted(random.Random(int(split_seed)).sample(range(n), int(num_members)))
    counts = [other] * n
    for i in picks:
        counts[i] = int(member_images) + r
    ds = SyntheticFaces(n, counts, resolution=resolution, seed=seed, identity_offset=identity_offset, nuisance=nuisance)
    split = IdentitySplit.create(
        ds,
        None,
        num_nonmembers,
        references_per_identity=r,
        num_population_identities=num_population_identities,
        seed=split_seed,
        member_identities=[ds.identities[i] for i in picks],
    )
    split.meta.update(builder="synthetic_split", member_images=int(member_images))
    return ds, split
