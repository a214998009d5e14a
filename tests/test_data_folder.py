"""IdentityImageFolder: loading, resizing/cropping, validation errors; dataset specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures_data import make_image_tree
from gmia_defend.data import IdentityImageFolder, open_dataset
from gmia_defend.errors import DataError, UserError


def test_loads_tree(identity_folder: Path) -> None:
    ds = IdentityImageFolder(identity_folder, resolution=16)
    assert ds.identities == [f"id{k:02d}" for k in range(12)]
    assert len(ds) == 96 and ds.targets.tolist() == [k for k in range(12) for _ in range(8)]
    assert ds.keys[:2] == ["id00/000.png", "id00/001.png"]
    assert ds.indices_of("id01") == list(range(8, 16))
    x = ds.load([0, 9, 95])
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    image, target = ds[9]
    assert target == 1 and torch.equal(image, x[1])


def test_resize_shorter_side_and_centre_crop(tmp_path: Path) -> None:
    # 60 wide x 20 high: black sides, white centre 20x20 -> after resize to 8 high and a centre crop
    # of 8x8 only the white square remains; grey mode converts to RGB.
    arr = np.zeros((20, 60), dtype=np.uint8)
    arr[:, 20:40] = 255
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(arr, mode="L").save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((30, 30, 4), 0, dtype=np.uint8), mode="RGBA").save(tmp_path / "b" / "y.png")
    ds = IdentityImageFolder(tmp_path, resolution=8)
    x = ds.load([0, 1])
    assert x.shape == (2, 3, 8, 8)
    assert float(x[0, :, :, 1:-1].min()) > 0.9  # centre stays white (edge columns may blend)
    assert float(x[1].max()) == -1.0  # RGBA black -> RGB black


def test_one_error_lists_every_problem(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "faces", identities=3, images=2)
    (root / "empty_person").mkdir()
    (root / "id01" / "broken.png").write_bytes(b"this is not a png")
    (root / "id02" / "notes.txt").write_text("hello")
    (root / "stray.jpg").write_bytes(b"")
    (root / "id00" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    with pytest.raises(DataError) as err:
        IdentityImageFolder(root, resolution=16)
    msg = str(err.value)
    for part in ("empty_person", "broken.png", "notes.txt", "stray.jpg", "Fix"):
        assert part in msg
    assert ".DS_Store" not in msg
    assert "4 problem(s)" in msg


def test_long_problem_lists_are_truncated(tmp_path: Path) -> None:
    for k in range(15):
        (tmp_path / f"p{k:02d}").mkdir()
    with pytest.raises(DataError) as err:
        IdentityImageFolder(tmp_path)
    assert "and 5 more" in str(err.value) and "p14" not in str(err.value)


def test_missing_or_bad_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        IdentityImageFolder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        IdentityImageFolder(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no identity sub-folders"):
        IdentityImageFolder(tmp_path / "empty")


def test_spec_round_trip_and_fingerprint(identity_folder: Path) -> None:
    ds = IdentityImageFolder(identity_folder, resolution=16)
    spec = ds.spec()
    assert spec["type"] == "folder" and spec["resolution"] == 16
    again = open_dataset(spec)
    assert again.fingerprint() == ds.fingerprint() and again.keys == ds.keys
    # resolution does not change which images exist, so the fingerprint ignores it
    assert IdentityImageFolder(identity_folder, resolution=8).fingerprint() == ds.fingerprint()
    assert open_dataset(str(identity_folder)).keys == ds.keys


def test_open_dataset_errors() -> None:
    with pytest.raises(UserError, match="unknown dataset type"):
        open_dataset({"type": "imagenet"})
    with pytest.raises(UserError, match="unknown key"):
        open_dataset({"type": "synthetic", "colour": "red"})
    with pytest.raises(UserError):
        open_dataset(["synthetic"])  # type: ignore[arg-type]
    assert open_dataset({"type": "synthetic", "num_identities": 2, "images_per_identity": 3}).keys[-1] == "syn-000001/0002"
