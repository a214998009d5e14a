"""``TrainedEmbedder`` and ``train_identity_embedder``: a small identity embedder trained from scratch.

The default trains on ``SyntheticFaces`` identities far away (``identity_offset``) from any audited
identity, so the embedder has never seen the people it is asked about. Some identities are held out
to measure verification (ROC AUC, TAR at FAR 1e-3) and to calibrate the threshold. The result is
cached by a hash of the full config, so the second call only loads a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gmia_defend.embedders.augment import augment_batch
from gmia_defend.embedders.base import Embedder
from gmia_defend.embedders.network import CosFaceHead, IdentityResNet
from gmia_defend.errors import DataError, UserError, WeightsError
from gmia_defend.embedders.weights import cache_dir as cache_dir_default
from gmia_defend.io import save_torch_atomic

#: Bump when the network, the training recipe or the file format changes: old cache entries are ignored.
RECIPE_VERSION = 1
_FORMAT = "gmia_defend.trained_embedder"


# The default synthetic embedder ships with the package, so the demo starts at once on a fresh
# machine. It is exactly what ``train_identity_embedder()`` writes for its default config (the file
# name is the config hash, so a changed recipe never picks it up); ``gmia-defend train-embedder``
# rebuilds it.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets" / "embedders"


class TrainedEmbedder(Embedder):
    """Small ResNet identity embedder (``IdentityResNet``); input images in [-1, 1] are used as they are.

    ``report``: verification figures and the training config (see ``train_identity_embedder``).

    >>> import torch
    >>> model = TrainedEmbedder(input_size=16, dim=8, width=4).eval()
    >>> tuple(model(torch.zeros(2, 3, 16, 16)).shape)
    (2, 8)
    """

    name = "trained"

    def __init__(self, input_size: int = 32, dim: int = 128, width: int = 16,
                 report: dict[str, Any] | None = None) -> None:
        super().__init__(input_size=input_size, dim=dim)
        self.width = int(width)
        self.net = IdentityResNet(input_size=input_size, dim=dim, width=width)
        self.report: dict[str, Any] = dict(report or {})

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a plain dict (weights, architecture, threshold, report) atomically with ``torch.save``."""
        payload = {
            "format": _FORMAT,
            "recipe_version": RECIPE_VERSION,
            "arch": {"input_size": self.input_size, "dim": self.dim, "width": self.width},
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "threshold": self.threshold,
            "threshold_far": self.threshold_far,
            "report": self.report,
        }
        return save_torch_atomic(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "TrainedEmbedder":
        """Load a file written by ``save`` (``weights_only=True``: no code is unpickled)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"trained embedder file not found: {path}; train one with "
                               "`gmia-defend train-embedder --out PATH` or pass an existing .pt")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # corrupt file, truncated download, or a pickle with code
            raise WeightsError(f"cannot read trained embedder {path}: {type(err).__name__}: {err}; "
                               "re-create it with `gmia-defend train-embedder --out PATH`") from err
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise WeightsError(f"{path} is not a gmia-defend trained embedder (no '{_FORMAT}' format tag); "
                               "for FaceNet weights use the spec 'facenet:<path>'")
        arch = payload["arch"]
        model = cls(input_size=int(arch["input_size"]), dim=int(arch["dim"]), width=int(arch["width"]),
                    report=payload.get("report") or {})
        try:
            model.net.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise WeightsError(f"{path}: weights do not fit the network ({err}); re-create the file") from err
        model.threshold = payload.get("threshold")
        model.threshold_far = payload.get("threshold_far")
        keys = ("auc", "tar_at_far", "threshold", "far", "measured_far", "num_genuine", "num_impostor")
        if all(k in model.report for k in keys):
            model.calibration = {k: model.report[k] for k in keys}
        model.eval()
        return model


# --------------------------------------------------------------------------------------------- data
def _load_images(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    images = dataset.load(list(range(len(dataset))))
    return images.float(), torch.as_tensor(dataset.targets, dtype=torch.long)


def _split_identities(targets: torch.Tensor, num_holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded choice of held-out identities (2+ images each); returns boolean masks (train, holdout)."""
    ids, counts = targets.unique(return_counts=True)
    eligible = ids[counts >= 2]
    if eligible.numel() < 4:
        raise DataError(f"training an embedder needs at least 4 identities with 2+ images; got "
                        f"{eligible.numel()}; add identities or images")
    num_holdout = max(2, min(num_holdout, eligible.numel() // 4))
    gen = torch.Generator().manual_seed(seed + 7919)
    held = eligible[torch.randperm(eligible.numel(), generator=gen)[:num_holdout]]
    holdout = torch.isin(targets, held)
    return ~holdout, holdout


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- training
def _fit(model: TrainedEmbedder, images: torch.Tensor, targets: torch.Tensor, cfg: dict[str, Any],
         device: torch.device, progress: bool) -> dict[str, float]:
    """CosFace training with AdamW, linear warm-up then cosine decay; returns last-epoch loss/accuracy."""
    classes, y = targets.unique(return_inverse=True)
    with torch.random.fork_rng(devices=[]):  # class centres from the seed, global RNG untouched
        torch.manual_seed(cfg["seed"] + 1)
        head = CosFaceHead(model.dim, classes.numel(), scale=cfg["scale"], margin=cfg["margin"]).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    n, bs = images.shape[0], min(cfg["batch_size"], images.shape[0])
    steps_per_epoch = max(1, n // bs)
    total = cfg["epochs"] * steps_per_epoch
    warmup = max(1, min(total // 10, 2 * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(cfg["seed"])
    images_d, y_d = images.to(device), y.to(device)
    use_amp = device.type == "cuda"  # bf16 autocast on CUDA only (no loss scaling needed)
    model.train()
    head.train()
    last = {"loss": float("nan"), "accuracy": float("nan")}
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step in range(steps_per_epoch):
            idx = perm[step * bs:(step + 1) * bs]
            x = augment_batch(images_d[idx], gen, strength=cfg["augment"])
            x = model.preprocess(x)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = head(model.embed_preprocessed(x).float(), y_d[idx])
            loss = F.cross_entropy(logits.float(), y_d[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * idx.numel()  # summed on the device: no sync per step
            correct += (logits.detach().argmax(1) == y_d[idx]).sum()
            seen += idx.numel()
        last = {"loss": float(loss_sum) / seen, "accuracy": int(correct) / seen}
        if progress:
            print(f"[train-embedder] epoch {epoch + 1}/{cfg['epochs']} loss {last['loss']:.3f} "
                  f"train-acc {last['accuracy']:.3f}", file=sys.stderr, flush=True)
    model.eval()
    return last


def train_identity_embedder(
    dataset: Any = None,
    num_identities: int = 300,
    images_per_identity: int = 20,
    resolution: int = 32,
    identity_offset: int = 1_000_000,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    holdout_identities: int = 100,
    nuisance: str = "mild",
    dim: int = 128,
    width: int = 16,
    margin: float = 0.3,
    scale: float = 30.0,
    weight_decay: float = 5e-4,
    augment: float = 1.0,
    far: float = 1e-3,
    cache: bool = True,
) -> TrainedEmbedder:
    """Train (or load from cache) a ``TrainedEmbedder`` and calibrate its threshold on held-out identities.

    ``dataset=None``: ``SyntheticFaces(num_identities + holdout_identities, images_per_identity,
    resolution, seed, identity_offset, nuisance)``; the last ``holdout_identities`` identities are held
    out. A given dataset (any identity dataset: ``targets``, ``load``, ``fingerprint``) is used whole:
    a seeded ``holdout_identities`` of its identities (at most a quarter) are held out. Cache:
    ``cache_dir`` (default ``$GMIA_CACHE`` or ``~/.cache/gmia_defend``) ``/embedders/<config hash>.pt``;
    ``cache=False`` always trains and writes nothing. ``report`` holds ``auc``, ``tar_at_far``, ``far``,
    ``threshold``, ``train_seconds``, ``num_parameters``, ``config`` and more.
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise UserError(f"need epochs >= 1, batch_size >= 2 and lr > 0; got {epochs}, {batch_size}, {lr}")
    if not 0.0 < far < 1.0:
        raise UserError(f"far (false-accept rate of the threshold) must be in (0, 1), e.g. 1e-3; got {far}")
    if dataset is None and (num_identities < 2 or images_per_identity < 2 or holdout_identities < 2):
        raise UserError("need num_identities >= 2, images_per_identity >= 2 and holdout_identities >= 2; got "
                        f"{num_identities}, {images_per_identity}, {holdout_identities}")
    config: dict[str, Any] = {
        "recipe_version": RECIPE_VERSION, "resolution": int(resolution), "epochs": int(epochs),
        "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed), "holdout_identities": int(holdout_identities),
        "dim": int(dim), "width": int(width), "margin": float(margin), "scale": float(scale),
        "weight_decay": float(weight_decay), "augment": float(augment), "far": float(far),
    }
    if dataset is None:
        config["dataset"] = {"type": "synthetic", "num_identities": int(num_identities),
                             "images_per_identity": int(images_per_identity), "resolution": int(resolution),
                             "seed": int(seed), "identity_offset": int(identity_offset), "nuisance": nuisance}
    else:
        spec = dataset.spec() if hasattr(dataset, "spec") else {}
        config["dataset"] = {"spec": spec, "fingerprint": dataset.fingerprint()}
    key = _config_hash(config)
    cache_path = Path(cache_dir or cache_dir_default()) / "embedders" / f"trained-{key}.pt"
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here; use device='cpu'")
    for entry in (cache_path, BUNDLED_DIR / cache_path.name) if cache else ():
        if entry.is_file():
            try:
                return TrainedEmbedder.load(entry).to(dev)
            except WeightsError as err:  # a corrupt entry is rebuilt, not fatal
                print(f"[train-embedder] ignoring unreadable cache entry: {err}", file=sys.stderr)

    start = time.perf_counter()
    if dataset is None:
        from gmia_defend.data import SyntheticFaces

        dataset = SyntheticFaces(num_identities=num_identities + holdout_identities,
                                 images_per_identity=images_per_identity, resolution=resolution, seed=seed,
                                 identity_offset=identity_offset, nuisance=nuisance)
        images, targets = _load_images(dataset)
        holdout = targets >= num_identities
        train = ~holdout
    else:
        images, targets = _load_images(dataset)
        train, holdout = _split_identities(targets, holdout_identities, seed)
    data_seconds = time.perf_counter() - start

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = TrainedEmbedder(input_size=resolution, dim=dim, width=width).to(dev)
    fit_start, fit_cpu = time.perf_counter(), time.process_time()
    last = _fit(model, images[train], targets[train], config, dev, progress)
    train_seconds, train_cpu = time.perf_counter() - fit_start, time.process_time() - fit_cpu

    model.calibrate_threshold(images[holdout], targets[holdout], far=far, seed=seed)
    metrics = model.calibration
    model.report = {
        **metrics,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu, 2),  # all threads; ~ wall time on an idle machine at 1 thread
        "data_seconds": round(data_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        "final_loss": last["loss"],
        "final_train_accuracy": last["accuracy"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_train_images": int(train.sum()),
        "num_train_identities": int(targets[train].unique().numel()),
        "num_holdout_images": int(holdout.sum()),
        "num_holdout_identities": int(targets[holdout].unique().numel()),
        "device": dev.type,
        "torch_threads": torch.get_num_threads(),
        "cache_key": key,
        "config": config,
    }
    if progress:
        print(f"[train-embedder] held-out verification AUC {metrics['auc']:.4f}, TAR {metrics['tar_at_far']:.3f} "
              f"@ FAR {far:g} (threshold {metrics['threshold']:.3f}); trained in {train_seconds:.1f} s",
              file=sys.stderr, flush=True)
    if cache:
        model.save(cache_path)
    return model
