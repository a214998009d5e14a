"""Cost of auditing with ``gmia-defend watch`` instead of inside training, for the same generator.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/watch_overhead.py [--num-samples 5000] [--snapshots 3]

The generator is the demo's StyleGAN2 (32 px, z = w = 64, channel_base 512, channel_max 128; random
weights), the embedder a ``TrainedEmbedder`` of the shipped architecture (input 32, 128-d, width 16;
random weights: the timing does not depend on them), the audit set the demo's sizes (32 members,
128 non-members, 64 population identities, 5 references). Both sides are warm (reference embeddings
and real statistics cached by a first audit that is not timed), as in a long run.

- in-training: what the monitor does per audit: ``Auditor.audit(G_ema)`` on the live module, then
  ``AuditLog.append`` (record and evidence grid);
- watch: per snapshot file, what ``Watcher.audit_snapshot`` does: load it (NVIDIA-layout pickle, or
  a Lightning ``.ckpt``), audit, append, rewrite ``release.json`` and (unless ``--no-figures``) redraw
  the report figures.

Each snapshot is timed on every variant in turn (monitor, watch .pkl, watch .ckpt, watch without
figures), so the machine's load drifts over all of them alike. Prints one JSON line with the medians and ``watch_vs_monitor_ratio`` (pickle snapshots, figures on;
target <= 1.2), plus the ``.ckpt`` and no-figures variants.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _model(seed: int):
    from gmia_defend.models import StyleGAN2

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return StyleGAN2(resolution=32, z_dim=64, w_dim=64, mapping_layers=2, channel_base=512, channel_max=128)


def _world(num_samples: int):
    from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces
    from gmia_defend.embedders.trained import TrainedEmbedder

    faces = SyntheticFaces(num_identities=224, images_per_identity=25, resolution=32, seed=0)
    split = IdentitySplit.create(faces, 32, 128, references_per_identity=5, num_population_identities=64, seed=0)
    audit = AuditSet.from_split(faces, split)
    real = faces.load(split.train_indices(faces)[:num_samples])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        embedder = TrainedEmbedder(input_size=32, dim=128, width=16).eval()
    return embedder, audit, real


def _auditor(embedder, audit, real, num_samples: int):
    from gmia_defend.audit import Auditor

    return Auditor(copy.deepcopy(embedder), audit, num_samples=num_samples, batch_size=256, seed=0,
                   real_images=real, attack_options={"n_bootstrap": 1000})


def _write_snapshot(run: Path, model, kimg: int, kind: str) -> Path:
    import pytorch_lightning as pl

    run.mkdir(parents=True, exist_ok=True)
    if kind == "pkl":
        path = run / f"network-snapshot-{kimg:06d}.pkl"
        path.write_bytes(pickle.dumps({"G": model.G, "D": model.D, "G_ema": model.G_ema, "augment_pipe": None}))
    else:
        path = run / f"kimg={kimg}.ckpt"
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=run)
        trainer.strategy.connect(model)
        trainer.save_checkpoint(path)
    return path


class _Monitor:
    """What the in-training monitor does per audit, on the live module."""

    def __init__(self, world, num_samples: int, run: Path) -> None:
        from gmia_defend.audit import AuditLog

        self.auditor, self.log = _auditor(*world, num_samples), AuditLog(run)

    def __call__(self, model, kimg: int) -> None:
        record = self.auditor.audit(model.G_ema, kimg=float(kimg))
        self.log.append(record, self.auditor.result)


class _Watch:
    """What watch does per snapshot file: load, audit, append, release.json, figures."""

    def __init__(self, world, num_samples: int, run: Path, kind: str, figures: bool) -> None:
        from gmia_defend.watch.runner import WatchOptions, Watcher

        self.run, self.kind = run, kind
        options = WatchOptions(patterns=("network-snapshot-*.pkl", "*.ckpt"), trust_pickle=True, figures=figures,
                               settle_s=0.0)
        self.watcher = Watcher(run, _auditor(*world, num_samples), options, echo=lambda s: None)

    def prepare(self, model, kimg: int):
        from gmia_defend.watch.snapshots import Snapshot

        return Snapshot.of(_write_snapshot(self.run, model, kimg, self.kind), self.run)

    def __call__(self, snap) -> None:
        assert self.watcher.audit_snapshot(snap) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--snapshots", type=int, default=3, help="timed snapshots per variant (plus one warm-up)")
    args = parser.parse_args()
    models = [_model(seed) for seed in range(args.snapshots + 1)]
    world = _world(args.num_samples)
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        monitor = _Monitor(world, args.num_samples, tmp / "monitor")
        watchers = {"pkl": _Watch(world, args.num_samples, tmp / "pkl", "pkl", True),
                    "ckpt": _Watch(world, args.num_samples, tmp / "ckpt", "ckpt", True),
                    "nofig": _Watch(world, args.num_samples, tmp / "nofig", "pkl", False)}
        times: dict[str, list[float]] = {"monitor": [], **{k: [] for k in watchers}}
        for i, model in enumerate(models):
            kimg = i * 40
            snaps = {k: w.prepare(model, kimg) for k, w in watchers.items()}  # files written before timing
            # interleaved, so the machine's load drifts over every variant alike; round 0 warms up
            for name in ["monitor", *watchers]:
                start = time.perf_counter()
                if name == "monitor":
                    monitor(model, kimg)
                else:
                    watchers[name](snaps[name])
                if i > 0:
                    times[name].append(time.perf_counter() - start)
    m = {k: med(v) for k, v in times.items()}
    out = {
        "num_samples": args.num_samples, "timed_snapshots": args.snapshots,
        "monitor_audit_s": round(m["monitor"], 3),
        "watch_snapshot_s": round(m["pkl"], 3),
        "watch_vs_monitor_ratio": round(m["pkl"] / m["monitor"], 3),
        "watch_ckpt_snapshot_s": round(m["ckpt"], 3),
        "watch_vs_monitor_ratio_ckpt": round(m["ckpt"] / m["monitor"], 3),
        "watch_no_figures_snapshot_s": round(m["nofig"], 3),
        "watch_vs_monitor_ratio_no_figures": round(m["nofig"] / m["monitor"], 3),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
