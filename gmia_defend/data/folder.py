"""IdentityImageFolder: real photos laid out as ``root/<identity>/<image>``, validated up front.

Why: a membership audit is only as good as its identity labels, so every problem with the tree
(missing root, empty identity folders, stray or unreadable files) is reported at construction in
one DataError that lists the offending paths and says how to fix them, instead of failing deep
inside training hours later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gmia_defend.data.specs import IdentityDataset, _format_list
from gmia_defend.errors import DataError

__all__ = ["IdentityImageFolder", "IMAGE_EXTENSIONS", "load_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Read an image as RGB, resize its shorter side to ``resolution``, centre-crop a square.

    Returns float32 [3,R,R] in [-1,1].
    """
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(im, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32)
    return x / 127.5 - 1.0


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


class IdentityImageFolder(IdentityDataset):
    """Images in ``root/<identity>/<image>``; identity = folder name; key = relative posix path.

    Hidden files (``.DS_Store``, ``._x``) are ignored. With ``verify=True`` (default) every image is
    opened once at construction so unreadable files are caught before training.

    >>> import tempfile, PIL.Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for person in ("ada", "bob"):
    ...     (root / person).mkdir()
    ...     PIL.Image.new("RGB", (20, 20)).save(root / person / "1.png")
    >>> folder = IdentityImageFolder(root, resolution=16)
    >>> folder.identities, folder.keys, tuple(folder.load([0]).shape)
    (['ada', 'bob'], ['ada/1.png', 'bob/1.png'], (1, 3, 16, 16))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int = 64,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        verify: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.verify = bool(verify)
        if self.resolution < 8:
            raise DataError(f"resolution must be >= 8, got {resolution}")
        if not self.root.exists():
            raise DataError(
                f"image folder {str(self.root)!r} does not exist; pass a folder laid out as "
                "root/<identity>/<image> (one sub-folder per person)"
            )
        if not self.root.is_dir():
            raise DataError(f"{str(self.root)!r} is a file, not a folder; pass the folder holding one sub-folder per identity")
        self._scan()

    def _scan(self) -> None:
        problems: list[str] = []
        identities: list[str] = []
        files: list[list[str]] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if _is_hidden(entry.name):
                continue
            if not entry.is_dir():
                problems.append(f"{entry.path}: a file directly in root (images belong in root/<identity>/)")
                continue
            names = []
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if _is_hidden(sub.name):
                    continue
                if sub.is_dir():
                    problems.append(f"{sub.path}: a nested folder (only root/<identity>/<image> is supported)")
                elif os.path.splitext(sub.name)[1].lower() not in self.extensions:
                    problems.append(f"{sub.path}: not an image file (extensions {list(self.extensions)})")
                elif self.verify and not self._readable(sub.path):
                    problems.append(f"{sub.path}: unreadable or corrupt image")
                else:
                    names.append(sub.name)
            if not names:
                problems.append(f"{entry.path}: identity folder with no images")
            identities.append(entry.name)
            files.append(names)
        if problems:
            raise DataError(
                f"{len(problems)} problem(s) in image folder {str(self.root)!r}:{_format_list(problems)}\n"
                "Fix: remove or repair these entries (or move them out of the tree) so that every "
                "identity folder holds only readable images."
            )
        if len(identities) == 0:
            raise DataError(
                f"image folder {str(self.root)!r} has no identity sub-folders; lay it out as "
                "root/<identity>/<image>"
            )
        self.identities = identities
        self.keys = [f"{ident}/{name}" for ident, names in zip(identities, files) for name in names]
        self.targets = torch.tensor(
            [i for i, names in enumerate(files) for _ in names], dtype=torch.int64
        )

    @staticmethod
    def _readable(path: str) -> bool:
        try:
            with Image.open(path) as im:
                im.verify()
            return True
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return False

    def path_of(self, index: int) -> Path:
        return self.root / self.keys[index]

    def load(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Images at ``indices``: float32 [N,3,R,R] in [-1,1]."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).tolist()
        out = torch.empty(len(idx), 3, self.resolution, self.resolution, dtype=torch.float32)
        for j, i in enumerate(idx):
            path = self.path_of(i)
            try:
                out[j] = load_image(path, self.resolution)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                raise DataError(f"cannot read image {str(path)!r} ({exc}); repair or remove it") from exc
        return out

    def _fingerprint_extra(self) -> str:
        return "folder"

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "folder", "root": str(self.root.resolve()), "resolution": self.resolution}
        if self.extensions != IMAGE_EXTENSIONS:
            spec["extensions"] = list(self.extensions)
        return spec
