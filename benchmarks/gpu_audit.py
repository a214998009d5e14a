"""Audit time and peak memory of a real-size audit on one GPU; prints one JSON line.

A 128 px StyleGAN2 generator and an InceptionResnetV1 (FaceNet's architecture, 160x160 input, 512-d)
with random weights: the cost of an audit does not depend on what the networks learned. The audit set
is the embedded synthetic faces rendered at 128 px (32 members + 128 non-members x 5 references, as
in the demo). One throwaway audit on a few samples pays CUDA initialisation and cuDNN autotuning; then
each setting runs ``--num-samples`` samples (default 10,000) with AMP (fp16 autocast) on and off.

    python benchmarks/gpu_audit.py                        # on a CUDA machine
    python benchmarks/gpu_audit.py --device cpu --num-samples 64 --resolution 32   # a smoke run

Figures per setting: ``audit_s`` (wall clock of ``IdentityMembershipAttack.run`` with the reference
embeddings cached, synchronised) and, on CUDA, ``peak_gib`` (``torch.cuda.max_memory_allocated``
during that run, models and audit set included). Target on one H200-class GPU: 10,000 samples in
under 10 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def build(resolution: int, device: torch.device, weights_dir: Path):
    from facenet_pytorch import InceptionResnetV1

    from gmia_defend.attack import IdentityMembershipAttack
    from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces
    from gmia_defend.embedders import FaceNetEmbedder
    from gmia_defend.models.stylegan2.networks import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, resolution=resolution, noise_mode="const").to(device).eval()
    weights = weights_dir / "inception_resnet_v1_random.pt"
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), weights)
    embedder = FaceNetEmbedder(weights, device=device, verify_checksum=False, download=False)
    dataset = SyntheticFaces(num_identities=160, images_per_identity=10, resolution=resolution, seed=0)
    split = IdentitySplit.create(dataset, num_members=32, num_nonmembers=128, references_per_identity=5, seed=0)
    audit = AuditSet.from_split(dataset, split)
    return G, embedder, audit, IdentityMembershipAttack


def timed_audit(attack, G, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = attack.run(G)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out = {"audit_s": round(time.perf_counter() - t0, 3), "auc": round(float(result.metrics["leakage/auc"]), 4)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        G, embedder, audit, Attack = build(args.resolution, device, Path(tmp))
        figures: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                         "resolution": args.resolution, "num_samples": args.num_samples,
                         "batch_size": args.batch_size}
        for amp in (True, False):
            if amp and device.type != "cuda":
                continue  # autocast to fp16 is a CUDA path
            warm = Attack(embedder, audit, num_samples=min(args.batch_size, 64), batch_size=args.batch_size,
                          seed=0, amp=amp, progress=False)
            warm.run(G)  # CUDA init, cuDNN autotuning, reference embeddings of this attack object
            attack = Attack(embedder, audit, num_samples=args.num_samples, batch_size=args.batch_size, seed=0,
                            amp=amp, progress=False)
            attack.prepare(device)
            figures["amp" if amp else "fp32"] = timed_audit(attack, G, device)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
