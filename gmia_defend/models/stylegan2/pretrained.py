"""Start a StyleGAN2 from pretrained weights: a Lightning checkpoint of the same model, or a release file.

Why: DP generators reach usable quality mainly by pretraining without privacy on public data and
then fine-tuning privately on the protected people. ``StyleGAN2(init_from=PATH)`` (CLI:
``--model.init_from PATH``) loads G, D and G_ema from a checkpoint of the pretraining run, or G and
G_ema from a release file (which holds the released generator only; D then keeps its fresh
initialisation). Only weights are loaded (``torch.load(weights_only=True)``): no optimizer state, step
counter or callback state, so the fine-tuning run starts its own counters, privacy accounting included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from gmia_defend.errors import UserError

RELEASE_FORMAT = "gmia-defend-release"
_NETWORKS = ("G", "D", "G_ema")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"model.init_from: {str(path)!r} does not exist; give a .ckpt of a StyleGAN2 run or a "
                        "release file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.init_from: cannot read {str(path)!r} as a weights-only torch file ({first}); give "
                        "a Lightning checkpoint of StyleGAN2 or a release file") from exc


def pretrained_state(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{"G": ..., "D": ..., "G_ema": ...}`` state dicts found in a checkpoint or release file
    (a release file gives ``G`` and ``G_ema``, both its generator's weights)."""
    path = Path(path).expanduser()
    obj = _read(path)
    if isinstance(obj, Mapping) and obj.get("format") == RELEASE_FORMAT:
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise UserError(f"model.init_from: release file {str(path)!r} has no state_dict; re-export it")
        attr = str(obj.get("generator_attr") or "G_ema")
        prefix = attr + "."
        weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
        return {"G": dict(weights), "G_ema": dict(weights)}
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise UserError(f"model.init_from: {str(path)!r} is neither a Lightning checkpoint (no 'state_dict') nor a "
                        "gmia-defend release file")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in _NETWORKS:
        prefix = name + "."
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            out[name] = part
    if "G_ema" not in out and "G" not in out:
        raise UserError(f"model.init_from: {str(path)!r} holds no StyleGAN2 generator weights (no 'G.' or 'G_ema.' "
                        "keys); give a checkpoint of a StyleGAN2 run")
    return out


def _mismatches(net: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> list[str]:
    own = net.state_dict()
    problems = [f"{name}.{k} (missing in the file)" for k in own if k not in state]
    problems += [f"{name}.{k} (not in this model)" for k in state if k not in own]
    problems += [f"{name}.{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return problems


def load_pretrained(module: nn.Module, path: str | Path) -> list[str]:
    """Copy the networks found in ``path`` into ``module`` (a StyleGAN2); returns their names.

    Refuses, naming the mismatching keys, a file whose architecture differs from the module's.
    """
    parts = pretrained_state(path)
    problems: list[str] = []
    for name, state in parts.items():
        problems += _mismatches(getattr(module, name), state, name)
    if problems:
        shown = ", ".join(problems[:8]) + (f" and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise UserError(f"model.init_from: {str(path)!r} does not match this model's architecture: {shown}; build the "
                        "model with the pretraining run's model settings (resolution, z_dim, w_dim, channels, "
                        "mapping_layers, dp_compatible, mbstd_group_size)")
    with torch.no_grad():
        for name, state in parts.items():
            getattr(module, name).load_state_dict(state, strict=True)
    return list(parts)
