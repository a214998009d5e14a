"""What an identity dataset is, and how to re-open one from the spec a split stores.

Every identity dataset (``SyntheticFaces``, ``IdentityImageFolder``) derives from ``IdentityDataset``,
which provides the identity bookkeeping shared by both: ``fingerprint``, ``indices_of`` and key
lookups. ``open_dataset(spec)`` turns the dict a dataset's ``.spec()`` returns back into the dataset,
so a ``split.json`` can be re-opened by the CLI.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from gmia_defend.errors import DataError, UserError

__all__ = ["IdentityDataset", "open_dataset", "DATASET_TYPES"]

DATASET_TYPES = ("synthetic", "folder")


def _format_list(items: Sequence[str], limit: int = 10) -> str:
    """First ``limit`` items, one per line, plus how many more."""
    shown = "\n  ".join(str(x) for x in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {shown}{more}"


class IdentityDataset(Dataset):
    """Base of identity-labelled image sets.

    Subclasses set ``identities`` (list of names), ``targets`` (LongTensor, identity index of every
    image), ``keys`` (stable unique image keys) and ``resolution``, and implement ``load`` and
    ``spec``. Items are ``(Tensor[3,R,R] float32 in [-1,1], int identity index)``.
    """

    identities: list[str]
    targets: torch.Tensor
    keys: list[str]
    resolution: int

    # -- to implement -------------------------------------------------------------------------
    def load(self, indices: Sequence[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fingerprint_extra(self) -> str:
        """Anything besides identities and keys that changes the pixels (e.g. a seed)."""
        return ""

    # -- shared -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return self.load([index])[0], int(self.targets[index])

    def fingerprint(self) -> str:
        """Short hash of (identities, keys, pixel-relevant settings): checks a split matches."""
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is None:
            h = hashlib.sha256()
            h.update(self._fingerprint_extra().encode())
            h.update(b"\x00identities\x00")
            h.update("\n".join(self.identities).encode())
            h.update(b"\x00keys\x00")
            h.update("\n".join(self.keys).encode())
            cached = h.hexdigest()[:16]
            self._fingerprint_cache = cached
        return cached

    def _identity_ranges(self) -> dict[str, list[int]]:
        cached = getattr(self, "_identity_index_cache", None)
        if cached is None:
            cached = {name: [] for name in self.identities}
            for i, t in enumerate(self.targets.tolist()):
                cached[self.identities[t]].append(i)
            self._identity_index_cache = cached
        return cached

    def indices_of(self, identity: str) -> list[int]:
        """Dataset indices of every image of ``identity``."""
        try:
            return list(self._identity_ranges()[identity])
        except KeyError:
            raise DataError(
                f"unknown identity {identity!r}: this dataset has {len(self.identities)} identities "
                f"(e.g. {self.identities[:3]}); use a name from dataset.identities"
            ) from None

    def _key_index(self) -> dict[str, int]:
        cached = getattr(self, "_key_index_cache", None)
        if cached is None:
            cached = {k: i for i, k in enumerate(self.keys)}
            self._key_index_cache = cached
        return cached

    def indices_of_keys(self, keys: Sequence[str]) -> list[int]:
        """Dataset index of every key; unknown keys -> one DataError listing them."""
        index = self._key_index()
        missing = [k for k in keys if k not in index]
        if missing:
            raise DataError(
                f"{len(missing)} image key(s) are not in this dataset:{_format_list(missing)}\n"
                "Fix: use the dataset the split was made for, or recreate the split for this dataset."
            )
        return [index[k] for k in keys]

    def identity_of_key(self, key: str) -> str:
        """Identity name of the image with this key (DataError if unknown)."""
        (i,) = self.indices_of_keys([key])
        return self.identities[int(self.targets[i])]

    def counts(self) -> dict[str, int]:
        """Number of images per identity."""
        return {name: len(idx) for name, idx in self._identity_ranges().items()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.identities)} identities, {len(self)} images, "
            f"resolution={self.resolution})"
        )


def open_dataset(spec: dict[str, Any] | str) -> IdentityDataset:
    """Re-open a dataset from its ``.spec()`` dict.

    ``{"type": "synthetic", ...SyntheticFaces arguments}`` or ``{"type": "folder", "root": ...,
    "resolution": ...}``. A plain string is accepted as a shortcut: ``"synthetic"`` (defaults) or a
    folder path.
    """
    if isinstance(spec, str):
        spec = {"type": "synthetic"} if spec == "synthetic" else {"type": "folder", "root": spec}
    if not isinstance(spec, dict):
        raise UserError(
            f"a dataset spec must be a dict with a 'type' key, got {type(spec).__name__}; "
            "use dataset.spec() to make one"
        )
    args = dict(spec)
    kind = args.pop("type", None)
    if kind == "synthetic":
        from gmia_defend.data.synthetic import SyntheticFaces as cls
    elif kind == "folder":
        from gmia_defend.data.folder import IdentityImageFolder as cls
    else:
        raise UserError(
            f"unknown dataset type {kind!r} in spec {spec!r}; use one of {list(DATASET_TYPES)} "
            "(e.g. {'type': 'folder', 'root': 'path/to/faces', 'resolution': 64})"
        )
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise UserError(
            f"unknown key(s) {unknown} in {kind} dataset spec; allowed: {sorted(allowed)}"
        )
    return cls(**args)
