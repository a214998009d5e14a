"""IdentityDataModule: training data and the matching audit set from one identity split.

Why: a GAN script (or LightningCLI YAML) should get, from one object, both the images to train on
and the held-out references the leakage callbacks audit with, so the two can never disagree. All
arguments are plain types so LightningCLI can set them from YAML.

Batches are ``(images float32 [B,3,R,R] in [-1,1], labels int64 [B])`` where a label identifies the
person (identity-level DP groups by it, so two people never share one):

- a member's label is its index in ``datamodule.dataset.identities``;
- with ``train_on="public"``, a public person's label is its index in ``datamodule.public_dataset.identities``;
- a public canary trained with the members (``public_canaries``) is labelled
  ``len(datamodule.dataset.identities) + its index in datamodule.public_dataset.identities`` when the
  public people come from another dataset (a disjoint synthetic range, a ``public_folder``), and by
  its index in ``datamodule.dataset.identities`` when they are unused identities of the same folder
  (``public_dataset is dataset``): never a member's label.

The data order is a function of ``split_seed`` and the epoch, and the position in the epoch is
saved in checkpoints: a run resumed from a checkpoint trains on exactly the batches the
uninterrupted run would have. Under DDP each rank takes its own slice of that order: build the
Trainer with ``use_distributed_sampler=False`` (``gmia-defend fit`` does).

Public pretraining: ``train_on="public"`` trains on identities that are public (neither members,
non-members, nor population): ``public_identities`` synthetic identities from a range disjoint from
the dataset's, or that many unused identities of the folder, or every identity of ``public_folder``.
The split records them (``split.json``), and refuses any overlap with the audited identities.

Public canaries: ``public_canaries=C`` mixes C public identities into the member training set on
purpose, each with held-out references, against public control identities never trained on.
``datamodule.public_audit_set`` audits them (canaries as members, controls as non-members): a
leakage figure computed from public people only, so a release rule that reads it (e.g. choosing a
checkpoint under differential privacy) touches no protected data. ``split.json`` records the
canaries, the controls and their reference keys.

One file on purpose: the training data, its resumable order and the matching audit set come from one split and must agree.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gmia_defend.data.audit import AuditSet
from gmia_defend.data.sampling import ResumableBatchSampler, cap_per_identity, synthetic_split
from gmia_defend.data.specs import IdentityDataset
from gmia_defend.data.split import IdentitySplit
from gmia_defend.errors import DataError, UserError

TRAIN_ON = ("members", "public")

__all__ = ["IdentityDataModule", "PrerenderedImages", "IndexedImages", "ConcatImages"]

# seed offsets (added to split_seed) of the public audit's draws
_CANARY_DRAW_SEED = 32_452_843
_CANARY_REFERENCE_SEED = 49_979_687
_CANARY_CAP_SEED = 67_867_967


class PrerenderedImages(Dataset):
    """Training images held in memory as uint8 (4x smaller than float); items in [-1,1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].to(torch.float32) / 127.5 - 1.0, self.labels[i]


class IndexedImages(Dataset):
    """A view of some dataset indices, loaded per item (for image folders, with workers).

    ``label_offset`` is added to every label (people of another dataset trained alongside)."""

    def __init__(self, dataset: IdentityDataset, indices: list[int], label_offset: int = 0) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.labels = dataset.targets[torch.as_tensor(self.indices, dtype=torch.int64)] + int(label_offset)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.load([self.indices[i]])[0], self.labels[i]


class ConcatImages(Dataset):
    """Image datasets with ``.labels`` one after another; ``.labels`` is their concatenation."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = list(parts)
        self.labels = torch.cat([p.labels for p in self.parts]).to(torch.int64)  # type: ignore[attr-defined]
        self._ends = list(itertools.accumulate(len(p) for p in self.parts))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        k = bisect.bisect_right(self._ends, i)
        return self.parts[k][i - (self._ends[k - 1] if k else 0)]


class IdentityDataModule(pl.LightningDataModule):
    """Training images and the audit set from an identity split.

    >>> dm = IdentityDataModule(num_members=2, num_nonmembers=2, num_population_identities=0,
    ...                         images_per_identity=4, references_per_identity=1, batch_size=2,
    ...                         resolution=16, public_identities=3)
    >>> images, labels = next(iter(dm.train_dataloader()))
    >>> tuple(images.shape), dm.num_train_images
    ((2, 3, 16, 16), 6)
    >>> len(dm.public_identity_names), set(dm.public_identity_names) & set(dm.split.members)
    (3, set())
    >>> pretrain = IdentityDataModule(num_members=2, num_nonmembers=2, num_population_identities=0,
    ...                               images_per_identity=4, references_per_identity=1, batch_size=2,
    ...                               resolution=16, public_identities=3, train_on="public")
    >>> pretrain.num_train_images  # 3 public identities x 4 images; no member image
    12

    Public canaries: 2 of 8 public identities are trained on with the members, 6 are controls.

    >>> canary = IdentityDataModule(num_members=2, num_nonmembers=2, num_population_identities=0,
    ...                             images_per_identity=4, references_per_identity=1, batch_size=2,
    ...                             resolution=16, public_identities=8, public_canaries=2)
    >>> canary.num_train_images  # 2 members x 3 + 2 canaries x 4 training images
    14
    >>> audit = canary.public_audit_set
    >>> len(audit.member_identities), len(audit.nonmember_identities), sorted(audit.train_counts.values())
    (2, 6, [4, 4])

    Args:
        dataset: "synthetic" (procedural faces) or a folder path laid out as root/<identity>/<image>.
        resolution: image size (synthetic renders at it; folder images are resized and centre-cropped).
        num_identities: synthetic identities (default: members + non-members + population).
        images_per_identity: synthetic images per identity (all identities unless member_images is set).
        seed: synthetic rendering seed.
        nuisance: synthetic nuisance level: "mild" (default), "strong" or "none".
        identity_offset: first synthetic identity index (keep audits disjoint from embedder training).
        num_members: member identities (trained on, audited with held-out references).
        num_nonmembers: non-member identities (never trained on, audited).
        references_per_identity: held-out reference images per audited identity.
        num_population_identities: extra identities (neither trained on nor audited) for calibration.
        split_seed: seed of the identity split.
        member_images: synthetic only: training images per member identity (over-representation);
            non-member and population identities then get ``images_per_identity`` images.
        member_image_budget: synthetic only: total training images shared equally by the members
            (``member_images = budget // num_members``): sweeping ``num_members`` at a fixed budget
            trades diversity against frequency, as in the paper.
        split_path: load this split.json instead of creating one (its dataset spec is used).
        max_images_per_identity: cap training images per member identity (None: no cap).
        balanced: draw identities uniformly, then an image (identity-balanced sampling).
        batch_size, num_workers, drop_last: DataLoader settings.
        pin_memory: None = on when CUDA is available.
        train_on: "members" (default) or "public": pretrain on the public identities only (no
            member image is trained on; the audit set stays the same).
        public_identities: number of public identities: synthetic data renders them from identity
            indices after the dataset's own; a folder dataset uses that many of its identities the
            split does not use (seeded by ``split_seed``).
        public_images_per_identity: synthetic only: images per public identity (default
            ``images_per_identity``).
        public_folder: a folder root/<identity>/<image> of public people; all its identities are
            public (names must not be members, non-members or population identities).
        public_canaries: number of public identities mixed into the member training set on purpose
            and audited as public members by ``public_audit_set`` (0: none; else >= 2; needs
            ``public_identities`` or ``public_folder``). Drawn among the public identities with a
            seeded shuffle (``split_seed``); each holds out ``references_per_identity`` seeded
            references (never trained on) and trains on its other images (capped by
            ``max_images_per_identity`` like the members). With ``train_on="public"`` the canaries
            and controls are left out of pretraining.
        public_canary_images: synthetic public people only: training images per canary (default
            ``public_images_per_identity``); canaries are rendered with this many +
            ``references_per_identity`` images, so they can be over-represented like the members.
        public_controls: public identities never trained on, audited as public non-members
            (default ``4 * public_canaries``, capped by the public identities left; at least 2).
            From a folder, canaries and controls must both have >= ``references_per_identity`` + 1
            images (one eligibility rule, as for members and non-members); synthetic controls need
            ``public_images_per_identity >= references_per_identity``.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        resolution: int = 32,
        num_identities: int | None = None,
        images_per_identity: int = 20,
        seed: int = 0,
        nuisance: str = "mild",
        identity_offset: int = 0,
        num_members: int = 32,
        num_nonmembers: int = 128,
        references_per_identity: int = 5,
        num_population_identities: int = 64,
        split_seed: int = 0,
        member_images: int | None = None,
        member_image_budget: int | None = None,
        split_path: str | None = None,
        max_images_per_identity: int | None = None,
        balanced: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        drop_last: bool = True,
        train_on: str = "members",
        public_identities: int = 0,
        public_images_per_identity: int | None = None,
        public_folder: str | None = None,
        public_canaries: int = 0,
        public_canary_images: int | None = None,
        public_controls: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset_arg = dataset
        self.resolution = int(resolution)
        self.num_identities = num_identities
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.nuisance = nuisance
        self.identity_offset = int(identity_offset)
        self.num_members = int(num_members)
        self.num_nonmembers = int(num_nonmembers)
        self.references_per_identity = int(references_per_identity)
        self.num_population_identities = int(num_population_identities)
        self.split_seed = int(split_seed)
        if member_image_budget is not None:
            if member_images is not None:
                raise DataError("give either member_images or member_image_budget, not both")
            if int(member_image_budget) < int(num_members):
                raise DataError(f"member_image_budget={member_image_budget} is smaller than num_members="
                                f"{num_members}: every member needs at least one training image; raise the "
                                "budget or lower num_members")
            member_images = int(member_image_budget) // int(num_members)
        self.member_images = member_images
        self.split_path = split_path
        self.max_images_per_identity = max_images_per_identity
        self.balanced = bool(balanced)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.drop_last = bool(drop_last)
        if self.batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if train_on not in TRAIN_ON:
            raise UserError(f"data.train_on must be one of {TRAIN_ON}, got {train_on!r}")
        self.train_on = train_on
        self.public_identities = int(public_identities or 0)
        self.public_images_per_identity = (int(public_images_per_identity) if public_images_per_identity
                                           else self.images_per_identity)
        self.public_folder = public_folder
        if self.public_identities < 0:
            raise UserError(f"data.public_identities must be >= 0, got {public_identities}")
        if self.public_identities and public_folder:
            raise UserError("give data.public_identities or data.public_folder, not both")
        if train_on == "public" and not (self.public_identities or public_folder):
            raise UserError("data.train_on=public needs public people: set data.public_identities=N (identities "
                            "outside the split) or data.public_folder=PATH")
        self.public_canaries = int(public_canaries or 0)
        self.public_canary_images = None if public_canary_images is None else int(public_canary_images)
        self.public_controls = None if public_controls is None else int(public_controls)
        self._check_public_audit_args()
        self._public: IdentityDataset | None = None
        self._public_indices: list[int] | None = None
        self._sampler: ResumableBatchSampler | None = None
        self._resume: dict[str, int] | None = None
        self._dataset: IdentityDataset | None = None
        self._split: IdentitySplit | None = None
        self._audit: AuditSet | None = None
        self._train: Dataset | None = None
        self._train_indices: list[int] | None = None
        self._public_audit: AuditSet | None = None
        self._public_audit_draw: tuple[list[str], list[str]] | None = None  # synthetic: drawn before rendering
        self._canary_train_keys: dict[str, list[str]] = {}
        self._pretrain_indices: list[int] | None = None

    def _check_public_audit_args(self) -> None:
        c = self.public_canaries
        if c == 0:
            extra = [name for name, v in (("public_canary_images", self.public_canary_images),
                                          ("public_controls", self.public_controls)) if v is not None]
            if extra:
                raise UserError(f"data.{' and data.'.join(extra)} set but data.public_canaries=0; set "
                                "data.public_canaries=N (>= 2) or drop them")
            return
        if not (self.public_identities or self.public_folder):
            raise UserError("data.public_canaries needs public people: set data.public_identities=N (identities "
                            "outside the split) or data.public_folder=PATH")
        if c < 2:
            raise UserError(f"data.public_canaries={c}: the public audit needs at least 2 canaries (and 2 controls); "
                            "set data.public_canaries >= 2, or 0 for none")
        if self.public_canary_images is not None and self.public_canary_images < 1:
            raise UserError(f"data.public_canary_images={self.public_canary_images}: every canary needs >= 1 "
                            "training image; set it >= 1 or leave it unset")
        if self.public_controls is not None and self.public_controls < 2:
            raise UserError(f"data.public_controls={self.public_controls}: the public audit needs at least 2 "
                            "control identities; set data.public_controls >= 2 or leave it unset (4 per canary)")

    # ---- lazily built pieces -------------------------------------------------------------------
    def _build(self) -> None:
        if self._dataset is not None:
            return
        if self.split_path:
            split = IdentitySplit.load(self.split_path)
            if len(split.public_canaries) != self.public_canaries:
                raise UserError(f"{self.split_path} lists {len(split.public_canaries)} public canaries but "
                                f"data.public_canaries={self.public_canaries}: give the same public options the run "
                                "was trained with (data.public_identities/public_folder, public_canaries, "
                                "public_canary_images, public_controls), or the canaries would silently change")
            dataset = split.open_dataset(resolution=self.resolution)
        elif self.dataset_arg == "synthetic":
            if self.member_images is not None:
                dataset, split = synthetic_split(
                    self.num_members,
                    self.num_nonmembers,
                    int(self.member_images),
                    references_per_identity=self.references_per_identity,
                    num_population_identities=self.num_population_identities,
                    other_images=self.images_per_identity,
                    num_identities=self.num_identities,
                    resolution=self.resolution,
                    seed=self.seed,
                    identity_offset=self.identity_offset,
                    nuisance=self.nuisance,
                    split_seed=self.split_seed,
                )
            else:
                from gmia_defend.data.synthetic import SyntheticFaces

                n = self.num_identities or (self.num_members + self.num_nonmembers + self.num_population_identities)
                dataset = SyntheticFaces(
                    n,
                    self.images_per_identity,
                    resolution=self.resolution,
                    seed=self.seed,
                    identity_offset=self.identity_offset,
                    nuisance=self.nuisance,
                )
                split = self._create_split(dataset)
        else:
            from gmia_defend.data.folder import IdentityImageFolder

            dataset = IdentityImageFolder(self.dataset_arg, resolution=self.resolution)
            split = self._create_split(dataset)
        split.validate(dataset)
        if self.max_images_per_identity is not None:
            split = self._capped(dataset, split)
        self._dataset, self._split = dataset, split
        if self.public_identities or self.public_folder:
            self._split = self._with_public(dataset, split)
            if self.train_on == "public" and self.public_canaries and not self._pretrain_indices:
                s = self._split
                raise UserError(f"data.train_on=public: no public identity is left for pretraining ({len(s.public)} "
                                f"public identities: {len(s.public_canaries)} canaries + {len(s.public_controls)} "
                                "controls, reserved for the public audit); raise data.public_identities (or use a "
                                "bigger data.public_folder) or lower data.public_controls")

    def _capped(self, dataset: IdentityDataset, split: IdentitySplit) -> IdentitySplit:
        """The split with at most ``max_images_per_identity`` training images per member."""
        cap = int(self.max_images_per_identity)  # type: ignore[arg-type]
        idx = cap_per_identity(split.train_indices(dataset), dataset.targets, cap, self.split_seed)
        kept: dict[str, list[str]] = {name: [] for name in split.members}
        for i in idx:
            kept[dataset.identities[int(dataset.targets[i])]].append(dataset.keys[i])
        return split.with_training(kept, max_images_per_identity=cap)

    def _create_split(self, dataset: IdentityDataset) -> IdentitySplit:
        return IdentitySplit.create(
            dataset,
            self.num_members,
            self.num_nonmembers,
            references_per_identity=self.references_per_identity,
            num_population_identities=self.num_population_identities,
            seed=self.split_seed,
        )

    def _public_source(self, dataset: IdentityDataset, split: IdentitySplit) -> tuple[IdentityDataset, list[int]]:
        """(dataset holding the public images, their indices in it)."""
        if self.public_folder:
            from gmia_defend.data.folder import IdentityImageFolder

            same = Path(self.public_folder).resolve() == Path(self.dataset_arg).resolve()
            if self.dataset_arg != "synthetic" and same:
                raise UserError("data.public_folder is the training dataset itself; name a folder of other people")
            public = IdentityImageFolder(self.public_folder, resolution=self.resolution)
            return public, list(range(len(public)))
        from gmia_defend.data.synthetic import SyntheticFaces

        if isinstance(dataset, SyntheticFaces):
            # identity indices right after the dataset's own: disjoint by construction
            offset = dataset.identity_offset + dataset.num_identities
            counts: int | list[int] = self.public_images_per_identity
            if self.public_canaries:
                # draw canaries first: they are rendered with their references on top of their training images
                names = SyntheticFaces(self.public_identities, 1, resolution=self.resolution, seed=dataset.seed,
                                       identity_offset=offset, nuisance=dataset.nuisance).identities
                self._public_audit_draw = self._draw_public_audit(names, None)
                canaries = self._public_audit_draw[0]
                r = self.references_per_identity
                if self.public_images_per_identity < r:
                    raise UserError(f"data.public_images_per_identity={self.public_images_per_identity} is below "
                                    f"references_per_identity={r}: public controls need {r} reference images each; "
                                    f"raise data.public_images_per_identity to >= {r}")
                train = self.public_canary_images or self.public_images_per_identity
                counts = [train + r if n in canaries else self.public_images_per_identity for n in names]
            public = SyntheticFaces(self.public_identities, counts,
                                    resolution=self.resolution, seed=dataset.seed,
                                    identity_offset=offset, nuisance=dataset.nuisance)
            return public, list(range(len(public)))
        used = set(split.members) | set(split.nonmembers) | {dataset.identity_of_key(k) for k in split.population}
        free = [n for n in dataset.identities if n not in used]
        import random

        random.Random(self.split_seed + 15_485_863).shuffle(free)
        if len(free) < self.public_identities:
            raise UserError(f"data.public_identities={self.public_identities} but only {len(free)} identities of the "
                            "dataset are outside the split; lower it or name a data.public_folder")
        chosen = sorted(free[: self.public_identities])
        return dataset, [i for n in chosen for i in dataset.indices_of(n)]

    def _with_public(self, dataset: IdentityDataset, split: IdentitySplit) -> IdentitySplit:
        public, indices = self._public_source(dataset, split)
        names = sorted({public.identities[int(public.targets[i])] for i in indices})
        self._public, self._public_indices = public, indices
        # refuses, naming them, public identities the split already uses; people from another dataset
        # (a disjoint synthetic range, a public folder) are recorded with that dataset's spec
        split = split.with_public(names, dataset=None if public is dataset else public.spec())
        self._pretrain_indices = list(indices)
        if self.public_canaries:
            split = self._with_public_audit(public, names, split)
            reserved = set(split.public_canaries) | set(split.public_controls)
            self._pretrain_indices = [i for i in indices if public.identities[int(public.targets[i])] not in reserved]
        return split

    def _draw_public_audit(self, names: list[str], counts: dict[str, int] | None) -> tuple[list[str], list[str]]:
        """(canaries, controls) drawn from ``names`` by a seeded shuffle. ``counts`` (images per name)
        None: synthetic people, rendered after the draw with as many images as they need."""
        c, r = self.public_canaries, self.references_per_identity
        order = sorted(names)
        random.Random(self.split_seed + _CANARY_DRAW_SEED).shuffle(order)
        need = r + 1
        # one eligibility rule for canaries and controls, so being a canary cannot correlate with photo count
        eligible = order if counts is None else [n for n in order if counts[n] >= need]
        if len(eligible) < c:
            raise UserError(f"data.public_canaries={c} but only {len(eligible)} of the {len(order)} public identities "
                            f"have >= {need} images (references_per_identity={r} held out + >= 1 training image); "
                            "lower data.public_canaries or data.references_per_identity, or use public people with "
                            "more images")
        rest = eligible[c:]
        k = min(4 * c, len(rest)) if self.public_controls is None else self.public_controls
        if k < 2 or k > len(rest):
            asked = "" if self.public_controls is None else f" data.public_controls={self.public_controls} asks for {k};"
            raise UserError(f"the public audit needs >= 2 control identities (public, never trained on), but only "
                            f"{len(rest)} eligible public identities are left after {c} canaries;{asked} raise "
                            "data.public_identities (or use a bigger data.public_folder), or lower "
                            "data.public_canaries or data.public_controls")
        return sorted(eligible[:c]), sorted(rest[:k])

    def _with_public_audit(self, public: IdentityDataset, names: list[str], split: IdentitySplit) -> IdentitySplit:
        """The split recording canaries, controls and their references; keeps the canaries' training keys."""
        from gmia_defend.data.synthetic import SyntheticFaces

        if self._public_audit_draw is not None:
            canaries, controls = self._public_audit_draw
        else:
            if self.public_canary_images is not None and not isinstance(public, SyntheticFaces):
                raise UserError("data.public_canary_images applies to synthetic public people only; these come from a "
                                "folder, so each canary trains on all its images but its references: drop "
                                "data.public_canary_images")
            counts = public.counts()
            canaries, controls = self._draw_public_audit(names, {n: counts[n] for n in names})
        r = self.references_per_identity
        rng = random.Random(self.split_seed + _CANARY_REFERENCE_SEED)
        cap_rng = random.Random(self.split_seed + _CANARY_CAP_SEED)
        cap = self.max_images_per_identity
        references: dict[str, list[str]] = {}
        self._canary_train_keys = {}
        for name in sorted(set(canaries) | set(controls)):
            keys = [public.keys[i] for i in public.indices_of(name)]
            rng.shuffle(keys)
            references[name] = sorted(keys[:r])
            if name in canaries:
                train = sorted(keys[r:])
                if cap is not None and len(train) > int(cap):  # capped like the members
                    train = sorted(cap_rng.sample(train, int(cap)))
                self._canary_train_keys[name] = train
        return split.with_public_audit(canaries, controls, references)

    @property
    def public_identity_names(self) -> list[str]:
        """Names of the public identities (empty without a public set)."""
        self._build()
        if self._public is None or self._public_indices is None:
            return []
        return sorted({self._public.identities[int(self._public.targets[i])] for i in self._public_indices})

    @property
    def public_dataset(self) -> IdentityDataset | None:
        """The dataset the public images come from (None without a public set)."""
        self._build()
        return self._public

    @property
    def dataset(self) -> IdentityDataset:
        self._build()
        return self._dataset  # type: ignore[return-value]

    @property
    def split(self) -> IdentitySplit:
        self._build()
        return self._split  # type: ignore[return-value]

    @property
    def audit_set(self) -> AuditSet:
        """Reference images of member / non-member identities (+ population), built once."""
        if self._audit is None:
            self._audit = AuditSet.from_split(self.dataset, self.split)
        return self._audit

    @property
    def public_audit_set(self) -> AuditSet | None:
        """The public audit (None without ``public_canaries``): reference images of the public
        canaries (as members, ``train_counts`` = their training images in this datamodule's
        training set: 0 with ``train_on="public"``) and of the public controls (as non-members), no
        population. Only public people: a release rule may read it without touching protected data."""
        if not self.public_canaries:
            return None
        if self._public_audit is None:
            self._public_audit = AuditSet.public_from_split(self.split, self.public_dataset, self.canary_train_counts)
        return self._public_audit

    @property
    def train_indices(self) -> list[int]:
        """Indices of the training images: in ``dataset`` (members, after any per-identity cap), or
        with ``train_on="public"`` in ``public_dataset`` (public people but canaries and controls).
        Canaries trained with the members are in ``canary_train_indices``."""
        if self._train_indices is None:
            if self.train_on == "public":
                self._build()
                self._train_indices = list(self._pretrain_indices or [])
            else:
                self._train_indices = self.split.train_indices(self.dataset)
        return self._train_indices

    @property
    def canary_train_indices(self) -> list[int]:
        """Indices in ``public_dataset`` of the canaries' training images, trained after the members'
        (empty without ``public_canaries`` or with ``train_on="public"``)."""
        self._build()
        if self.train_on != "members" or not self._canary_train_keys or self._public is None:
            return []
        return self._public.indices_of_keys([k for n in sorted(self._canary_train_keys)
                                             for k in self._canary_train_keys[n]])

    @property
    def canary_train_counts(self) -> dict[str, int]:
        """Training images per public canary in this training set (0 each with ``train_on="public"``)."""
        self._build()
        on = self.train_on == "members"
        return {n: len(keys) if on else 0 for n, keys in sorted(self._canary_train_keys.items())}

    @property
    def train_counts(self) -> dict[str, int]:
        """Training images per member identity (members only: canaries are in ``canary_train_counts``)."""
        return self.split.train_counts

    @property
    def num_train_images(self) -> int:
        """Images in the training set (members' and canaries', or the public pretraining images)."""
        return len(self.train_indices) + len(self.canary_train_indices)

    @property
    def train_dataset(self) -> Dataset:
        if self._train is None:
            idx = self.train_indices
            if not idx:
                raise DataError("the training set is empty; check the split and max_images_per_identity")
            from gmia_defend.data.synthetic import SyntheticFaces

            source = self.public_dataset if self.train_on == "public" else self.dataset
            canaries = self.canary_train_indices
            if canaries:
                self._train = self._with_canaries(idx, canaries)
            elif isinstance(source, SyntheticFaces):  # render once: far faster than per item
                images = source.load(idx)
                self._train = PrerenderedImages(images, source.targets[torch.as_tensor(idx)])
            else:
                self._train = IndexedImages(source, idx)
        return self._train

    def _with_canaries(self, idx: list[int], canaries: list[int]) -> Dataset:
        """Members' training images, then the canaries' (labels never a member's: module docstring)."""
        from gmia_defend.data.synthetic import SyntheticFaces

        data, public = self.dataset, self.public_dataset
        assert public is not None
        if public is data:  # unused identities of the same dataset: their index is already unique
            if isinstance(data, SyntheticFaces):
                both = idx + canaries
                return PrerenderedImages(data.load(both), data.targets[torch.as_tensor(both)])
            return IndexedImages(data, idx + canaries)
        offset = len(data.identities)
        labels = [data.targets[torch.as_tensor(idx)], public.targets[torch.as_tensor(canaries)] + offset]
        if isinstance(data, SyntheticFaces) and isinstance(public, SyntheticFaces):
            return PrerenderedImages(torch.cat([data.load(idx), public.load(canaries)]), torch.cat(labels))
        parts: list[Dataset] = []
        for source, indices, shift, lab in ((data, idx, 0, labels[0]), (public, canaries, offset, labels[1])):
            if isinstance(source, SyntheticFaces):
                parts.append(PrerenderedImages(source.load(indices), lab))
            else:
                parts.append(IndexedImages(source, indices, label_offset=shift))
        return ConcatImages(parts)

    # ---- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:  # nothing to download
        pass

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            _ = self.train_dataset
            trainer = getattr(self, "trainer", None)
            # The run folder always says what was trained on and what is audited, so any of its
            # checkpoints can be given to `gmia-defend attack --audit <run>/split.json`.
            if trainer is not None and trainer.is_global_zero and trainer.default_root_dir:
                self.save_split(trainer.default_root_dir)

    def train_dataloader(self) -> DataLoader:
        data = self.train_dataset
        if self.drop_last and len(data) < self.batch_size:
            raise DataError(
                f"only {len(data)} training images but batch_size={self.batch_size} with drop_last: no "
                "batch would be produced; lower batch_size or add member identities/images"
            )
        pin = torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)
        trainer = self._trainer_or_none()
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # the order depends on (split_seed, epoch) only, and the position is checkpointed
        sampler = ResumableBatchSampler(len(data), self.batch_size, seed=self.split_seed, drop_last=self.drop_last,
                                        labels=data.labels if self.balanced else None,  # type: ignore[attr-defined]
                                        rank=rank, world_size=world)
        if self._resume is not None:
            sampler.resume(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        self._sampler = sampler
        return DataLoader(data, batch_sampler=sampler, num_workers=self.num_workers, pin_memory=pin,
                          persistent_workers=self.num_workers > 0)

    def _trainer_or_none(self) -> Any:
        try:
            return getattr(self, "trainer", None)
        except RuntimeError:
            return None

    # ---- outputs -------------------------------------------------------------------------------
    def save_split(self, run_dir: str | os.PathLike) -> Path:
        """Write ``<run_dir>/split.json``: exactly what is trained on and what is audited."""
        return self.split.save(Path(run_dir) / "split.json")

    def split_hash(self) -> str:
        """Short hash of the split, stored in checkpoints to detect resuming on other data."""
        text = json.dumps(self.split.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Split hash (to refuse resuming on other data) and the position in the data order."""
        state: dict[str, Any] = {"split_hash": self.split_hash(), "dataset_fingerprint": self.split.dataset_fingerprint}
        trainer = self._trainer_or_none()
        if trainer is not None and self._sampler is not None:
            # batches handed to training in the current epoch (prefetched ones are not counted)
            done = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
            state["position"] = {"epoch": int(trainer.current_epoch), "batches": done}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = state.get("split_hash")
        if expected and expected != self.split_hash():
            raise DataError(
                "the checkpoint was trained on another identity split than this datamodule builds "
                f"(split hash {expected} vs {self.split_hash()}); resume with the same data arguments "
                "or pass split_path=<run>/split.json"
            )
        position = state.get("position")
        if position:
            self._resume = {"epoch": int(position["epoch"]), "batches": int(position["batches"])}
            if self._sampler is not None:
                self._sampler.resume(self._resume["epoch"], self._resume["batches"])
