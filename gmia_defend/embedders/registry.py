"""``load_embedder(spec)``: one string names an embedder on the command line, in configs and in callbacks.

Every kind of spec is registered once, with ``@register_embedder(kind, forms)``: the table maps the
part before ``:`` to a builder and to the forms the error messages list, so the valid specs and the
dispatch cannot drift apart. Shipped kinds: ``"synthetic"`` / ``"synthetic:<resolution>"`` (the
default embedder for SyntheticFaces, trained once and cached), ``"facenet"`` / ``"facenet:<weights>"``,
``"dlib"`` / ``"dlib:<.dat or converted .pt>"``, ``"pixels"`` / ``"pixels:<resolution>"`` (the
GAN-Leaks-style pixel-space baseline), and any other string is a path to a saved ``TrainedEmbedder``.
An ``Embedder`` instance is returned as it is (moved to ``device``).

Building an embedder draws initial layer weights from the global RNG before the saved weights are
loaded; ``load_embedder`` does it inside ``preserved_rng()``, so loading one in the middle of a
training run changes nothing in that run.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from gmia_defend.embedders.base import Embedder
from gmia_defend.errors import UserError, WeightsError
from gmia_defend.rng import preserved_rng

__all__ = ["load_embedder", "load_embedders", "register_embedder", "unregister_embedder", "valid_specs"]

#: Builder signature: ``build(spec, arg)`` where ``arg`` is the text after ``kind:`` (None without one).
Builder = Callable[[str, "str | None"], Embedder]


@dataclass(frozen=True)
class _Kind:
    forms: tuple[str, ...]
    build: Builder


_KINDS: dict[str, _Kind] = {}
_PATH_FORMS = ("<path/to/embedder.pt>",)


def register_embedder(kind: str, forms: Sequence[str]) -> Callable[[Builder], Builder]:
    """Register a builder for specs ``kind`` / ``kind:<arg>`` (case-insensitive kind).

    ``forms`` are the spellings error messages list, e.g. ``("mine", "mine:<weights.pt>")``.

    >>> @register_embedder("doc-pixels", ["doc-pixels"])
    ... def _build(spec, arg):
    ...     from gmia_defend.embedders.pixels import PixelEmbedder
    ...     return PixelEmbedder(8)
    >>> load_embedder("doc-pixels").input_size
    8
    >>> "'doc-pixels'" in valid_specs()
    True
    >>> unregister_embedder("doc-pixels")
    """
    key = kind.lower()

    def decorate(build: Builder) -> Builder:
        _KINDS[key] = _Kind(tuple(forms), build)
        return build

    return decorate


def unregister_embedder(kind: str) -> None:
    """Remove a registered kind (tests, plugins replacing a builder)."""
    _KINDS.pop(kind.lower(), None)


def valid_specs() -> tuple[str, ...]:
    """Every spec form the registry accepts, quoted, for messages."""
    forms = [form for kind in _KINDS.values() for form in kind.forms] + list(_PATH_FORMS)
    return tuple(f"'{form}'" for form in forms)


def _valid_forms() -> str:
    return "valid embedder specs: " + ", ".join(valid_specs())


def _weights_path(kind: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(f"{kind} weights file not found: {value!r}; give an existing file ({_valid_forms()})")
    return str(path)


def _resolution(spec: str, arg: str) -> int:
    if not arg.strip().isdigit():
        raise UserError(f"bad embedder spec {spec!r}: the resolution after ':' must be an integer; {_valid_forms()}")
    return int(arg)


def _import_embedder_class(module: str, cls: str, extra: str):
    try:
        return getattr(importlib.import_module(f"gmia_defend.embedders.{module}"), cls)
    except ImportError as err:
        raise UserError(f"the {module!r} embedder cannot be imported ({err}); install its dependencies, "
                        f"e.g. `pip install {extra}`") from err


@register_embedder("synthetic", ["synthetic", "synthetic:<resolution>"])
def _synthetic(spec: str, arg: str | None) -> Embedder:
    from gmia_defend.embedders import trained

    if arg is None:
        return trained.train_identity_embedder().cpu()  # trains on CUDA when there is one
    return trained.train_identity_embedder(resolution=_resolution(spec, arg)).cpu()


@register_embedder("facenet", ["facenet", "facenet:<weights.pt>"])
def _facenet(spec: str, arg: str | None) -> Embedder:
    cls = _import_embedder_class("facenet", "FaceNetEmbedder", "facenet-pytorch==2.5.3")
    return cls(weights=_weights_path("FaceNet", arg)) if arg is not None else cls()


@register_embedder("dlib", ["dlib", "dlib:<weights .dat or .pt>"])
def _dlib(spec: str, arg: str | None) -> Embedder:
    cls = _import_embedder_class("dlib", "DlibResNetEmbedder", "gmia-defend[dlib]")
    return cls(weights=_weights_path("dlib", arg)) if arg is not None else cls()


@register_embedder("pixels", ["pixels", "pixels:<resolution>"])
def _pixels(spec: str, arg: str | None) -> Embedder:
    from gmia_defend.embedders.pixels import PixelEmbedder

    return PixelEmbedder() if arg is None else PixelEmbedder(_resolution(spec, arg))


def _saved_file(spec: str) -> Embedder:
    """Anything not registered must be a saved TrainedEmbedder file (a Windows drive letter lands here too)."""
    path = Path(spec).expanduser()
    if path.is_file():
        from gmia_defend.embedders.trained import TrainedEmbedder

        return TrainedEmbedder.load(path)
    if path.suffix in (".pt", ".pth") or os.sep in spec or "/" in spec:
        raise WeightsError(f"embedder file not found: {spec!r}; create one with "
                           f"`gmia-defend train-embedder --out {spec}` ({_valid_forms()})")
    raise UserError(f"unknown embedder spec {spec!r}; {_valid_forms()}")


def _from_string(spec: str) -> Embedder:
    kind, sep, arg = spec.partition(":")
    entry = _KINDS.get(kind.lower())
    if entry is None:
        return _saved_file(spec)
    return entry.build(spec, arg if sep else None)


def load_embedder(spec: str | os.PathLike | Embedder = "synthetic",
                  device: str | torch.device | None = None) -> Embedder:
    """Build or load the embedder a spec names, in eval mode, on ``device`` (default: where it was built).

    Global random states (torch, numpy, ``random``) are the same afterwards as before.

    >>> load_embedder("pixels:16").dim
    768
    """
    if isinstance(spec, Embedder):
        model = spec
    else:
        with preserved_rng():
            model = _from_string(os.fspath(spec).strip())
    if device is not None:
        model = model.to(device)
    return model.eval()


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
