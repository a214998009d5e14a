"""Cost of a differentially private discriminator step over the ordinary one; prints one JSON line.

Same StyleGAN2 D (demo size by default: 32 px, channel_base 512, channel_max 128, no minibatch std),
same batch (32 real + 32 generated images), same lazy R1 (gamma 10 every 16 steps), same Adam:
  base:         StyleGAN2.discriminator_step (logistic loss on the batch, R1 by double backward)
  dp_image:     PrivateDiscriminator.step, unit "image" (per-image gradients with torch.func,
                clip, one Gaussian noise draw, Adam)
  dp_identity:  PrivateDiscriminator.step, unit "identity" (8 identities x 4 images per batch:
                per-identity gradients = sums of their images', clipped)
Each timed round runs ``r1_interval`` consecutive steps of every method (so each round holds exactly
one R1 step of each), the methods interleaved step by step so load changes hit all alike; the figure
is the median over rounds of the mean step time. dp_*_ratio = dp step time / base step time.
Also reported: the ratios on plain steps and on R1 steps separately.

CPU by default with torch threads = $OMP_NUM_THREADS (1 if unset). Runtime on 2 busy cores: ~1 min.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def build(args: argparse.Namespace):
    from gmia_defend.models import StyleGAN2

    torch.manual_seed(0)
    model = StyleGAN2(resolution=args.resolution, z_dim=64, w_dim=64, mapping_layers=2,
                      channel_base=args.channel_base, channel_max=args.channel_max, dp_compatible=True,
                      r1_gamma=10.0, r1_interval=args.r1_interval, sample_every_n_batches=0).to(args.device)
    opt_g, opt_d = model.configure_optimizers()
    model.optimizers = lambda: [opt_g, opt_d]  # run the module's own D step outside a Trainer
    model.manual_backward = lambda loss: loss.backward()
    return model, opt_d


def timed_round(methods: dict, steps: int, device: str) -> dict[str, list[float]]:
    """Each method's time for each of ``steps`` consecutive steps, methods interleaved step by step."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    for i in range(steps):
        for name, fn in methods.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(i)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channel-base", type=int, default=512)
    parser.add_argument("--channel-max", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--identities-per-batch", type=int, default=8)
    parser.add_argument("--r1-interval", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from gmia_defend.mitigations import make_discriminator_private

    model, opt_d = build(args)
    g = torch.Generator().manual_seed(1)
    B, R = args.batch, args.resolution
    real = torch.randn(B, 3, R, R, generator=g).clamp(-1, 1).to(args.device)
    fake = torch.randn(B, 3, R, R, generator=g).clamp(-1, 1).to(args.device)
    labels = (torch.arange(B) % args.identities_per_batch).to(args.device)
    targets = torch.arange(100 * B) % (100 * args.identities_per_batch)  # a training set, for the rate only
    m = B // args.identities_per_batch
    common = dict(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=B, targets=targets, optimizer=opt_d,
                  seed=0, chunk_size=args.chunk_size)
    dp_image = make_discriminator_private(model.D, unit="image", r1_gamma=10.0, r1_interval=args.r1_interval, **common)
    dp_identity = make_discriminator_private(model.D, unit="identity", max_images_per_identity=m, r1_gamma=10.0,
                                             r1_interval=args.r1_interval, **common)
    methods = {
        "base": lambda i: model.discriminator_step(real, fake, i),
        "dp_image": lambda i: dp_image.step(model, real, labels, fake),
        "dp_identity": lambda i: dp_identity.step(model, real, labels, fake),
    }
    for fn in methods.values():  # warm-up: one plain and one R1 step each
        fn(0), fn(1)
    dp_image.steps = dp_identity.steps = 0  # rounds start on an R1 step, like base's batch 0
    means = {k: [] for k in methods}
    plain = {k: [] for k in methods}
    r1 = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, per_step in timed_round(methods, args.r1_interval, args.device).items():
            means[name].append(sum(per_step) / len(per_step))
            r1[name].append(per_step[0])
            plain[name].extend(per_step[1:])
        dp_image.steps = dp_identity.steps = 0
    med = {k: statistics.median(v) for k, v in means.items()}
    med_plain = {k: statistics.median(v) for k, v in plain.items()}
    med_r1 = {k: statistics.median(v) for k, v in r1.items()}
    out = {
        "dp_image_ratio": round(med["dp_image"] / med["base"], 3),
        "dp_identity_ratio": round(med["dp_identity"] / med["base"], 3),
        "base_ms": round(1000 * med["base"], 2),
        "dp_image_ms": round(1000 * med["dp_image"], 2),
        "dp_identity_ms": round(1000 * med["dp_identity"], 2),
        "plain_step_ratio_image": round(med_plain["dp_image"] / med_plain["base"], 3),
        "plain_step_ratio_identity": round(med_plain["dp_identity"] / med_plain["base"], 3),
        "r1_step_ratio_image": round(med_r1["dp_image"] / med_r1["base"], 3),
        "r1_step_ratio_identity": round(med_r1["dp_identity"] / med_r1["base"], 3),
        "d_params": sum(p.numel() for p in model.D.parameters()),
        "resolution": R, "channel_base": args.channel_base, "channel_max": args.channel_max, "batch": B,
        "identities_per_batch": args.identities_per_batch, "r1_interval": args.r1_interval,
        "rounds": args.rounds, "device": args.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
