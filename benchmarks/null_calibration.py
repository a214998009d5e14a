"""Is a leakage reading calibrated? Null audits, a memoriser, and the sensitivity of the default score.

Prints one JSON line. On the embedded default (SyntheticFaces 32x32, mild nuisance, the "synthetic"
embedder), for each of ``--splits`` split seeds (32 members, 128 non-members, 64 population
identities, 5 references each, as in the demo) the attack (``--num-samples`` latents, the attack's
default score) audits two generators that learned nobody of the split:

- ``untrained``: the demo's StyleGAN2 generator (same architecture as ``configs/demo.yaml``),
  untrained, initialised from its own seed: the demo's 0 kimg checkpoint, the honest null;
- ``fresh``: the same face renderer drawing identities outside the split (offset 2,000,000 + ...),
  i.e. a perfect generator of *other* people.

Figures over those ``null_audits`` (= 2 x splits):
  ``null_auc_mean`` (target [0.48, 0.52]), ``null_auc_sd`` (the Mann-Whitney spread for 32 vs 128 is
  0.057), ``null_ci_coverage`` (share of 95 % intervals containing 0.5; target >= 0.90),
  ``null_pvalue_type1`` (share of p < 0.05; target <= 0.10), ``null_band_width`` (mean width of the
  2.5-97.5 % permutation band), ``null_epsilon_lb_max`` (largest epsilon lower bound among nulls).
``memoriser_auc_min``: a generator returning member training images, on ``--memoriser-splits`` splits
(target >= 0.95). ``sensitivity_ratio`` = (default score's AUC - 0.5) / (top-k AUC - 0.5) on the last
checkpoint of a demo run (``--checkpoint``, ``--split``; skipped when not given): 1.0 while top-k is the
default; ``relative_*`` give the same figures for the population-relative score (computed from the
same runs' identity tables, identity-level interval) so its promotion to default can be judged.

Runtime (one torch thread, defaults): 21 min wall on 2 CPU cores shared with five other jobs (load
~10); ``--splits 50 --untrained conv`` (a small untrained conv net as the untrained null, about half
the generation cost) took 20 min there. ``--quick`` is a smoke run. Usage::

    python benchmarks/null_calibration.py --checkpoint runs/demo/checkpoints/last.ckpt \\
        --split runs/demo/split.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

FRESH_OFFSET = 2_000_000


class FreshIdentities(nn.Module):
    """Renders faces of identities outside any split (a perfect generator of other people)."""

    z_dim = 16

    def __init__(self, offset: int, identities: int = 5000, resolution: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.offset, self.identities, self.resolution, self.seed = offset, identities, resolution, seed

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        from gmia_defend.data.synthetic import render_faces

        ident = (z[:, 0].abs() * 1e6).long() % self.identities + self.offset
        image = (z[:, 1].abs() * 1e6).long() % 1000
        return render_faces(ident, image, self.resolution, self.seed, "mild").to(z.device)


class Memoriser(nn.Module):
    """Returns member training images, picked by the latent."""

    z_dim = 16

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[(z[:, 0].abs() * 1e6).long() % self.images.shape[0]]


def demo_model_kwargs() -> dict[str, Any]:
    """The demo config's model section (the untrained null uses the demo's own architecture)."""
    import yaml

    from gmia_defend.config_files import resolve_config

    cfg = yaml.safe_load(resolve_config("demo").read_text())
    return dict(cfg.get("model") or {}), int((cfg.get("data") or {}).get("resolution", 32))


class SmallConvGenerator(nn.Module):
    """The smallest honest null: a randomly initialised DCGAN-style generator (tanh output), seeded."""

    z_dim = 32

    def __init__(self, resolution: int = 32, seed: int = 0, width: int = 16) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc = nn.Linear(self.z_dim, width * 4 * 4)
            layers: list[nn.Module] = []
            size = 4
            while size < resolution:
                layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
                size *= 2
            self.net = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())
        self.width = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.width, 4, 4))


def untrained_generator(seed: int, kind: str = "stylegan2", resolution: int = 32) -> nn.Module:
    if kind == "conv":
        return SmallConvGenerator(resolution, seed).eval()
    from gmia_defend.models import StyleGAN2

    kwargs, resolution = demo_model_kwargs()
    accepted = set(inspect.signature(StyleGAN2.__init__).parameters)
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = StyleGAN2(resolution=resolution, **kwargs) if "resolution" in accepted else StyleGAN2(**kwargs)
    return model.G_ema.eval()


def _alt_metrics(rows: list[dict], score: str, seed: int, n_bootstrap: int, n_permutations: int) -> dict | None:
    from gmia_defend.attack.metrics import membership_metrics

    if not rows or score not in rows[0]:
        return None
    return membership_metrics([r[score] for r in rows], [r["member"] for r in rows], n_bootstrap=n_bootstrap,
                              n_permutations=n_permutations, seed=seed)


def _summary(ms: list[dict]) -> dict[str, float]:
    auc = np.array([m["leakage/auc"] for m in ms])
    cover = np.mean([m["leakage/auc_ci_low"] <= 0.5 <= m["leakage/auc_ci_high"] for m in ms])
    return {
        "auc_mean": float(auc.mean()), "auc_sd": float(auc.std(ddof=1)) if auc.size > 1 else math.nan,
        "ci_coverage": float(cover),
        "pvalue_type1": float(np.mean([m["leakage/p_value"] < 0.05 for m in ms])),
        "band_width": float(np.mean([m["leakage/null_auc_high"] - m["leakage/null_auc_low"] for m in ms])),
        "epsilon_lb_max": float(max(m["leakage/epsilon_lower_bound"] for m in ms)),
    }


def run(embedder: Any = "synthetic", splits: int = 25, num_samples: int = 2000, members: int = 32,
        nonmembers: int = 128, population: int = 64, refs: int = 5, memoriser_splits: int = 5,
        n_bootstrap: int = 1000, n_permutations: int = 2000, checkpoint: str | None = None,
        split_path: str | None = None, alt_score: str = "relative", batch_size: int = 500,
        demo_samples: int = 5000, untrained: str = "stylegan2") -> dict[str, Any]:
    """Run the benchmark and return its figures (see module doc)."""
    from gmia_defend.attack import IdentityMembershipAttack
    from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces
    from gmia_defend.embedders import load_embedder

    t0 = time.perf_counter()
    emb = load_embedder(embedder) if isinstance(embedder, str) else embedder
    resolution = int(getattr(emb, "input_size", 32) or 32)
    default_score = inspect.signature(IdentityMembershipAttack.__init__).parameters["score"].default
    pool = 2 * (members + nonmembers + population)
    ds = SyntheticFaces(num_identities=pool, images_per_identity=refs + 5, resolution=resolution, seed=0)
    null, alt_null, mem_aucs, per_kind = [], [], [], {"untrained": [], "fresh": []}
    warnings.filterwarnings("ignore", message=".*beyond input_range.*")  # untrained G exceeds [-1, 1]: clamped, as in the demo
    for s in range(splits):
        split = IdentitySplit.create(ds, members, nonmembers, references_per_identity=refs,
                                     num_population_identities=population, seed=s)
        audit = AuditSet.from_split(ds, split)
        attack = IdentityMembershipAttack(emb, audit, num_samples=num_samples, batch_size=batch_size, seed=s,
                                          progress=False, n_bootstrap=n_bootstrap, n_permutations=n_permutations,
                                          evidence_identities=0)
        gens = {"untrained": untrained_generator(10_000 + s, untrained, resolution),
                "fresh": FreshIdentities(FRESH_OFFSET + 10_000 * s, resolution=resolution)}
        for kind, gen in gens.items():
            res = attack.run(gen)
            null.append(res.metrics)
            per_kind[kind].append(res.metrics["leakage/auc"])
            alt = _alt_metrics(res.identities, alt_score, s, n_bootstrap, n_permutations)
            if alt is not None:
                alt_null.append(alt)
        if s < memoriser_splits:
            train = ds.load(split.train_indices(ds))
            mem_aucs.append(attack.run(Memoriser(train)).metrics["leakage/auc"])
    out: dict[str, Any] = {"benchmark": "null_calibration", "default_score": default_score,
                           "splits": splits, "num_samples": num_samples, "members": members,
                           "nonmembers": nonmembers, "null_audits": len(null)}
    out.update({f"null_{k}": v for k, v in _summary(null).items()})
    per_split = (np.array(per_kind["untrained"]) + np.array(per_kind["fresh"])) / 2.0  # splits are independent
    out["null_auc_se"] = float(per_split.std(ddof=1) / math.sqrt(len(per_split))) if len(per_split) > 1 else math.nan
    out["untrained_generator"] = untrained
    for kind, values in per_kind.items():
        out[f"null_auc_mean_{kind}"] = float(np.mean(values))
        out[f"null_auc_sd_{kind}"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    out["mann_whitney_sd"] = math.sqrt((members + nonmembers + 1) / (12.0 * members * nonmembers))
    out["memoriser_auc_min"] = float(min(mem_aucs)) if mem_aucs else math.nan
    out["memoriser_audits"] = len(mem_aucs)
    if alt_null:
        out.update({f"{alt_score}_null_{k}": v for k, v in _summary(alt_null).items()})
    if checkpoint and split_path:
        out.update(sensitivity(emb, checkpoint, split_path, default_score, alt_score, demo_samples, batch_size))
    out["runtime_s"] = round(time.perf_counter() - t0, 1)
    return out


def sensitivity(emb: Any, checkpoint: str, split_path: str, default_score: str, alt_score: str,
                num_samples: int, batch_size: int) -> dict[str, float]:
    """AUC of top-k, the default and the alternative score on one trained checkpoint (one attack pass)."""
    from gmia_defend.attack import IdentityMembershipAttack
    from gmia_defend.attack.metrics import roc_auc
    from gmia_defend.data import AuditSet, IdentitySplit
    from gmia_defend.models import StyleGAN2

    split = IdentitySplit.load(split_path)
    ds = split.open_dataset()
    audit = AuditSet.from_split(ds, split)
    model = StyleGAN2.load_from_checkpoint(checkpoint, map_location="cpu")
    attack = IdentityMembershipAttack(emb, audit, num_samples=num_samples, batch_size=batch_size, seed=0,
                                      progress=False, n_bootstrap=200, n_permutations=200, evidence_identities=0)
    rows = attack.run(model.G_ema.eval()).identities
    member = [r["member"] for r in rows]
    auc = {name: roc_auc([r[name] for r in rows], member) for name in {"topk_mean", default_score, alt_score}
           if name in rows[0]}
    out = {"demo_auc_topk": auc["topk_mean"], "demo_auc_default": auc[default_score],
           "sensitivity_ratio": (auc[default_score] - 0.5) / (auc["topk_mean"] - 0.5)}
    if alt_score in auc:
        out[f"demo_auc_{alt_score}"] = auc[alt_score]
        out[f"{alt_score}_sensitivity_ratio"] = (auc[alt_score] - 0.5) / (auc["topk_mean"] - 0.5)
    # The demo's own split under nulls: where do untrained generators land on *these* identities?
    null_attack = IdentityMembershipAttack(emb, audit, num_samples=2000, batch_size=batch_size, seed=0,
                                           progress=False, n_bootstrap=200, evidence_identities=0)
    nulls = [null_attack.run(untrained_generator(20_000 + k)).metrics for k in range(3)]
    out["demo_split_untrained_aucs"] = [round(m["leakage/auc"], 4) for m in nulls]
    out["demo_split_untrained_p_values"] = [round(m["leakage/p_value"], 4) for m in nulls]
    out["demo_split_null_band"] = [round(nulls[0]["leakage/null_auc_low"], 4), round(nulls[0]["leakage/null_auc_high"], 4)]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--splits", type=int, default=25)
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--memoriser-splits", type=int, default=5)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--n-permutations", type=int, default=2000)
    p.add_argument("--checkpoint", help="last checkpoint of a demo run (for sensitivity_ratio)")
    p.add_argument("--split", help="that run's split.json")
    p.add_argument("--embedder", default="synthetic")
    p.add_argument("--untrained", choices=("stylegan2", "conv"), default="stylegan2",
                   help="the untrained null: the demo's StyleGAN2 or a small conv net (2x cheaper audits)")
    p.add_argument("--quick", action="store_true", help="3 splits, 500 samples: a smoke run")
    p.add_argument("--sensitivity-only", action="store_true", help="only the demo checkpoint figures")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.splits, a.num_samples, a.memoriser_splits, a.n_bootstrap, a.n_permutations = 3, 500, 1, 200, 200
    if a.sensitivity_only:
        from gmia_defend.attack import IdentityMembershipAttack
        from gmia_defend.embedders import load_embedder

        default = inspect.signature(IdentityMembershipAttack.__init__).parameters["score"].default
        print(json.dumps(sensitivity(load_embedder(a.embedder), a.checkpoint, a.split, default, "relative", 5000, 500)))
        return
    out = run(a.embedder, a.splits, a.num_samples, memoriser_splits=a.memoriser_splits, n_bootstrap=a.n_bootstrap,
              n_permutations=a.n_permutations, checkpoint=a.checkpoint, split_path=a.split, untrained=a.untrained)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
