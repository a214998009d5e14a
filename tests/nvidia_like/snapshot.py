"""Write NVIDIA-layout training outputs: ``network-snapshot-<kimg>.pkl`` and ``metric-fid50k_full.jsonl``."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import torch

from nvidia_like.networks import Discriminator, Generator


def make_networks(seed: int = 0, c_dim: int = 0, resolution: int = 16, generator_cls=Generator):
    """(G, D, G_ema), seeded, without touching the caller's global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = generator_cls() if generator_cls is not Generator else Generator(c_dim=c_dim, img_resolution=resolution)
        D = Discriminator(c_dim=c_dim, img_resolution=resolution)
    return G, D, copy.deepcopy(G).eval()


def snapshot_name(kimg: int) -> str:
    return f"network-snapshot-{int(kimg):06d}.pkl"


def snapshot_bytes(G, D, G_ema, kimg: int = 0) -> bytes:
    """The pickle of a snapshot dict laid out as NVIDIA's training loop writes it."""
    data = {"G": G, "D": D, "G_ema": G_ema, "augment_pipe": None,
            "training_set_kwargs": {"path": "faces.zip", "resolution": G.img_resolution}, "cur_nimg": kimg * 1000}
    return pickle.dumps({k: (copy.deepcopy(v).eval().requires_grad_(False).cpu() if isinstance(v, torch.nn.Module)
                             else v) for k, v in data.items()})


def write_snapshot(run_dir: str | Path, kimg: int, seed: int = 0, c_dim: int = 0, generator_cls=Generator) -> Path:
    G, D, G_ema = make_networks(seed=seed, c_dim=c_dim, generator_cls=generator_cls)
    path = Path(run_dir) / snapshot_name(kimg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(snapshot_bytes(G, D, G_ema, kimg))
    return path


def append_fid(run_dir: str | Path, kimg: int, fid: float) -> None:
    line = {"results": {"fid50k_full": fid}, "metric": "fid50k_full", "total_time": 1.0,
            "total_time_str": "1s", "num_gpus": 1, "snapshot_pkl": snapshot_name(kimg), "timestamp": 0.0}
    with open(Path(run_dir) / "metric-fid50k_full.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")


def write_state_dict(run_dir: str | Path, kimg: float, seed: int = 0) -> Path:
    """A plain ``torch.save`` of G_ema's weights, as a custom loop might write (``--generator-factory``)."""
    G, _, G_ema = make_networks(seed=seed)
    path = Path(run_dir) / f"gen-kimg={kimg:g}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(G_ema.state_dict(), path)
    return path


def load_state_dict(path) -> torch.nn.Module:
    """``--generator-factory nvidia_like.snapshot:load_state_dict``: rebuild and load the weights."""
    G = Generator()
    G.load_state_dict(torch.load(path, weights_only=True))
    return G.eval()
