"""Throughput and memory of the streaming identity attack; prints one JSON line.

Timing (same generator, embedder and audit for all three, best of ``--repeats``; on the CPU the
clock is this process's CPU time, single-threaded, because wall time on a shared machine mostly
measures the other processes; on CUDA wall time with synchronisation):
  (a) bare loop: draw latents, generate, embed; nothing kept;
  (b) the full ``IdentityMembershipAttack.run`` (latents, output checks, streaming statistics,
      bootstrap CI, permutation p-value, epsilon bound, evidence regeneration); ``warm`` = reference
      embeddings already cached (every audit after the first, as in the training callback), ``cold``
      = the first run of a fresh attack object, references embedded (each repeat builds a new one;
      one throwaway run on 2 batches first pays the once-per-process imports and lazy inits);
  (c) a naive attack: keep every embedding, build the full [N, references] similarity matrix at the
      end, then the same per-identity statistics and metrics.
  overhead_ratio = b_warm / a, overhead_ratio_cold = b_cold / a, naive_ratio = c / b_cold.
  Generator: a small DCGAN-style conv net (tanh output, 32x32); embedder: ``TrainedEmbedder``
  architecture (random weights: speed does not depend on training); audit: 64 member + 128
  non-member identities x 5 reference images.

Peak memory (``peak_mb_*``): each method runs in a fresh subprocess. On the CPU, torch allocations
are invisible to tracemalloc, so the worker reads the kernel's peak resident set size: after setup
and a small warm-up run it resets the peak (``echo 5 > /proc/self/clear_refs``), runs the method,
and reports ``VmHWM - VmRSS(before)`` from ``/proc/self/status`` (fallback where that is not
writable: ``ru_maxrss`` delta, an underestimate). On CUDA it reports
``torch.cuda.max_memory_allocated`` above the allocation before the run. So the figure is the
memory a method needs *beyond* the models and the audit. To reach N = 100k within the time budget
on a CPU, the memory runs use a cheap generator (linear + tanh) and a linear embedder with the same
embedding size (128) and the same audit: the state each method keeps depends only on N, the
embedding size and the audit, not on the networks' cost. ``--same-models-for-memory`` uses the
timing models instead (slow on CPU, fine on a GPU).

Default runtime on 2 CPU cores: about 1-2 minutes. Options: --time-samples, --repeats, --sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

AUDIT_MEMBERS, AUDIT_NONMEMBERS, AUDIT_REFS, TOP_K, DIM = 64, 128, 5, 10, 128


class DCGANGenerator(nn.Module):
    """z [N, 64] -> images [N, 3, 32, 32] in [-1, 1]."""

    z_dim = 64

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(self.z_dim, width * 2 * 4 * 4)
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(width * 2, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.width * 2, 4, 4))


class CheapGenerator(nn.Module):
    z_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(self.z_dim, 3 * 32 * 32)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(z)).view(-1, 3, 32, 32)


def cheap_embedder():
    from gmia_defend.embedders.base import Embedder

    class LinearEmbedder(Embedder):
        def __init__(self) -> None:
            super().__init__(input_size=32, dim=DIM, name="linear")
            self.fc = nn.Linear(3 * 32 * 32, DIM)
            self.threshold = 0.5

        def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    return LinearEmbedder()


def build(cheap: bool, device: torch.device):
    torch.manual_seed(0)
    if cheap:
        gen, emb = CheapGenerator(), cheap_embedder()
    else:
        from gmia_defend.embedders.trained import TrainedEmbedder

        gen, emb = DCGANGenerator(), TrainedEmbedder(input_size=32, dim=DIM)
        emb.threshold = 0.5
    gen, emb = gen.to(device).eval(), emb.to(device).eval()
    g = torch.Generator().manual_seed(1)
    n_mem, n_non = AUDIT_MEMBERS * AUDIT_REFS, AUDIT_NONMEMBERS * AUDIT_REFS
    audit = SimpleNamespace(
        member_identities=[f"m{i}" for i in range(AUDIT_MEMBERS)],
        nonmember_identities=[f"n{i}" for i in range(AUDIT_NONMEMBERS)],
        member_labels=torch.arange(AUDIT_MEMBERS).repeat_interleave(AUDIT_REFS),
        nonmember_labels=torch.arange(AUDIT_NONMEMBERS).repeat_interleave(AUDIT_REFS),
        member_images=torch.rand(n_mem, 3, 32, 32, generator=g) * 2 - 1,
        nonmember_images=torch.rand(n_non, 3, 32, 32, generator=g) * 2 - 1,
        population_images=None, train_counts={})
    return gen, emb, audit


def bare_loop(gen, emb, n: int, batch: int, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for start in range(0, n, batch):
            z = torch.randn(min(batch, n - start), gen.z_dim, generator=g).to(device)
            emb(gen(z))


def make_attack(emb, audit, n: int, batch: int, device: torch.device):
    from gmia_defend.attack import IdentityMembershipAttack

    return IdentityMembershipAttack(emb, audit, num_samples=n, batch_size=batch, top_k=TOP_K,
                                    device=device, progress=False)


def naive_attack(gen, emb, audit, n: int, batch: int, device: torch.device) -> dict:
    """Keep all embeddings; one [N, R] similarity matrix at the end; same statistics and metrics."""
    from gmia_defend.attack.metrics import membership_metrics

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        refs = torch.cat([emb.embed(audit.member_images.to(device)), emb.embed(audit.nonmember_images.to(device))])
        labels = torch.cat([audit.member_labels, audit.nonmember_labels + AUDIT_MEMBERS]).to(device)
        kept = []
        for start in range(0, n, batch):
            z = torch.randn(min(batch, n - start), gen.z_dim, generator=g).to(device)
            kept.append(emb(gen(z)))
        all_emb = torch.cat(kept)
        pair = all_emb @ refs.T                                    # [N, R]
        ids = AUDIT_MEMBERS + AUDIT_NONMEMBERS
        avg = F.one_hot(labels, ids).float() / AUDIT_REFS          # [R, I]
        sim = pair @ avg                                           # [N, I]
        top = sim.topk(TOP_K, dim=0).values.mean(0)
        best, nearest = sim.max(1)
        matches = torch.bincount(nearest[best >= emb.threshold], minlength=ids)
        sim.max(0)
    y = torch.cat([torch.ones(AUDIT_MEMBERS), torch.zeros(AUDIT_NONMEMBERS)])
    metrics = membership_metrics(top.cpu().numpy(), y.numpy(), n_bootstrap=1000, seed=0)
    return {"metrics": metrics, "matches": int(matches.sum())}


# ------------------------------------------------------------------------ memory worker


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def worker(method: str, n: int, batch: int, device: torch.device, cheap: bool) -> dict:
    torch.set_num_threads(1)
    gen, emb, audit = build(cheap, device)

    def go(num: int) -> None:
        if method == "attack":
            make_attack(emb, audit, num, batch, device).run(gen)
        else:
            naive_attack(gen, emb, audit, num, batch, device)

    go(2 * batch)  # warm-up: lazy inits, allocator pools
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        go(n)
        torch.cuda.synchronize()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20, "method": "cuda"}
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status_kb("VmRSS")
        go(n)
        return {"peak_mb": (_status_kb("VmHWM") - base) / 1024, "method": "VmHWM"}
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        go(n)
        return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "method": "ru_maxrss"}


def measure_memory(method: str, n: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--worker", method, "--worker-n", str(n), "--batch-size", str(args.batch_size),
           "--device", args.device] + ([] if args.same_models_for_memory else ["--cheap"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return round(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"], 1)


# ------------------------------------------------------------------------ timing


def _best(fn, repeats: int, device: torch.device) -> float:
    """Seconds of ``fn``: CPU time of this process on the CPU (robust to other load), else wall clock."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs=2, default=(10_000, 100_000), metavar=("SMALL", "LARGE"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--same-models-for-memory", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--worker", choices=("attack", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cheap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.worker:
        print(json.dumps(worker(args.worker, args.worker_n, args.batch_size, device, args.cheap)))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    n, bs = args.time_samples, args.batch_size
    gen, emb, audit = build(False, device)
    bare_loop(gen, emb, 2 * bs, bs, device)  # warm-up: lazy inits, allocator pools
    make_attack(emb, audit, 2 * bs, bs, device).run(gen)  # warm-up: imports and first calls, once per process
    t_a, t_b, t_cold_all = [], [], []
    for _ in range(args.repeats):  # interleaved, best of each: robust to other load on the machine
        t_a.append(_best(lambda: bare_loop(gen, emb, n, bs, device), 1, device))
        fresh = make_attack(emb, audit, n, bs, device)  # empty reference cache: a first audit
        t_cold_all.append(_best(lambda: fresh.run(gen), 1, device))
        t_b.append(_best(lambda: fresh.run(gen), 1, device))  # references cached: every later audit
    t_c = _best(lambda: naive_attack(gen, emb, audit, n, bs, device), 1, device)
    a, b, t_cold = min(t_a), min(t_b), min(t_cold_all)
    out = {
        "device": str(device), "clock": "wall" if device.type == "cuda" else "process_cpu",
        "time_samples": n, "batch_size": bs,
        "bare_s": round(a, 3), "attack_warm_s": round(b, 3), "attack_cold_s": round(t_cold, 3),
        "naive_s": round(t_c, 3),
        "overhead_ratio": round(b / a, 4), "overhead_ratio_cold": round(t_cold / a, 4),
        "naive_ratio": round(t_c / t_cold, 4),
        "bare_img_per_s": round(n / a, 1),
    }
    if not args.skip_memory:
        small, large = args.sizes
        tag = lambda k: f"{k // 1000}k"
        for method in ("attack", "naive"):
            for size in (small, large):
                out[f"peak_mb_{method}_{tag(size)}"] = measure_memory(method, size, args)
        out["memory_models"] = "timing models" if args.same_models_for_memory else "cheap linear (same dim/audit)"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
