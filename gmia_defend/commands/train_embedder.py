"""``gmia-defend train-embedder``: train a small identity embedder on disjoint identities, save it, print its report.

By default it trains on SyntheticFaces identities far from any audited ones; ``--data-root`` trains on
a folder of real faces (``root/<identity>/<image>``) instead, holding out some identities to measure
verification. The .pt is loaded back with ``--embedder PATH`` (``load_embedder``).
"""

from __future__ import annotations

import argparse
import json

from gmia_defend.io import jsonable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="embedder.pt", help="where to write the embedder (.pt; default: %(default)s)")
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", default=None,
                      help="train on this image folder (root/<identity>/<image>) instead of SyntheticFaces")
    data.add_argument("--num-identities", type=int, default=300, help="synthetic training identities (%(default)s)")
    data.add_argument("--images-per-identity", type=int, default=20, help="synthetic images each (%(default)s)")
    data.add_argument("--holdout-identities", type=int, default=100,
                      help="identities held out to measure verification and set the threshold (%(default)s)")
    data.add_argument("--resolution", type=int, default=32, help="image side and network input (%(default)s)")
    data.add_argument("--identity-offset", type=int, default=1_000_000,
                      help="first synthetic identity index; keep it far from audited ones (%(default)s)")
    data.add_argument("--nuisance", default="mild", help="SyntheticFaces nuisance level (%(default)s)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--dim", type=int, default=128, help="embedding size (%(default)s)")
    train.add_argument("--width", type=int, default=16, help="network width (%(default)s)")
    train.add_argument("--far", type=float, default=1e-3, help="false-accept rate of the threshold (%(default)s)")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument("--cache-dir", default=None, help="cache folder (default: $GMIA_CACHE or ~/.cache/gmia_defend)")
    train.add_argument("--no-cache", action="store_true", help="always train; neither read nor write the cache")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")


def run(args: argparse.Namespace) -> int:
    from gmia_defend.embedders.trained import train_identity_embedder

    dataset = None
    if args.data_root:
        from gmia_defend.data import open_dataset

        dataset = open_dataset({"type": "folder", "root": args.data_root, "resolution": args.resolution})
    model = train_identity_embedder(
        dataset=dataset, num_identities=args.num_identities, images_per_identity=args.images_per_identity,
        resolution=args.resolution, identity_offset=args.identity_offset, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, cache_dir=args.cache_dir, device=args.device,
        progress=not args.quiet, holdout_identities=args.holdout_identities, nuisance=args.nuisance,
        dim=args.dim, width=args.width, far=args.far, cache=not args.no_cache,
    )
    path = model.save(args.out)
    print(json.dumps(jsonable({"out": str(path), **model.report}), indent=2))
    return 0
