"""Real images for the quality reference of the leakage monitor: training set, population, or the user's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from gmia_defend.errors import UserError

QUALITY_REFERENCES = ("train", "population")  # or a folder path, a tensor, or trainer -> tensor


def real_images_for(reference: Any, trainer: Any, n: int, seed: int, audit: Callable[[], Any]) -> torch.Tensor:
    """``n`` real images in [-1, 1]: ``"train"`` samples the training set (private), ``"population"``
    the audit set's population identities (never trained on), a folder path samples that folder (at the
    audit set's resolution), a tensor or ``trainer -> tensor`` as given."""
    if isinstance(reference, str) and reference == "population":
        images = getattr(audit(), "population_images", None)
        if images is None or len(images) == 0:
            raise UserError("quality_reference='population' needs population identities in the audit split "
                            "(IdentitySplit.create(..., num_population_identities=...)), or pass a tensor of public images")
        return torch.as_tensor(images)[:n]
    if isinstance(reference, (str, Path)) and str(reference) not in QUALITY_REFERENCES:
        from gmia_defend.data import open_dataset

        folder = Path(reference).expanduser()
        if not folder.is_dir():
            raise UserError(f"quality_reference {str(reference)!r} is neither 'train', 'population' nor a folder "
                            "of images (one sub-folder per identity)")
        dataset = open_dataset({"type": "folder", "root": str(folder), "resolution": audit().resolution})
        return sample_dataset(dataset, n, seed)
    if isinstance(reference, str):
        dataset = train_dataset(trainer)
        if dataset is None:
            raise UserError("cannot find real training images for the quality metric: pass real_images= "
                            "(a tensor of images in [-1, 1]) or fid=False")
        return sample_dataset(dataset, n, seed)
    images = reference(trainer) if callable(reference) else reference
    return torch.as_tensor(images)[:n]


def train_dataset(trainer: Any) -> Any:
    loader = getattr(trainer, "train_dataloader", None)
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        dm = getattr(trainer, "datamodule", None)
        dataset = getattr(dm, "train_dataset", None)
    return dataset


def sample_dataset(dataset: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` images (or all, if fewer) from a map-style dataset, chosen by ``seed``; RNG-neutral."""
    from torch.utils.data import Subset

    try:
        size = len(dataset)
    except TypeError:
        raise UserError("the training set has no length (an IterableDataset): pass real_images= to "
                        "IdentityLeakageMonitor, or fid=False") from None
    g = torch.Generator().manual_seed(int(seed) + 7919)
    idx = torch.randperm(size, generator=g)[:min(n, size)].sort().values.tolist()
    base, mapped = dataset, idx
    if isinstance(dataset, Subset) and hasattr(dataset.dataset, "load"):
        base, mapped = dataset.dataset, [int(dataset.indices[i]) for i in idx]
    if hasattr(base, "load") and callable(base.load):
        return torch.as_tensor(base.load(mapped))
    items = [dataset[i] for i in idx]
    images = [it[0] if isinstance(it, (tuple, list)) else (next(iter(it.values())) if isinstance(it, dict) else it)
              for it in items]
    return torch.stack([torch.as_tensor(x) for x in images])
