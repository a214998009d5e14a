"""AuditSet: the reference images an identity membership attack compares generated samples with.

Why: the attack needs, per audited identity, a few real photos the generator never trained on
(member references and non-member references), the number of training images of each member (to
relate leakage to over-representation), and optionally photos of extra identities (the population)
to calibrate how often an "average" face is matched. Loading them once into tensors keeps the attack
free of datasets and of Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gmia_defend.data.specs import IdentityDataset
from gmia_defend.data.split import IdentitySplit
from gmia_defend.errors import DataError

__all__ = ["AuditSet"]


@dataclass
class AuditSet:
    """Reference images of member and non-member identities (+ optional population images).

    ``member_labels[i]`` indexes ``member_identities``; likewise for non-members. ``train_counts``
    maps each member identity to its number of training images. ``population_labels`` indexes
    ``population_identities`` (both None when there is no population).
    """

    member_images: torch.Tensor
    member_labels: torch.Tensor
    member_identities: list[str]
    nonmember_images: torch.Tensor
    nonmember_labels: torch.Tensor
    nonmember_identities: list[str]
    population_images: torch.Tensor | None = None
    train_counts: dict[str, int] = field(default_factory=dict)
    population_labels: torch.Tensor | None = None
    population_identities: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.member_identities) < 2 or len(self.nonmember_identities) < 2:
            raise DataError(
                f"an audit needs at least 2 member and 2 non-member identities, got "
                f"{len(self.member_identities)} and {len(self.nonmember_identities)}; use a split with more"
            )
        for name, images, labels, ids in (
            ("member", self.member_images, self.member_labels, self.member_identities),
            ("non-member", self.nonmember_images, self.nonmember_labels, self.nonmember_identities),
        ):
            if images.ndim != 4 or images.shape[0] != labels.shape[0]:
                raise DataError(f"{name} images {tuple(images.shape)} and labels {tuple(labels.shape)} disagree")
            present = set(labels.tolist())
            absent = [ids[i] for i in range(len(ids)) if i not in present]
            if absent:
                raise DataError(f"{name} identities without reference images: {absent[:10]}; rebuild the split")

    @classmethod
    def from_split(cls, dataset: IdentityDataset, split: IdentitySplit) -> "AuditSet":
        """Load every reference (and population) image of ``split`` from ``dataset``."""
        split.validate(dataset)

        def gather(groups: dict[str, list[str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
            names = list(groups)
            keys = [k for n in names for k in groups[n]]
            labels = torch.tensor([i for i, n in enumerate(names) for _ in groups[n]], dtype=torch.int64)
            return dataset.load(dataset.indices_of_keys(keys)), labels, names

        refs = {n: split.references[n] for n in split.members}
        m_img, m_lab, m_ids = gather(refs)
        n_img, n_lab, n_ids = gather(split.nonmembers)
        pop_img = pop_lab = pop_ids = None
        if split.population:
            idx = dataset.indices_of_keys(split.population)
            pop_img = dataset.load(idx)
            owners = [dataset.identities[int(t)] for t in dataset.targets[idx]]
            pop_ids = sorted(set(owners))
            pos = {n: i for i, n in enumerate(pop_ids)}
            pop_lab = torch.tensor([pos[o] for o in owners], dtype=torch.int64)
        return cls(
            member_images=m_img,
            member_labels=m_lab,
            member_identities=m_ids,
            nonmember_images=n_img,
            nonmember_labels=n_lab,
            nonmember_identities=n_ids,
            population_images=pop_img,
            train_counts=split.train_counts,
            population_labels=pop_lab,
            population_identities=pop_ids,
        )

    @classmethod
    def from_photos(
        cls,
        members: dict[str, list[str]],
        nonmembers: dict[str, list[str]],
        train_counts: dict[str, int] | None = None,
        target: str = "facenet",
        population: list[str] | None = None,
        **align_kwargs,
    ) -> "AuditSet":
        """Detect and align faces in unaligned photos (``identity -> [paths]``) into an audit set.

        ``target`` picks the crop of the embedder that will read them ("facenet": 160x160 MTCNN
        crops, "dlib": 150x150 chips aligned on the eyes). Photos with no face or several faces are
        skipped and reported per file (a warning, and ``skipped_photos`` on the result); identities
        left without any usable photo are dropped and reported the same way.
        """
        import warnings

        from gmia_defend.data.photos import align_identity_photos, format_skipped

        aligned = align_identity_photos(members, nonmembers, target=target, population=population,
                                        **align_kwargs)
        if aligned.skipped:
            warnings.warn(f"skipped {len(aligned.skipped)} photo(s):\n{format_skipped(aligned.skipped)}",
                          stacklevel=2)
        if aligned.dropped_identities:
            warnings.warn("identities without a usable photo (dropped): "
                          + ", ".join(aligned.dropped_identities), stacklevel=2)
        counts = train_counts or {}
        audit = cls(
            member_images=aligned.member_images,
            member_labels=aligned.member_labels,
            member_identities=aligned.member_identities,
            nonmember_images=aligned.nonmember_images,
            nonmember_labels=aligned.nonmember_labels,
            nonmember_identities=aligned.nonmember_identities,
            population_images=aligned.population_images,
            train_counts={k: counts[k] for k in aligned.member_identities if k in counts},
        )
        audit.skipped_photos = list(aligned.skipped)
        return audit

    # ---- conveniences --------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.member_images.shape[-1])

    @property
    def identities(self) -> list[str]:
        """Member identities then non-member identities."""
        return list(self.member_identities) + list(self.nonmember_identities)

    @property
    def is_member(self) -> torch.Tensor:
        """Bool per identity of ``identities``."""
        return torch.tensor([True] * len(self.member_identities) + [False] * len(self.nonmember_identities))

    def references(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All reference images and their index into ``identities`` (members first)."""
        images = torch.cat([self.member_images, self.nonmember_images])
        labels = torch.cat([self.member_labels, self.nonmember_labels + len(self.member_identities)])
        return images, labels

    def to(self, device: torch.device | str) -> "AuditSet":
        """A copy with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return AuditSet(
            member_images=move(self.member_images),
            member_labels=move(self.member_labels),
            member_identities=list(self.member_identities),
            nonmember_images=move(self.nonmember_images),
            nonmember_labels=move(self.nonmember_labels),
            nonmember_identities=list(self.nonmember_identities),
            population_images=move(self.population_images),
            train_counts=dict(self.train_counts),
            population_labels=move(self.population_labels),
            population_identities=None if self.population_identities is None else list(self.population_identities),
        )

    def __repr__(self) -> str:
        pop = 0 if self.population_images is None else self.population_images.shape[0]
        return (
            f"AuditSet({len(self.member_identities)} members / {self.member_images.shape[0]} refs, "
            f"{len(self.nonmember_identities)} non-members / {self.nonmember_images.shape[0]} refs, "
            f"{pop} population images, resolution={self.resolution})"
        )
