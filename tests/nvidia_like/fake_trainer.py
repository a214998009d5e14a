"""A fake NVIDIA-style training process: writes snapshots (one slowly, in pieces) and FID lines over time.

Usage: ``python -m nvidia_like.fake_trainer RUN_DIR KIMG[,KIMG...] [--pause S] [--chunk-pause S]``.
Snapshot files are written in place (not atomically), as NVIDIA's loop does; the second one is written
in four pieces with ``--chunk-pause`` seconds between them, so a watcher sees a partial file. A file
``network-snapshot-999999.pkl`` that stays truncated is written too when ``--corrupt`` is given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nvidia_like.snapshot import append_fid, make_networks, snapshot_bytes, snapshot_name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("kimgs")
    parser.add_argument("--pause", type=float, default=0.3)
    parser.add_argument("--chunk-pause", type=float, default=0.2)
    parser.add_argument("--corrupt", action="store_true")
    args = parser.parse_args()
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    for i, kimg in enumerate(int(k) for k in args.kimgs.split(",")):
        data = snapshot_bytes(*make_networks(seed=kimg), kimg)
        path = run / snapshot_name(kimg)
        with open(path, "wb") as fh:
            if i == 1:
                step = len(data) // 4 + 1
                for start in range(0, len(data), step):
                    fh.write(data[start:start + step])
                    fh.flush()
                    time.sleep(args.chunk_pause)
            else:
                fh.write(data)
        append_fid(run, kimg, 100.0 - kimg / 10)
        if i == 0 and args.corrupt:
            blob = snapshot_bytes(*make_networks(seed=1), 999999)
            (run / snapshot_name(999999)).write_bytes(blob[: len(blob) // 2])
        time.sleep(args.pause)
    (run / "done").write_text("ok\n")


if __name__ == "__main__":
    main()
