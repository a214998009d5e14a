"""The release artifact: the released generator's fp32 weights and the model's own hyper-parameters.

Nothing else: no callback state, discriminator, optimizer, loops, dataset spec, split seed or
identity name. It is a ``torch.save``d dict that loads with ``weights_only=True`` (no pickle)::

    {"format": "gmia-defend-release", "version": 1, "module_class": "pkg.mod:Class",
     "hparams": {...JSON-safe...}, "generator_attr": "G_ema", "state_dict": {...fp32...}, "z_dim": int}

``load_release`` rebuilds ``Class(**hparams)`` and returns its ``generator_attr`` submodule with the
saved weights (or the module itself when ``generator_attr`` is None).

Example:
    >>> import tempfile, torch
    >>> g = torch.nn.Linear(4, 4)
    >>> path = save_release(tempfile.mkdtemp() + "/release.ckpt", g, hparams={"in_features": 4, "out_features": 4})
    >>> sorted(torch.load(path, weights_only=True))
    ['format', 'generator_attr', 'hparams', 'module_class', 'state_dict', 'version', 'z_dim']
    >>> torch.equal(load_release(path).weight, g.weight)
    True
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from gmia_defend.errors import UserError
from gmia_defend.io import save_torch_atomic

FORMAT = "gmia-defend-release"
VERSION = 1


def _json_safe(value: Any) -> Any:
    """``value`` if it survives JSON (and ``weights_only`` loading) unchanged, else a ``ValueError``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    raise ValueError(type(value).__name__)


def model_hparams(module: Any) -> dict[str, Any]:
    """The module's own JSON-safe hyper-parameters (``module.hparams``); others are left out, and so are
    private entries a framework adds (LightningCLI's ``_instantiator``): they are no constructor arguments."""
    out: dict[str, Any] = {}
    for key, value in dict(getattr(module, "hparams", None) or {}).items():
        if str(key).startswith("_"):
            continue
        try:
            out[str(key)] = _json_safe(value)
        except ValueError:
            continue
    json.dumps(out)
    return out


def release_payload(module: nn.Module, generator_attr: str | None = None,
                    hparams: Mapping[str, Any] | None = None, z_dim: int | None = None) -> dict[str, Any]:
    """The release dict of ``module`` (a LightningModule and the generator's attribute, or a generator)."""
    generator = getattr(module, generator_attr) if generator_attr else module
    if not isinstance(generator, nn.Module):
        raise UserError(f"the generator to release must be an nn.Module; got {type(generator).__name__}")
    cls = type(module)
    state = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).clone()
             for k, v in generator.state_dict().items()}
    z = z_dim if z_dim is not None else getattr(generator, "z_dim", getattr(module, "z_dim", None))
    return {"format": FORMAT, "version": VERSION, "module_class": f"{cls.__module__}:{cls.__qualname__}",
            "hparams": dict(hparams) if hparams is not None else model_hparams(module),
            "generator_attr": generator_attr, "state_dict": state, "z_dim": int(z) if z is not None else None}


def save_release(path: str | Path, module: nn.Module, generator_attr: str | None = None,
                 hparams: Mapping[str, Any] | None = None, z_dim: int | None = None) -> Path:
    """Write the release file of ``module``'s generator atomically; returns the path."""
    payload = release_payload(module, generator_attr, hparams, z_dim)
    return save_torch_atomic(path, payload)


def is_release(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def load_release(path: str | Path, device: str | torch.device = "cpu",
                 build: Callable[[dict], nn.Module] | None = None) -> nn.Module:
    """The released generator (eval mode) from a release file, without unpickling anything.

    ``build(hparams) -> module`` replaces ``module_class(**hparams)`` (e.g. when the class is not
    importable under its saved name).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"release file not found: {p}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a full Lightning checkpoint or a pickle lands here
        raise UserError(f"{p} is not a gmia-defend release file ({type(err).__name__}); releases load with "
                        "weights_only=True: write one with gmia_defend.audit.save_release") from None
    if not is_release(data):
        raise UserError(f"{p} is not a gmia-defend release file (no format {FORMAT!r}); for a Lightning "
                        "checkpoint use gmia_defend.attack.generators.load_generator")
    if int(data.get("version", 0)) > VERSION:
        raise UserError(f"{p} is a release file of version {data['version']}; upgrade gmia-defend to read it")
    module = build(dict(data["hparams"])) if build is not None else _build(data, p)
    attr = data.get("generator_attr")
    generator = getattr(module, attr) if attr else module
    generator.load_state_dict(data["state_dict"])
    if data.get("z_dim") is not None and not hasattr(generator, "z_dim"):
        generator.z_dim = int(data["z_dim"])
    return generator.to(device).eval()


def _build(data: Mapping[str, Any], path: Path) -> nn.Module:
    from gmia_defend.rng import preserved_rng

    mod_name, _, qual = str(data["module_class"]).partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{path}: cannot import {data['module_class']} ({err}); put its package on PYTHONPATH "
                        "or pass build= a function hparams -> module") from None
    with preserved_rng():  # building draws initial weights; they are overwritten, the caller's RNG is not
        try:
            return obj(**{k: v for k, v in data["hparams"].items() if not str(k).startswith("_")})
        except TypeError as err:
            raise UserError(f"{path}: {data['module_class']}(**hparams) failed ({err}); pass build= a function "
                            "hparams -> module") from None
