"""``load_embedder(spec)``: one string names an embedder on the command line, in configs and in callbacks.

Specs: ``"synthetic"`` (or ``"synthetic:<resolution>"``; the default embedder for SyntheticFaces,
trained once and cached), a path to a saved ``TrainedEmbedder`` (.pt), ``"facenet"`` /
``"facenet:<weights path>"``, ``"dlib"`` / ``"dlib:<.dat or converted .pt path>"``, ``"pixels"``
(the GAN-Leaks-style pixel-space baseline). An ``Embedder``
instance is returned as it is (moved to ``device``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from gmia_defend.embedders.base import Embedder
from gmia_defend.errors import UserError, WeightsError

VALID_SPECS = ("'synthetic'", "'synthetic:<resolution>'", "'<path/to/embedder.pt>'", "'facenet'",
               "'facenet:<weights.pt>'", "'dlib'", "'dlib:<weights .dat or .pt>'", "'pixels'", "'pixels:<resolution>'")


def _valid_forms() -> str:
    return "valid embedder specs: " + ", ".join(VALID_SPECS)


def _weights_path(kind: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(f"{kind} weights file not found: {value!r}; give an existing file ({_valid_forms()})")
    return str(path)


def _import_embedder_class(module: str, cls: str, extra: str):
    import importlib

    try:
        return getattr(importlib.import_module(f"gmia_defend.embedders.{module}"), cls)
    except ImportError as err:
        raise UserError(f"the {module!r} embedder cannot be imported ({err}); install its dependencies, "
                        f"e.g. `pip install {extra}`") from err


def load_embedder(spec: str | os.PathLike | Embedder = "synthetic",
                  device: str | torch.device | None = None) -> Embedder:
    """Build or load the embedder a spec names, in eval mode, on ``device`` (default: where it was built)."""
    if isinstance(spec, Embedder):
        model = spec
    else:
        model = _from_string(os.fspath(spec).strip())
    if device is not None:
        model = model.to(device)
    return model.eval()


def _from_string(spec: str) -> Embedder:
    kind, sep, arg = spec.partition(":")
    kind_l = kind.lower()
    if kind_l == "synthetic":
        from gmia_defend.embedders.trained import train_identity_embedder

        if not sep:
            return train_identity_embedder().cpu()  # trains on CUDA when there is one
        try:
            resolution = int(arg)
        except ValueError:
            raise UserError(f"bad embedder spec {spec!r}: the resolution after 'synthetic:' must be an "
                            f"integer; {_valid_forms()}") from None
        return train_identity_embedder(resolution=resolution).cpu()
    if kind_l == "pixels":
        from gmia_defend.embedders.pixels import PixelEmbedder

        if not sep:
            return PixelEmbedder()
        if not arg.isdigit():
            raise UserError(f"bad embedder spec {spec!r}: the resolution after 'pixels:' must be an "
                            f"integer; {_valid_forms()}")
        return PixelEmbedder(int(arg))
    if kind_l == "facenet":
        cls = _import_embedder_class("facenet", "FaceNetEmbedder", "facenet-pytorch==2.5.3")
        return cls(weights=_weights_path("FaceNet", arg)) if sep else cls()
    if kind_l == "dlib":
        cls = _import_embedder_class("dlib", "DlibResNetEmbedder", "gmia-defend[dlib]")
        return cls(weights=_weights_path("dlib", arg)) if sep else cls()
    # Anything else must be a saved TrainedEmbedder file (a Windows drive letter also lands here).
    path = Path(spec).expanduser()
    if path.is_file():
        from gmia_defend.embedders.trained import TrainedEmbedder

        return TrainedEmbedder.load(path)
    if path.suffix in (".pt", ".pth") or os.sep in spec or "/" in spec:
        raise WeightsError(f"embedder file not found: {spec!r}; create one with "
                           f"`gmia-defend train-embedder --out {spec}` ({_valid_forms()})")
    raise UserError(f"unknown embedder spec {spec!r}; {_valid_forms()}")


def load_embedders(specs: str | Sequence[str | Embedder], device: str | torch.device | None = None) -> list[Embedder]:
    """Several embedders from a comma-separated string or a list of specs (for a worst-case audit)."""
    if isinstance(specs, str):
        specs = [s for s in (part.strip() for part in specs.split(",")) if s]
    if not specs:
        raise UserError(f"no embedder given; {_valid_forms()}")
    models = [load_embedder(s, device=device) for s in specs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"embedders must have distinct names (metric keys use them); got {names}")
    return models
