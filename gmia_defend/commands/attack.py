"""``gmia-defend attack``: run the identity membership attack on one generator and write the evidence.

Writes ``attack.json`` (metrics, per-identity table, evidence sample indices) and ``evidence.png``
(most leaked member identities beside their nearest generated faces) into ``--out`` (default: a
folder ``attack_<checkpoint name>`` beside a checkpoint, else ``./attack_out``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gmia_defend.errors import UserError

# = gmia_defend.attack.scores.SCORE_NAMES (not imported: `gmia-defend --help` must not import torch)
_SCORES = ("topk_mean", "max_sim", "match_rate", "calibrated", "mean_sim", "relative")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True,
                        help="a release file (release.ckpt), a StyleGAN2 Lightning checkpoint (.ckpt), an NVIDIA "
                             "network-snapshot-*.pkl (with --trust-pickle), a TorchScript file, or 'module:function' "
                             "(called with no arguments, returns a callable z -> images)")
    parser.add_argument("--audit", required=True, help="split.json written by IdentitySplit.save")
    parser.add_argument("--embedder", action="append", default=None,
                        help="embedder spec: 'synthetic', a trained embedder .pt, 'facenet[:path]', "
                             "'dlib[:path]'; repeat for several (worst case reported). Default: synthetic")
    parser.add_argument("--num-samples", type=int, default=10_000, help="generated samples (fixed latents)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed latents and the bootstrap")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--out", default=None, help="output folder (default: beside the checkpoint)")
    parser.add_argument("--score", default="topk_mean", choices=_SCORES, help="per-identity membership score")
    parser.add_argument("--top-k", type=int, default=10, help="k of the top-k mean similarity score")
    parser.add_argument("--z-dim", type=int, default=None, help="latent size if the generator has no z_dim")
    parser.add_argument("--input-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"),
                        help="range of the generator's output pixels (default -1 1)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the AUC CI")
    parser.add_argument("--evidence-identities", type=int, default=8)
    parser.add_argument("--evidence-neighbours", type=int, default=6)
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pickled objects in the checkpoint (only for files you trust)")
    parser.add_argument("--class-index", type=int, default=None,
                        help="class to audit for a conditional generator (c_dim > 0), e.g. an NVIDIA snapshot")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def default_out_dir(generator_spec: str) -> Path:
    path = Path(generator_spec).expanduser()
    if path.is_file():
        return path.parent / f"attack_{path.stem}"
    return Path("attack_out")


def load_audit(path: str):
    """split.json -> AuditSet, re-opening the dataset the split names."""
    from gmia_defend.data import AuditSet, IdentitySplit, open_dataset

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"audit split {path!r} does not exist; create one with IdentitySplit.create(...).save(path)")
    split = IdentitySplit.load(p)
    dataset = open_dataset(split.dataset)
    return AuditSet.from_split(dataset, split)


def format_metrics(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    lines = []
    for key, value in metrics.items():
        text = "nan (too few non-members)" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"
        lines.append(f"  {key:<{width}}  {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from gmia_defend.attack import IdentityMembershipAttack
    from gmia_defend.attack.generators import load_generator
    from gmia_defend.embedders import load_embedder

    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError("--num-samples and --batch-size must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} asked for CUDA but none is available; use --device cpu")
    out = Path(args.out).expanduser() if args.out else default_out_dir(args.generator)
    audit = load_audit(args.audit)  # cheap checks first: the default embedder may train for a minute
    kwargs = {"class_index": args.class_index} if args.class_index is not None else {}
    generator = load_generator(args.generator, device=device, trust_pickle=args.trust_pickle, **kwargs)
    embedders = [load_embedder(spec, device=device) for spec in (args.embedder or ["synthetic"])]
    attack = IdentityMembershipAttack(
        embedders if len(embedders) > 1 else embedders[0], audit, num_samples=args.num_samples,
        batch_size=args.batch_size, seed=args.seed, z_dim=args.z_dim, score=args.score, top_k=args.top_k,
        input_range=tuple(args.input_range), device=device, n_bootstrap=args.n_bootstrap,
        progress=not args.no_progress, evidence_identities=args.evidence_identities,
        evidence_neighbours=args.evidence_neighbours)
    result = attack.run(generator)
    result.config.update({"generator": args.generator, "audit": str(args.audit), "class_index": args.class_index,
                          "embedder": list(args.embedder or ["synthetic"]), "device": str(device)})
    json_path = result.save_json(out / "attack.json")
    print(f"identity membership attack: {result.num_samples} samples, embedder {result.embedder_name}, "
          f"{attack.num_members} member / {len(attack.identities) - attack.num_members} non-member identities, "
          f"score {result.score}, {result.elapsed_s:.1f} s")
    print(format_metrics(result.metrics))
    print(f"wrote {json_path}")
    if result.evidence:
        print(f"wrote {result.save_evidence_png(out / 'evidence.png')}")
    return 0
