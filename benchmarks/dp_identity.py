"""Protecting people with DP: privacy / quality frontier of public pretraining + private fine-tuning.

On the embedded synthetic faces: ``people`` member identities are protected; ``heavy`` of them are
over-represented (``heavy_images`` training images each, the people a generator memorises), the
others have ``light_images`` each. A StyleGAN2 (the CPU demo's network, DP-compatible D) is first
pretrained without privacy on ``public_people`` identities from a disjoint synthetic range, then
fine-tuned on the members for the same number of batches, from the same weights, in every row:

  nonprivate        no DP, every member image (the reference for leakage and quality)
  uls_eps{2,4,8}    user-level sampling: people Poisson-sampled, up to k images each, the person's
                    summed gradient clipped; epsilon per person from the Opacus PRV accountant
  els_eps{2,4,8}    example-level sampling: images Poisson-sampled from data capped at k images a
                    person, per-image clipping; epsilon per person from the mixture-of-Gaussians PLD
  scratch_{els,uls}_eps8   both schemes at epsilon 8 without pretraining (fresh weights)

Every fine-tuning row takes the same ``finetune_batches`` batches of ``batch`` images from the same
weights (64 x 400 by default: the non-private model needs that many steps to leak measurably; with
256 x 50 it reads only AUC 0.69). Each row is audited once at its end (G_ema, ``samples`` latents, the
trained ``synthetic`` embedder, top-k-mean score) on the ``heavy`` members against ``nonmembers`` never
trained on. Quality is the Fréchet distance in the embedder's space to fresh people of the same
population that no row trained on (``fd``), with the distance to the members' training images beside
it (``fd_train``: 71 % of those images show the 32 over-represented people, so that distance rewards
re-creating them). Per-person delta = 1 / (10 x people). Noise is solved so each DP row reaches its
per-person epsilon exactly at its last step. The DP noise is seeded from OS entropy: DP rows differ
from run to run (three runs at epsilon 8 from the same weights: ULS AUC 0.54-0.57, FD 0.52-0.86;
ELS AUC 0.60-0.68, FD 0.79-1.04).

  pretrained_only   the public model itself, no fine-tuning (epsilon 0 for the members)

    python benchmarks/dp_identity.py [--quick] [--out runs/dp_identity] [--parallel 2] [--batch 64] [--batches 400]

DP rows take 16 discriminator steps per generator step (``--d-steps``; Bie et al. 2023): the 400
private D steps are all accounted, and G moves 25 times against a D that has averaged more noise.

Measured (Nov 30 2026, idle 2 CPU cores, --parallel 2): 858 s wall (pretraining 98 s). Non-private:
AUC 0.755 [0.654, 0.840], FD 0.124; public model alone: AUC 0.492, FD 0.160. Best pretrained DP row
at epsilon ~8 per person: ULS, AUC 0.511 [0.408, 0.623], FD 0.183 (1.48x the non-private); ELS at 7.99:
AUC 0.504 [0.406, 0.616], FD 0.206; from scratch at 8: ULS FD 0.472, ELS 0.402. Every pretrained DP
interval contains 0.5. No DP row beats the public model alone (best: ULS at epsilon 4, FD 0.173).
With one D step per G step (``--d-steps 1``, 1,488 s) the same rows lost far more quality: ULS at
epsilon 8 FD 0.590 (0.52-0.86 over three runs), ELS 0.79-1.04, and ELS leaked at epsilon 4 and 8.

Prints a table, writes ``<out>/frontier.png`` and ``<out>/result.json``; the last line is one JSON
object. ``--quick``: tiny sizes (a smoke test, well under 30 s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FULL = dict(people=2000, heavy=32, heavy_images=300, light_images=2, nonmembers=128, population=64, refs=5,
            public_people=2000, public_images=4, pretrain_batches=500, pretrain_batch=32, finetune_batches=400,
            batch=64,
            k=4, samples=2000, real_fd_images=4000, epsilons=[2.0, 4.0, 8.0], scratch_epsilon=8.0,
            max_grad_norm=1.0, dp_d_steps=16)
QUICK = dict(people=40, heavy=4, heavy_images=12, light_images=2, nonmembers=8, population=8, refs=3,
             public_people=40, public_images=2, pretrain_batches=3, pretrain_batch=8, finetune_batches=3, batch=8,
             k=2, samples=200, real_fd_images=200, epsilons=[8.0], scratch_epsilon=8.0, max_grad_norm=1.0,
             embedder="pixels:16")

#: the demo's network (configs/demo.yaml), with the minibatch-std-free D that DP needs, in every row
MODEL = dict(resolution=32, z_dim=64, w_dim=64, mapping_layers=2, mapping_lr_mul=0.01, channel_base=512,
             channel_max=128, torgb_init=0.1, dp_compatible=True, lr_g=0.005, lr_d=0.0025, r1_gamma=0.1,
             r1_interval=16, pl_weight=0.0, style_mixing_prob=0.0, ema_kimg=1.0, ema_rampup=0.05,
             augment_p=0.0, sample_every_n_batches=0)
SEED = 0


# ----------------------------------------------------------------------------------------- data


def build_data(cfg: dict) -> dict[str, Any]:
    """Member training images/labels, the audit set (heavy members vs non-members), the public images."""
    import torch

    from gmia_defend.data import AuditSet, SyntheticFaces

    people, heavy, refs = cfg["people"], cfg["heavy"], cfg["refs"]
    n_ids = people + cfg["nonmembers"] + cfg["population"]
    # identities 0..heavy-1: over-represented members; heavy..people-1: other members; then
    # non-members, then the calibration population. Heavy members hold `refs` extra held-out photos.
    counts = ([cfg["heavy_images"] + refs] * heavy + [cfg["light_images"]] * (people - heavy)
              + [refs] * (cfg["nonmembers"] + cfg["population"]))
    ds = SyntheticFaces(n_ids, counts, resolution=32, seed=SEED, identity_offset=0, nuisance="mild")
    targets = ds.targets
    starts = torch.cumsum(torch.tensor([0] + counts), 0)
    train_idx, ref_idx = [], []
    for i in range(people):
        idx = list(range(int(starts[i]), int(starts[i + 1])))
        if i < heavy:
            ref_idx.append(idx[:refs])
            idx = idx[refs:]
        train_idx += idx
    train_images = ds.load(train_idx)
    train_labels = targets[torch.tensor(train_idx)].long()

    def block(ids: range) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [j for i in ids for j in range(int(starts[i]), int(starts[i + 1]))]
        labels = torch.tensor([n for n, i in enumerate(ids) for _ in range(int(starts[i + 1] - starts[i]))])
        return ds.load(idx), labels

    member_images = ds.load([j for r in ref_idx for j in r])
    member_labels = torch.arange(heavy).repeat_interleave(refs)
    non_ids = range(people, people + cfg["nonmembers"])
    pop_ids = range(people + cfg["nonmembers"], n_ids)
    non_images, non_labels = block(non_ids)
    pop_images, pop_labels = block(pop_ids)
    names = ds.identities
    audit = AuditSet(member_images=member_images, member_labels=member_labels,
                     member_identities=[names[i] for i in range(heavy)],
                     nonmember_images=non_images, nonmember_labels=non_labels,
                     nonmember_identities=[names[i] for i in non_ids],
                     population_images=pop_images, population_labels=pop_labels,
                     population_identities=[names[i] for i in pop_ids],
                     train_counts={names[i]: cfg["heavy_images"] for i in range(heavy)})
    # public people: the next synthetic range, disjoint from every member, non-member and population id
    public = SyntheticFaces(cfg["public_people"], cfg["public_images"], resolution=32, seed=SEED,
                            identity_offset=n_ids, nuisance="mild")
    overlap = set(public.identities) & set(names)
    assert not overlap, f"public identities overlap the protected ones: {sorted(overlap)[:5]}"
    # the quality reference: fresh people of the same population, never trained on by any row (two
    # images each). Not the members' training images: 71 % of those show the 32 over-represented people,
    # so a Fréchet distance to them in an identity space rewards re-creating those people, i.e. leaking.
    reference = SyntheticFaces(cfg["real_fd_images"] // 2, 2, resolution=32, seed=SEED,
                               identity_offset=n_ids + cfg["public_people"], nuisance="mild")
    return {"train_images": train_images, "train_labels": train_labels, "audit": audit,
            "reference_images": reference.load(list(range(len(reference)))),
            "public_images": public.load(list(range(len(public)))), "public_labels": public.targets.long()}


def capped(labels, k: int):
    """Indices keeping the first k training images of every person (ELS's per-person cap)."""
    import torch

    seen: dict[int, int] = {}
    keep = []
    for i, p in enumerate(labels.tolist()):
        if seen.get(p, 0) < k:
            keep.append(i)
            seen[p] = seen.get(p, 0) + 1
    return torch.tensor(keep)


# ---------------------------------------------------------------------------------------- training


def train(images, labels, batches: int, batch: int, init: str | None, dp: dict | None, seed: int,
          lr_scale: float = 1.0, d_steps: int = 1) -> Any:
    """Fit a StyleGAN2 for ``batches`` D steps (a G step every ``d_steps``), learning rates times ``lr_scale``;
    returns the module."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from gmia_defend.mitigations import make_discriminator_private
    from gmia_defend.mitigations.identity_sampling import private_dataloader
    from gmia_defend.models import StyleGAN2

    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    pl.seed_everything(seed, verbose=False)
    model = StyleGAN2(**dict(MODEL, lr_g=MODEL["lr_g"] * lr_scale, lr_d=MODEL["lr_d"] * lr_scale),
                      rng_seed=seed, init_from=init, d_steps_per_g_step=d_steps)
    data = TensorDataset(images, labels)
    if dp is None:
        g = torch.Generator().manual_seed(seed)
        sampler = torch.utils.data.RandomSampler(data, replacement=True, num_samples=batches * batch, generator=g)
        loader = DataLoader(data, batch_size=batch, sampler=sampler, drop_last=True)
    else:
        pd = make_discriminator_private(model, targets=labels, batch_size=batch, seed=None, **dp)
        loader = private_dataloader(data, pd.batch_sampler())
    import tempfile
    import warnings

    # the module writes its sample grids into the run folder: a throwaway one, never the working directory
    with tempfile.TemporaryDirectory(prefix="gmia-dp-identity-") as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=batches + batches // d_steps, max_epochs=-1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_train_batches=batches if dp is None else None,
                             default_root_dir=root)
        trainer.fit(model, loader)
    model.G_ema.eval()
    return model


def audit(model, data: dict, cfg: dict, embedder) -> dict:
    """AUC [CI] on the heavy members vs non-members, and the Fréchet distance, of the final G_ema."""

    from gmia_defend.attack import IdentityMembershipAttack
    from gmia_defend.quality.frechet import GaussianStats, frechet_from_stats

    fake = GaussianStats(embedder.dim)
    attack = IdentityMembershipAttack(embedder, data["audit"], num_samples=cfg["samples"], batch_size=250,
                                      seed=0, progress=False, device="cpu")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an early generator's out-of-range values are clamped
        result = attack.run(model.G_ema, on_embeddings=lambda j, images, emb: fake.update(emb))
        m = result.metrics
    return {"auc": m["leakage/auc"], "auc_ci_low": m["leakage/auc_ci_low"], "auc_ci_high": m["leakage/auc_ci_high"],
            "fd": frechet_from_stats(data["real_stats"], fake), "fd_train": frechet_from_stats(data["train_stats"], fake)}


# -------------------------------------------------------------------------------------------- rows


_DATA: dict[str, Any] = {}


def _setup(cfg: dict) -> dict:
    """Data, embedder and real statistics, built once per process (deterministic)."""
    if "cfg" in _DATA and _DATA["cfg"] == cfg:
        return _DATA
    import torch

    from gmia_defend.embedders import load_embedder

    torch.set_num_threads(1)
    data = build_data(cfg)
    embedder = load_embedder(cfg.get("embedder", "synthetic"), device="cpu")
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(data["train_labels"]), generator=g)[:cfg["real_fd_images"]]
    data["train_stats"] = _stats(embedder, data["train_images"][pick])
    data["real_stats"] = _stats(embedder, data["reference_images"])
    _DATA.clear()
    _DATA.update(data, cfg=cfg, embedder=embedder)
    return _DATA


def _stats(embedder, images) -> Any:
    """Gaussian statistics of ``images`` in the embedder's space."""
    import torch

    from gmia_defend.quality.frechet import GaussianStats

    stats = GaussianStats(embedder.dim)
    with torch.no_grad():
        for i in range(0, len(images), 500):
            stats.update(embedder(images[i:i + 500]))
    return stats


def noise_for(cfg: dict, scheme: str, epsilon: float, labels) -> tuple[float, float]:
    """(noise multiplier, sample rate) that spend ``epsilon`` per person over the fine-tuning."""
    from gmia_defend.mitigations import user_level
    from gmia_defend.mitigations.identity_sampling import capped_images

    images = capped_images(labels, cfg["k"])
    batch, steps = cfg["batch"], cfg["finetune_batches"]
    sigma = user_level.noise_for_person_target(
        epsilon, scheme=scheme, people=cfg["people"], steps=steps,
        expected_batch=batch * (cfg["people"] / images if scheme == "uls" else 1.0), k=cfg["k"],
        images=images, accountant="prv")
    return sigma, batch / images


def _scheme_eps(name: str) -> tuple[str, float]:
    """``els_eps8`` / ``scratch_uls_eps8`` -> (scheme, epsilon)."""
    return name.removeprefix("scratch_").split("_", 1)[0], float(name.rsplit("eps", 1)[1])


def _noise_task(args: tuple[dict, str, float]) -> float:
    cfg, scheme, eps = args
    return noise_for(cfg, scheme, eps, _setup(cfg)["train_labels"])[0]


def run_row(name: str, cfg: dict, init: str | None, sigma: float | None = None) -> dict:
    """Train and audit one row (``sigma``: its noise multiplier, solved if None); returns its figures."""
    from gmia_defend.mitigations.user_level import person_guarantee

    d = _setup(cfg)
    images, labels = d["train_images"], d["train_labels"]
    start = time.perf_counter()
    if name == "pretrained_only":  # the public model itself: never saw a member, epsilon 0 for them
        from gmia_defend.models import StyleGAN2

        model = StyleGAN2(**MODEL, rng_seed=SEED, init_from=init)
        model.G_ema.eval()
        row = {"row": name, "pretrained": True, "scheme": "public only", "epsilon_person": 0.0, "steps": 0}
        row.update(audit(model, d, cfg, d["embedder"]))
        row["seconds"] = row["train_seconds"] = time.perf_counter() - start
        return row
    dp = None
    if name != "nonprivate":
        scheme, eps = _scheme_eps(name)
        if sigma is None:
            sigma, _ = noise_for(cfg, scheme, eps, labels)
        if scheme == "els":
            keep = capped(labels, cfg["k"])
            images, labels = images[keep], labels[keep]
            dp = {"unit": "image", "noise_multiplier": sigma}
        else:
            dp = {"unit": "identity", "noise_multiplier": sigma, "max_images_per_identity": cfg["k"]}
        dp.update(max_grad_norm=cfg["max_grad_norm"], accountant="prv")
    # every fine-tuning row, private or not, takes the same batches of the same size from the same weights
    model = train(images, labels, cfg["finetune_batches"], cfg["batch"], None if name.startswith("scratch") else init, dp,
                  seed=SEED + 1, lr_scale=cfg.get("finetune_lr_scale", 1.0),
                  d_steps=1 if dp is None else int(cfg.get("dp_d_steps", 1)))
    train_s = time.perf_counter() - start
    row: dict[str, Any] = {"row": name, "pretrained": not name.startswith("scratch")}
    if dp is not None:
        g = person_guarantee(model.private_d)
        row.update(scheme=g.scheme, epsilon_person=g.epsilon_person, delta_person=g.delta_person,
                   noise_multiplier=model.private_d.noise_multiplier, sample_rate=model.private_d.sample_rate,
                   k=cfg["k"], steps=model.private_d.steps, meaning=g.describe())
    else:
        row.update(scheme="none", epsilon_person=math.inf, steps=cfg["finetune_batches"])
    row.update(audit(model, d, cfg, d["embedder"]))
    row["seconds"] = time.perf_counter() - start
    row["train_seconds"] = train_s
    if cfg.get("log"):
        with open(cfg["log"], "a") as f:
            f.write(json.dumps({k: v for k, v in row.items() if k != "meaning"}, default=str) + "\n")
    return row


def pretrain(cfg: dict, out: Path) -> tuple[str, float]:
    """Non-private pretraining on the public people; saves a weights-only checkpoint."""
    import torch

    d = _setup(cfg)
    start = time.perf_counter()
    model = train(d["public_images"], d["public_labels"], cfg["pretrain_batches"], cfg["pretrain_batch"], None, None,
                  SEED)
    path = out / "pretrained.ckpt"
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": {k: v for k, v in model.state_dict().items()
                               if k.split(".", 1)[0] in ("G", "D", "G_ema")}}, tmp)
    os.replace(tmp, path)
    return str(path), time.perf_counter() - start


# ------------------------------------------------------------------------------------------ report


def figure(rows: list[dict], path: Path) -> None:
    """FD vs per-person epsilon, one line per scheme, marker colour = leakage AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    norm = matplotlib.colors.Normalize(vmin=0.4, vmax=1.0)
    for scheme, style in (("uls", "-o"), ("els", "--s")):
        pts = sorted((r["epsilon_person"], r["fd"], r["auc"]) for r in rows
                     if r["scheme"] == scheme and r["pretrained"])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color="grey", mfc="none",
                    label=f"{scheme.upper()} (pretrained)")
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], cmap="coolwarm",
                            norm=norm, marker=style[-1], s=60, zorder=3, edgecolors="k")
    for r in rows:
        if r["row"] == "nonprivate":
            ax.axhline(r["fd"], ls="--", color="k", lw=1, label=f"non-private (AUC {r['auc']:.2f})")
        if r["row"] == "pretrained_only":
            ax.axhline(r["fd"], ls=":", color="g", lw=1, label=f"public pretraining only (AUC {r['auc']:.2f})")
        if r["row"].startswith("scratch"):
            ax.scatter([r["epsilon_person"]], [r["fd"]], c=[r["auc"]], cmap="coolwarm", norm=norm,
                       marker="^" if r["scheme"] == "els" else "v", s=80, edgecolors="k", zorder=3,
                       label=f"{r['scheme'].upper()} from scratch")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="coolwarm"), ax=ax, label="leakage AUC")
    ax.set_xlabel("epsilon per person")
    ax.set_ylabel("Fréchet distance to fresh people (embedder space)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    lines = ["| row | scheme | epsilon per person | AUC [95% CI] | FD (population) | FD (training images) | noise | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "inf (no DP)" if not math.isfinite(r["epsilon_person"]) else f"{r['epsilon_person']:.2f}"
        noise = f"{r['noise_multiplier']:.3f}" if "noise_multiplier" in r else "-"
        lines.append(f"| {r['row']} | {r['scheme']} | {eps} | {r['auc']:.3f} [{r['auc_ci_low']:.3f}, "
                     f"{r['auc_ci_high']:.3f}] | {r['fd']:.3f} | {r['fd_train']:.3f} | {noise} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def summarise(rows: list[dict], cfg: dict, pretrain_s: float, wall: float, quick: bool) -> dict:
    by = {r["row"]: r for r in rows}
    nonprivate = by["nonprivate"]
    top = max(cfg["epsilons"])
    candidates = [by[f"{s}_eps{top:g}"] for s in ("uls", "els") if f"{s}_eps{top:g}" in by]
    best = min(candidates, key=lambda r: r["fd"])
    scratch = by.get(f"scratch_{best['scheme']}_eps{cfg['scratch_epsilon']:g}") or next(
        r for r in rows if r["row"].startswith("scratch"))

    def clean(r: dict) -> dict:
        keep = ("scheme", "epsilon_person", "auc", "auc_ci_low", "auc_ci_high", "fd", "fd_train", "seconds",
                "noise_multiplier", "sample_rate", "steps", "pretrained")
        return {k: (None if isinstance(r.get(k), float) and not math.isfinite(r[k]) else
                    (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k))) for k in keep if k in r}

    result = {
        "benchmark": "dp_identity", "quick": quick, "people": cfg["people"], "heavy_people": cfg["heavy"],
        "heavy_images": cfg["heavy_images"], "light_images": cfg["light_images"], "k": cfg["k"],
        "public_people": cfg["public_people"], "finetune_batches": cfg["finetune_batches"],
        "pretrain_batches": cfg["pretrain_batches"], "pretrain_batch": cfg["pretrain_batch"], "batch": cfg["batch"],
        "delta_person": 1 / (10 * cfg["people"]), "samples": cfg["samples"],
        "dp_d_steps_per_g_step": int(cfg.get("dp_d_steps", 1)),
        "auc_nonprivate": round(nonprivate["auc"], 4),
        "auc_nonprivate_ci": [round(nonprivate["auc_ci_low"], 4), round(nonprivate["auc_ci_high"], 4)],
        "fd_nonprivate": round(nonprivate["fd"], 4),
        "scheme_at_target": best["scheme"],
        "epsilon_person_at_target": round(best["epsilon_person"], 4),
        "auc_at_target": round(best["auc"], 4), "auc_ci_low_at_target": round(best["auc_ci_low"], 4),
        "auc_ci_high_at_target": round(best["auc_ci_high"], 4),
        "fd_ratio_at_target": round(best["fd"] / nonprivate["fd"], 4),
        "fd_train_ratio_at_target": round(best["fd_train"] / nonprivate["fd_train"], 4),
        "fd_pretrained_at_target": round(best["fd"], 4), "fd_scratch_at_target": round(scratch["fd"], 4),
        "scratch_scheme": scratch["scheme"],
        "target_interval_contains_half": bool(best["auc_ci_low"] <= 0.5 <= best["auc_ci_high"]),
        "target_fd_within_2x": bool(best["fd"] <= 2 * nonprivate["fd"]),
        "pretraining_beats_scratch": bool(best["fd"] < scratch["fd"]),
        "auc_pretrained_only": round(by["pretrained_only"]["auc"], 4) if "pretrained_only" in by else None,
        "fd_pretrained_only": round(by["pretrained_only"]["fd"], 4) if "pretrained_only" in by else None,
        "pretrain_seconds": round(pretrain_s, 1), "wall_seconds": round(wall, 1),
        "rows": {r["row"]: clean(r) for r in rows},
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", default="runs/dp_identity")
    parser.add_argument("--parallel", type=int, default=2, help="rows trained at a time (one thread each)")
    parser.add_argument("--batch", type=int, default=None, help="fine-tuning batch of every row (default 64)")
    parser.add_argument("--batches", type=int, default=None, help="fine-tuning batches of every row (default 400)")
    parser.add_argument("--d-steps", type=int, default=None,
                        help="DP rows: discriminator steps per generator step (default 16; the non-private row keeps 1)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(QUICK if args.quick else FULL, log=str(out / "rows.jsonl"))
    for key, flag, value in (("batch", "--batch", args.batch), ("finetune_batches", "--batches", args.batches),
                             ("dp_d_steps", "--d-steps", args.d_steps)):
        if value is not None:
            if value < 1:
                raise SystemExit(f"{flag} must be >= 1, got {value}")
            cfg[key] = value
    Path(cfg["log"]).unlink(missing_ok=True)
    start = time.perf_counter()
    init, pretrain_s = pretrain(cfg, out)
    print(f"pretrained on {cfg['public_people']} public people in {pretrain_s:.0f} s", file=sys.stderr, flush=True)
    names = ["nonprivate", "pretrained_only"] + [f"{s}_eps{e:g}" for e in sorted(cfg["epsilons"], reverse=True)
                                                 for s in ("els", "uls")]
    names += [f"scratch_{s}_eps{cfg['scratch_epsilon']:g}" for s in ("els", "uls")]
    rows: list[dict] = []
    if args.parallel > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=args.parallel, mp_context=mp.get_context("fork")) as pool:
            private = [n for n in names if n not in ("nonprivate", "pretrained_only")]
            wanted = sorted({_scheme_eps(n) for n in private})
            solved = dict(zip(wanted, pool.map(_noise_task, [(cfg, s, e) for s, e in wanted])))
            futures = [pool.submit(run_row, n, cfg, init, solved[_scheme_eps(n)] if n in private else None)
                       for n in names]
            for f in futures:
                rows.append(f.result())
                print(f"  {rows[-1]['row']}: auc {rows[-1]['auc']:.3f} fd {rows[-1]['fd']:.3f} "
                      f"({rows[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    else:
        for n in names:
            rows.append(run_row(n, cfg, init))
    wall = time.perf_counter() - start
    figure(rows, out / "frontier.png")
    result = summarise(rows, cfg, pretrain_s, wall, args.quick)
    print(table(rows))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
