"""Privacy / quality trade-offs on the embedded synthetic faces (CPU-sized sweeps); prints one JSON line.

Four StyleGAN2 fits of ``configs/demo.yaml`` (all with ``model.dp_compatible=true``, so the D is the
same minibatch-std-free network in every run and the comparisons are fair), each audited during
training by an ``IdentityLeakageMonitor`` (``synthetic`` embedder, the same fixed latents at every
audit, top-k-mean score) that also logs the Fréchet distance in the embedder's space on the same
samples (``quality/fd_<embedder>``: Inception weights cannot be downloaded here):

  few        32 member identities x 300 images (member_image_budget 9600): the demo data. It is also
             the no-DP baseline, and the source of the last vs early-stopped comparison.
  many       320 member identities x 30 images (the same 9600-image budget).
  dp_image   few + DP-SGD on D, unit "image", noise_multiplier 1.0, max_grad_norm 1.0.
  dp_identity few + DP-SGD on D, unit "identity" (max_images_per_identity 4: the identity-level
             accountant needs a per-person cap, so this run trains on 4 images per member).

Figures:
  auc_few_ids / auc_many_ids   the final audit (last G_ema) of "few" / "many".
  auc_last / auc_early_stopped the final audit of "few" vs the audit at which LeakageEarlyStopping
                               (metric leakage/auc, budget 0.75, patience 1, min_kimg 0.5) would have
                               stopped: its rule is applied to the recorded audits (the run itself is
                               not stopped, so one run gives both figures).
  auc_no_dp / auc_dp_*         final audit of each DP run vs the "few" audit at the SAME kimg (DP runs
                               may be shorter; ``steps`` says how long each ran). fid_* likewise.
  epsilon_*                    epsilon reached (PrivacyBudgetMonitor, default delta).
  auc_pixel_knn                last G_ema of "few" attacked with PixelEmbedder(32), score max_sim,
                               reference_reduction max (GAN-Leaks-style pixel nearest neighbour).

    python benchmarks/tradeoffs.py [--quick] [--out DIR] [--parallel 2]

Default: measured 828 s (~14 min) on 2 busy cores (2 single-threaded fits at a time). ``--quick``: tiny fits, < 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
BUDGET = 9600
STOP_RULE = {"metric": "leakage/auc", "budget": 0.75, "patience": 1, "min_kimg": 0.5, "halves": False}
DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}


def plan(quick: bool) -> dict:
    """Run name -> settings. max_steps counts both optimizers (2 per batch of 16 = 0.032 kimg)."""
    if quick:
        few, many, dp, every, samples = 40, 40, 20, 0.16, 300
    else:
        few, many, dp, every, samples = 5000, 5000, 3000, 4.0, 3000
    return {
        "every_n_kimg": every, "num_samples": samples,
        "runs": {
            "few": {"members": 32, "steps": few},
            "many": {"members": 320, "steps": many},
            "dp_image": {"members": 32, "steps": dp, "dp": {"unit": "image", **DP}},
            "dp_identity": {"members": 32, "steps": dp,
                            "dp": {"unit": "identity", **DP, "max_images_per_identity": 4}},
        },
    }


def callbacks_yaml(every: float, samples: int, dp: dict | None) -> str:
    """The trainer.callbacks list of one run (replaces demo.yaml's)."""
    text = ("trainer:\n  callbacks:\n"
            "    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
            "      init_args: {save_last: true, save_top_k: 0}\n"
            "    - class_path: gmia_defend.callbacks.IdentityLeakageMonitor\n"
            f"      init_args: {{embedder: synthetic, every_n_kimg: {every}, num_samples: {samples},\n"
            "                  batch_size: 250, progress: false, audit_at_start: true}\n")
    if dp is not None:
        text += ("    - class_path: gmia_defend.callbacks.PrivacyBudgetMonitor\n"
                 f"      init_args: {{make_private: {json.dumps(dp)}}}\n")
    return text


def fit(name: str, spec: dict, out: Path, every: float, samples: int) -> dict:
    """One ``gmia-defend fit`` in a subprocess (one torch thread); returns its audits and privacy."""
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "audits.jsonl").unlink(missing_ok=True)
    cb = out / f"{name}.callbacks.yaml"
    cb.write_text(callbacks_yaml(every, samples, spec.get("dp")))
    cmd = [sys.executable, "-m", "gmia_defend.cli", "fit", "--config", str(DEMO), "--config", str(cb),
           f"--trainer.default_root_dir={run_dir}", f"--trainer.max_steps={spec['steps']}",
           "--trainer.enable_progress_bar=false", "--model.dp_compatible=true", "--model.sample_every_n_batches=0",
           "--data.member_images=null", f"--data.member_image_budget={BUDGET}",
           f"--data.num_members={spec['members']}"]
    if spec.get("dp", {}).get("max_images_per_identity"):
        # the identity accountant's per-person cap must also cap the training data
        cmd.append(f"--data.max_images_per_identity={spec['dp']['max_images_per_identity']}")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    start = time.perf_counter()
    with open(run_dir / "fit.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    seconds = time.perf_counter() - start
    if rc != 0:
        tail = (run_dir / "fit.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"fit {name} failed (rc {rc}):\n" + "\n".join(tail))
    audits = [json.loads(line) for line in (run_dir / "audits.jsonl").read_text().splitlines() if line.strip()]
    audits = [a for a in audits if a.get("metrics")]
    privacy = None
    if (run_dir / "privacy.json").is_file():
        privacy = json.loads((run_dir / "privacy.json").read_text())
    return {"name": name, "dir": str(run_dir), "seconds": round(seconds, 1), "audits": audits, "privacy": privacy}


def quality_key(audit: dict) -> str:
    return next(k for k in audit["metrics"] if k.startswith("quality/"))


def early_stop_audit(audits: list[dict]) -> dict | None:
    """The audit at which LeakageEarlyStopping(**STOP_RULE) would stop: the policy it calls, on the recorded audits."""
    from gmia_defend.audit import stop_decision

    for i, audit in enumerate(audits):
        if stop_decision(audits[:i + 1], STOP_RULE)["stop"]:
            return audit
    return None


def at_kimg(audits: list[dict], kimg: float) -> dict:
    """The audit nearest ``kimg``."""
    return min(audits, key=lambda a: abs(a["kimg"] - kimg))


def summary(audit: dict) -> dict:
    m = audit["metrics"]
    return {"auc": round(m["leakage/auc"], 4),
            "ci": [round(m["leakage/auc_ci_low"], 4), round(m["leakage/auc_ci_high"], 4)],
            "fd": round(m[quality_key(audit)], 4), "kimg": audit["kimg"]}


def pixel_attack(run_dir: Path, samples: int) -> dict:
    """GAN-Leaks-style pixel nearest neighbour on the run's last G_ema, same split as its audits."""
    import torch
    import yaml

    from gmia_defend.attack import IdentityMembershipAttack
    from gmia_defend.attack.generators import load_generator
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.embedders.pixels import PixelEmbedder

    torch.set_num_threads(1)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = IdentityDataModule(**config["data"])
    generator = load_generator(str(run_dir / "checkpoints" / "last.ckpt"), device="cpu")
    attack = IdentityMembershipAttack(PixelEmbedder(32), data.audit_set, num_samples=samples, batch_size=250,
                                      seed=0, score="max_sim", reference_reduction="max", progress=False,
                                      device="cpu")
    m = attack.run(generator).metrics
    return {"auc": round(m["leakage/auc"], 4),
            "ci": [round(m["leakage/auc_ci_low"], 4), round(m["leakage/auc_ci_high"], 4)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny fits (smoke test, < 60 s)")
    parser.add_argument("--out", default="runs/tradeoffs", help="folder for the four run folders")
    parser.add_argument("--parallel", type=int, default=2, help="fits at a time (each single-threaded)")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    p = plan(args.quick)
    every, samples = p["every_n_kimg"], p["num_samples"]
    # longest first so the two lanes end together: few+dp_identity | many+dp_image
    order = ["few", "many", "dp_identity", "dp_image"]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {n: pool.submit(fit, n, p["runs"][n], out, every, samples) for n in order}
        runs = {n: f.result() for n, f in futures.items()}
    pixel = pixel_attack(Path(runs["few"]["dir"]), samples)

    few, many = runs["few"]["audits"], runs["many"]["audits"]
    last_few, last_many = summary(few[-1]), summary(many[-1])
    stop = early_stop_audit(few)
    stopped = summary(stop) if stop is not None else None
    result: dict = {
        "benchmark": "tradeoffs", "quick": args.quick, "embedder": "synthetic", "score": "topk_mean",
        "num_samples": samples, "audit_every_n_kimg": every,
        "quality_key": quality_key(few[-1]),
        "auc_few_ids": last_few["auc"], "auc_few_ids_ci": last_few["ci"],
        "auc_many_ids": last_many["auc"], "auc_many_ids_ci": last_many["ci"],
        "fid_few_ids": last_few["fd"], "fid_many_ids": last_many["fd"],
        "kimg_few_ids": last_few["kimg"], "kimg_many_ids": last_many["kimg"],
        "num_members_few": p["runs"]["few"]["members"], "num_members_many": p["runs"]["many"]["members"],
        "num_nonmembers": 128, "member_image_budget": BUDGET,
        "auc_last": last_few["auc"], "auc_last_ci": last_few["ci"], "kimg_last": last_few["kimg"],
        "early_stopping_rule": {**STOP_RULE, "how": "gmia_defend.audit.stop_decision (LeakageEarlyStopping's policy) "
                                                   "applied to the recorded audits"},
        "auc_early_stopped": stopped["auc"] if stopped else last_few["auc"],
        "auc_early_stopped_ci": stopped["ci"] if stopped else last_few["ci"],
        "kimg_early_stopped": stopped["kimg"] if stopped else None,
        "fid_early_stopped": stopped["fd"] if stopped else None, "fid_last": last_few["fd"],
        "no_dp_run": "few (dp_compatible=true), its audit at the DP runs' final kimg",
        "dp": DP,
    }
    for name in ("dp_image", "dp_identity"):
        audits = runs[name]["audits"]
        last = summary(audits[-1])
        base = summary(at_kimg(few, last["kimg"]))
        priv = runs[name]["privacy"] or {}
        result[f"auc_{name}"], result[f"auc_{name}_ci"] = last["auc"], last["ci"]
        result[f"fid_{name}"] = last["fd"]
        result[f"epsilon_{name.split('_')[1]}"] = priv.get("epsilon")
        result[f"delta_{name.split('_')[1]}"] = priv.get("delta")
        result[f"kimg_{name}"] = last["kimg"]
        result["auc_no_dp"], result["auc_no_dp_ci"] = base["auc"], base["ci"]
        result["fid_no_dp"], result["kimg_no_dp"] = base["fd"], base["kimg"]
    result["auc_pixel_knn"], result["auc_pixel_knn_ci"] = pixel["auc"], pixel["ci"]
    result["pixel_knn"] = "PixelEmbedder(32), score max_sim, reference_reduction max, last G_ema of few"
    result["curve_few"] = [[a["kimg"], round(a["metrics"]["leakage/auc"], 3)] for a in few]
    result["curve_many"] = [[a["kimg"], round(a["metrics"]["leakage/auc"], 3)] for a in many]
    result["steps"] = {n: p["runs"][n]["steps"] for n in order}
    result["steps_note"] = "trainer.max_steps (2 per batch of 16): few and many full demo length (40 kimg); DP runs shortened to 24 kimg (a DP fit costs ~1.7x per kimg here) and compared with the no-DP audit at the same kimg"
    result["run_seconds"] = {n: runs[n]["seconds"] for n in order}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
