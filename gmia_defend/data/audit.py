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

    Every audited identity should have the same number of references (a score computed from more
    photos is less noisy, so unequal counts would change scores for reasons other than leakage):
    ``from_split`` and ``from_photos`` subsample to a common count (seeded); the attack refuses an
    audit whose counts differ and names ``equalize_references()`` as the fix.

    Example:

    >>> from gmia_defend.data import SyntheticFaces, IdentitySplit
    >>> faces = SyntheticFaces(num_identities=30, images_per_identity=6, resolution=16)
    >>> split = IdentitySplit.create(faces, num_members=4, num_nonmembers=8, references_per_identity=3)
    >>> audit = AuditSet.from_split(faces, split)
    >>> audit.reference_counts() == [3] * 12
    True
    >>> audit.equalize_references(2).reference_counts() == [2] * 12
    True
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
    def from_split(cls, dataset: IdentityDataset, split: IdentitySplit, equalize: bool = True) -> "AuditSet":
        """Load every reference (and population) image of ``split`` from ``dataset``.

        ``equalize`` subsamples every audited identity to the smallest reference count (seeded by
        the split's seed); a split made by ``IdentitySplit.create`` already has equal counts.
        """
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
        audit = cls(
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
        return audit.equalize_references(seed=split.seed) if equalize else audit

    @classmethod
    def public_from_split(cls, split: IdentitySplit, dataset: IdentityDataset | None = None,
                          train_counts: dict[str, int] | None = None) -> "AuditSet | None":
        """The public canaries' audit of ``split`` (None when it has none): canaries' references as
        members, public controls' as non-members, no population.

        ``dataset``: where the public people's images are (default: the dataset ``split.public_dataset``
        names, else the split's own). ``train_counts``: each canary's training images, for the table.
        """
        if not split.public_canaries:
            return None
        if dataset is None:
            from gmia_defend.data.specs import open_dataset

            dataset = open_dataset(split.public_dataset or split.dataset)

        def gather(names: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
            keys = [k for n in names for k in split.public_references[n]]
            labels = torch.tensor([i for i, n in enumerate(names) for _ in split.public_references[n]],
                                  dtype=torch.int64)
            return dataset.load(dataset.indices_of_keys(keys)), labels, list(names)

        m_img, m_lab, m_ids = gather(list(split.public_canaries))
        n_img, n_lab, n_ids = gather(list(split.public_controls))
        return cls(member_images=m_img, member_labels=m_lab, member_identities=m_ids, nonmember_images=n_img,
                   nonmember_labels=n_lab, nonmember_identities=n_ids, train_counts=dict(train_counts or {}))

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
        unequal = cls(
            member_images=aligned.member_images,
            member_labels=aligned.member_labels,
            member_identities=aligned.member_identities,
            nonmember_images=aligned.nonmember_images,
            nonmember_labels=aligned.nonmember_labels,
            nonmember_identities=aligned.nonmember_identities,
            population_images=aligned.population_images,
            train_counts={k: counts[k] for k in aligned.member_identities if k in counts},
        )
        audit = unequal.equalize_references(seed=0)
        if audit.reference_counts() != unequal.reference_counts():
            warnings.warn(f"references subsampled to {audit.reference_counts()[0]} per identity (the fewest any "
                          "audited identity has), so scores do not depend on how many photos a person has; "
                          "give every identity the same number of usable photos to keep them all", stacklevel=2)
        audit.skipped_photos = list(aligned.skipped)
        return audit

    # ---- reference counts ---------------------------------------------------------------------
    def reference_counts(self) -> list[int]:
        """References per audited identity (members then non-members)."""
        m = torch.bincount(self.member_labels.long().cpu(), minlength=len(self.member_identities))
        n = torch.bincount(self.nonmember_labels.long().cpu(), minlength=len(self.nonmember_identities))
        return m.tolist() + n.tolist()

    def equalize_references(self, count: int | None = None, seed: int = 0) -> "AuditSet":
        """A copy with exactly ``count`` references per audited identity (default: the fewest any has).

        Which references are kept is a seeded draw per identity; an identity with fewer than
        ``count`` references raises ``DataError`` naming it.
        """
        have = self.reference_counts()
        r = min(have) if count is None else int(count)
        if r < 1:
            raise DataError(f"count must be >= 1, got {count}")
        short = [n for n, c in zip(self.identities, have) if c < r]
        if short:
            raise DataError(f"{len(short)} identities have fewer than {r} references (e.g. {short[0]}); "
                            "lower the count or add photos of them")
        if all(c == r for c in have):
            return self
        g = torch.Generator().manual_seed(int(seed))

        def pick(images: torch.Tensor, labels: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
            keep = []
            for i in range(num):
                rows = torch.nonzero(labels.cpu() == i).flatten()
                keep.append(rows[torch.randperm(rows.numel(), generator=g)[:r]].sort().values)
            idx = torch.cat(keep)
            return images[idx.to(images.device)], labels[idx.to(labels.device)]

        m_img, m_lab = pick(self.member_images, self.member_labels, len(self.member_identities))
        n_img, n_lab = pick(self.nonmember_images, self.nonmember_labels, len(self.nonmember_identities))
        out = AuditSet(m_img, m_lab, list(self.member_identities), n_img, n_lab, list(self.nonmember_identities),
                       self.population_images, dict(self.train_counts), self.population_labels,
                       None if self.population_identities is None else list(self.population_identities))
        out.reference_equalized_from = (min(have), max(have))
        return out

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
