"""``gmia-defend watch RUN_DIR``: audit each generator snapshot a training run writes, whatever loop wrote it.

Follows NVIDIA stylegan2-ada-pytorch / stylegan3 runs (``network-snapshot-*.pkl``, with
``--trust-pickle``), Lightning runs (``*.ckpt``), TorchScript files (``--pattern``) or anything a
``--generator-factory module:function`` can load from a snapshot path. Appends to
``RUN_DIR/audits.jsonl``, keeps ``RUN_DIR/release.json`` and ``RUN_DIR/report/`` current, takes the FID
the loop logged (``metric-fid50k_full.jsonl`` or ``--quality-log``) as the quality metric and
computes the Fréchet distance in the embedder's space otherwise. Stops when the run writes nothing
for ``--idle-timeout`` seconds, on Ctrl-C, or (``--once``) when everything there is audited.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gmia_defend.errors import UserError



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the training run's output folder (where it writes snapshots)")
    parser.add_argument("--audit", required=True, help="split.json written by IdentitySplit.save")
    parser.add_argument("--embedder", action="append", default=None,
                        help="embedder spec ('synthetic', a trained embedder .pt, 'facenet:PATH', 'dlib[:PATH]'); "
                             "repeat for several (worst case). Default: synthetic")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load pickled snapshots (NVIDIA .pkl); pickles run code: only for runs you trust")
    parser.add_argument("--class-index", default=None,
                        help="conditional generators (c_dim > 0): the class to audit, or 'all' for every class "
                             "(release figures: the worst class)")
    parser.add_argument("--generator-factory", default=None, metavar="MODULE:FUNCTION",
                        help="a function called with each snapshot's path that returns the generator")
    parser.add_argument("--pattern", action="append", default=None, metavar="GLOB",
                        help="snapshot file names below RUN_DIR (repeatable; default: 'network-snapshot-*.pkl' "
                             "and '**/*.ckpt')")
    parser.add_argument("--once", action="store_true", help="audit what is there now, then exit")
    parser.add_argument("--idle-timeout", type=float, default=1800.0,
                        help="stop after the run wrote nothing for this many seconds (default 1800)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the folder (default 5)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="a snapshot is complete once unchanged for this many seconds (default 2)")
    parser.add_argument("--quality-log", default=None, metavar="FILE",
                        help="a CSV or JSONL file the loop writes with a quality column (default: NVIDIA's "
                             "metric-fid*.jsonl in RUN_DIR when present)")
    parser.add_argument("--quality-column", default=None,
                        help="the column (or NVIDIA metric name) holding the quality figure")
    parser.add_argument("--quality-wait", type=float, default=600.0,
                        help="seconds to wait for the loop's own FID of a snapshot before auditing without it")
    parser.add_argument("--no-quality", action="store_true", help="do not compute a Fréchet distance")
    parser.add_argument("--num-samples", type=int, default=10_000, help="generated samples per audit")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed latents and the bootstrap")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--score", default="topk_mean", help="per-identity membership score (as in gmia-defend attack)")
    parser.add_argument("--z-dim", type=int, default=None, help="latent size if the generator has no z_dim")
    parser.add_argument("--input-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"),
                        help="range of the generator's output pixels (default -1 1)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the AUC CI")
    parser.add_argument("--budget", type=float, default=None, help="largest acceptable leakage (release rule)")
    parser.add_argument("--metric", default=None, help="leakage metric of the release rule (default leakage/auc; "
                        "public/leakage/auc reads the public canaries split.json lists, audited automatically)")
    parser.add_argument("--wandb-project", default=None, help="also log each audit to this W&B project")
    parser.add_argument("--no-figures", action="store_true", help="do not redraw the report figures")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _class_index(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    try:
        k = int(value)
    except ValueError:
        raise UserError(f"--class-index must be an integer or 'all'; got {value!r}") from None
    if k < 0:
        raise UserError(f"--class-index must be >= 0; got {k}")
    return k


def _open_split(path: str, num_samples: int, seed: int):
    """split.json -> (AuditSet, a function returning real training images for the Fréchet distance,
    the public canaries' AuditSet or None)."""
    from gmia_defend.data import AuditSet, IdentitySplit, open_dataset

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"audit split {path!r} does not exist; create one with IdentitySplit.create(...).save(path)")
    split = IdentitySplit.load(p)
    dataset = open_dataset(split.dataset)

    def real_images():
        import numpy as np

        indices = list(split.train_indices(dataset))
        order = np.random.default_rng(seed).permutation(len(indices))[:num_samples]
        return dataset.load([indices[i] for i in sorted(order)])

    public = AuditSet.public_from_split(split, None if split.public_dataset else dataset)
    return AuditSet.from_split(dataset, split), real_images, public


def _check(args: argparse.Namespace) -> None:
    if args.num_samples < 2 or args.batch_size < 1:
        raise UserError("--num-samples must be >= 2 and --batch-size >= 1")
    for name in ("idle_timeout", "poll", "settle", "quality_wait"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if args.quality_column and not args.quality_log and not any(Path(args.run_dir).expanduser().glob("metric-*.jsonl")):
        raise UserError("--quality-column needs --quality-log FILE (or NVIDIA metric-*.jsonl files in RUN_DIR)")


def run(args: argparse.Namespace) -> int:
    import torch

    from gmia_defend.attack.generator_loading import import_function
    from gmia_defend.audit import AuditLog, Auditor
    from gmia_defend.audit.policies import ReleaseRule
    from gmia_defend.audit.record import is_public
    from gmia_defend.watch.logged_quality import LoggedQuality
    from gmia_defend.watch.runner import WatchOptions, Watcher
    from gmia_defend.watch.snapshots import DEFAULT_PATTERNS

    _check(args)
    run_dir = Path(args.run_dir).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}; pass the folder the training loop writes snapshots into")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} asked for CUDA but none is available; use --device cpu")
    factory = import_function(args.generator_factory) if args.generator_factory else None
    audit, real_images, public_audit = _open_split(args.audit, args.num_samples, args.seed)
    rule_options = {k: v for k, v in (("budget", args.budget), ("metric", args.metric)) if v is not None}
    rule = ReleaseRule(**rule_options)
    if is_public(rule.metric) and public_audit is None:
        raise UserError(f"--metric {rule.metric} reads the public canaries, but {args.audit} lists none; train with "
                        "data.public_canaries=N (the split then records them) or choose a leakage/... metric")
    attack_options = {"score": args.score, "input_range": tuple(args.input_range), "device": device,
                      "n_bootstrap": args.n_bootstrap}
    if args.z_dim is not None:
        attack_options["z_dim"] = args.z_dim
    auditor = Auditor(args.embedder or ["synthetic"], audit, num_samples=args.num_samples,
                      batch_size=args.batch_size, seed=args.seed, quality=not args.no_quality,
                      real_images=real_images, progress=not args.no_progress, attack_options=attack_options,
                      public_audit=public_audit)
    options = WatchOptions(patterns=tuple(args.pattern or DEFAULT_PATTERNS), trust_pickle=args.trust_pickle,
                           class_index=_class_index(args.class_index), generator_factory=factory, device=device,
                           settle_s=args.settle, poll_s=args.poll, idle_timeout_s=args.idle_timeout,
                           quality_wait_s=args.quality_wait, once=args.once, figures=not args.no_figures, rule=rule)
    quality = None if args.no_quality and not (args.quality_log or args.quality_column) else \
        LoggedQuality(run_dir, args.quality_log, args.quality_column)
    wandb_sink = None
    if args.wandb_project:
        from gmia_defend.watch.outputs import WandbSink

        wandb_sink = WandbSink(args.wandb_project, run_dir)
    watcher = Watcher(run_dir, auditor, options, log=AuditLog(run_dir), quality=quality, wandb=wandb_sink)
    return watcher.run()
