"""Training throughput of StyleGAN2: images per second for a config's model and batch size.

    python benchmarks/train_step.py [--config configs/demo.yaml] [--batches 30] [--warmup 5]

Runs the real LightningModule (D step, G step, lazy R1, EMA) in a Trainer on random images of the
config's resolution, so the figure includes Lightning's per-step overhead but not data loading.
On CPU it times configs/demo.yaml; with CUDA it also times configs/celeba64.yaml at its precision.
Prints one JSON line. The CPU figure depends on OMP_NUM_THREADS and on other processes: the line
records both (threads, 1-minute load average).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _measure(config_path: Path, batches: int, warmup: int, accelerator: str, precision: str | None) -> dict:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from gmia_defend.models import StyleGAN2

    cfg = yaml.safe_load(config_path.read_text())
    model_kw = dict((cfg.get("model") or {}).get("init_args", cfg.get("model") or {}))
    data_kw = dict((cfg.get("data") or {}).get("init_args", cfg.get("data") or {}))
    resolution = int(data_kw.get("resolution", model_kw.get("resolution", 32)))
    model_kw.update(resolution=resolution, sample_every_n_batches=0)
    batch = int(data_kw.get("batch_size", 32))
    precision = precision or (cfg.get("trainer") or {}).get("precision") or "32-true"
    if accelerator == "cpu":
        precision = "32-true"
    n = batch * (batches + warmup)
    data = TensorDataset(torch.rand(n, 3, resolution, resolution) * 2 - 1, torch.zeros(n, dtype=torch.long))
    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, b, i):
            if accelerator == "gpu":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, module, out, b, i):
            if accelerator == "gpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    pl.seed_everything(0, verbose=False)
    model = StyleGAN2(**model_kw)
    trainer = pl.Trainer(max_steps=2 * (batches + warmup), accelerator=accelerator, devices=1, precision=precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Clock()], default_root_dir="/tmp/gmia_bench")
    trainer.fit(model, DataLoader(data, batch_size=batch, drop_last=True))
    timed = sorted(times[warmup:])
    median = timed[len(timed) // 2]
    return {"config": str(config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path),
            "accelerator": accelerator, "precision": precision, "resolution": resolution, "batch_size": batch,
            "batches_timed": len(timed), "s_per_batch_median": round(median, 4),
            "s_per_batch_mean": round(sum(timed) / len(timed), 4), "images_per_s": round(batch / median, 1),
            "g_params": sum(p.numel() for p in model.G.parameters()),
            "d_params": sum(p.numel() for p in model.D.parameters())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--gpu-config", default=str(ROOT / "configs" / "celeba64.yaml"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    result = {"benchmark": "stylegan2_train_step", "torch": torch.__version__, "omp_threads": threads,
              "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
              "cpu": _measure(Path(args.config), args.batches, args.warmup, "cpu", None)}
    if torch.cuda.is_available():
        result["cuda_device"] = torch.cuda.get_device_name(0)
        result["cuda"] = _measure(Path(args.gpu_config), args.batches, args.warmup, "gpu", None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
