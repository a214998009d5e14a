"""DlibResNetEmbedder: conversion and cache of the real .dat, and parity with dlib itself.

Needs ``face_recognition_models`` (the .dat) and, for parity, ``dlib`` (``pip install dlib-bin``);
skips cleanly without them (CI installs both: ``pip install -e .[dlib-test]``).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("face_recognition_models is not installed (pip install face_recognition_models)",
                allow_module_level=True)

from gmia_defend.embedders.dlib import (  # noqa: E402
    CONVERTED_FORMAT,
    KNOWN_DAT_SHA256,
    DlibResNetEmbedder,
    cosine_threshold_from_distance,
    default_dat_path,
)
from gmia_defend.errors import WeightsError  # noqa: E402


@pytest.fixture(scope="module")
def dlib_embedder(tmp_path_factory) -> DlibResNetEmbedder:
    torch.manual_seed(0)
    return DlibResNetEmbedder(cache=False)


def hopper_photo() -> np.ndarray:
    """A real face photo that ships with matplotlib (a dependency): Grace Hopper, 512x600."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def test_dat_file_is_the_known_one_and_converts_once(tmp_path, monkeypatch):
    from gmia_defend.embedders.weights import sha256_file

    dat = default_dat_path()
    assert sha256_file(dat) == KNOWN_DAT_SHA256
    monkeypatch.setenv("GMIA_CACHE", str(tmp_path))
    first = DlibResNetEmbedder()
    cached = list((tmp_path / "dlib").glob("*.pt"))
    assert len(cached) == 1 and KNOWN_DAT_SHA256[:16] in cached[0].name
    payload = torch.load(cached[0], weights_only=True)
    assert payload["format"] == CONVERTED_FORMAT and payload["source_sha256"] == KNOWN_DAT_SHA256
    stamp = cached[0].stat().st_mtime_ns
    second = DlibResNetEmbedder()  # from the cache: the file is not rewritten
    assert cached[0].stat().st_mtime_ns == stamp
    third = DlibResNetEmbedder(weights=cached[0])  # the converted .pt given directly
    x = torch.rand(2, 3, 150, 150) * 2 - 1
    for other in (second, third):
        torch.testing.assert_close(other(x), first(x))
    assert (first.name, first.input_size, first.dim) == ("dlib", 150, 128)
    assert first.threshold == pytest.approx(cosine_threshold_from_distance(0.6))
    assert sum(p.numel() for p in first.parameters()) == 5_614_592


def test_bad_weights_paths(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        DlibResNetEmbedder(weights=tmp_path / "missing.dat")
    damaged = tmp_path / "damaged.dat"
    damaged.write_bytes(default_dat_path().read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated"):
        DlibResNetEmbedder(weights=damaged, cache=False)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(WeightsError, match="not a converted dlib network"):
        DlibResNetEmbedder(weights=other)


def test_differentiable_and_batch_independent(dlib_embedder):
    x = (torch.rand(3, 3, 150, 150) * 2 - 1).requires_grad_(True)
    emb = dlib_embedder(x)
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3))
    emb[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    single = dlib_embedder(x[1:2].detach())
    torch.testing.assert_close(single, emb[1:2].detach(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- parity with dlib
def parity_chips(dlib) -> tuple[np.ndarray, list[str]]:
    """150x150 uint8 chips of several kinds: dlib's own aligned chip of a real photo and jittered copies
    of it, loose hand crops of the photo (no detector), rendered faces (SyntheticFaces at 150 px and
    upsampled from 32 px), faces drawn with PIL, and a non-face texture."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

    from gmia_defend.data.synthetic import SyntheticFaces

    photo = hopper_photo()
    models = default_dat_path().parent
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    faces = detector(photo, 1)
    assert len(faces) == 1
    base = Image.fromarray(dlib.get_face_chip(photo, predictor(photo, faces[0]), size=150, padding=0.25))
    chips, kinds = [np.asarray(base)], ["photo"]
    rng = np.random.default_rng(0)
    for k in range(5):
        im = base.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR,
                         translate=tuple(float(v) for v in rng.uniform(-4, 4, 2)))
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3)))
        if k % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if k == 2:
            im = im.filter(ImageFilter.GaussianBlur(1.0))
        chips.append(np.asarray(im))
        kinds.append("photo")
    full = Image.fromarray(photo)
    for box in [(150, 110, 390, 350), (120, 60, 420, 360)]:
        chips.append(np.asarray(full.crop(box).resize((150, 150), Image.BILINEAR)))
        kinds.append("photo")
    synth = SyntheticFaces(num_identities=4, images_per_identity=2, resolution=150, seed=0)
    small = SyntheticFaces(num_identities=3, images_per_identity=1, resolution=32, seed=1)
    up = torch.nn.functional.interpolate(small.load([0, 1, 2]), size=150, mode="bilinear", align_corners=False)
    for img, tag in [(synth.load(list(range(8))), "synthetic"), (up, "upsampled")]:
        for i in range(img.shape[0]):
            chips.append(((img[i].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
            kinds.append(tag)
    for k in range(3):
        im = Image.new("RGB", (150, 150), tuple(int(v) for v in rng.integers(40, 220, 3)))
        d = ImageDraw.Draw(im)
        skin = tuple(int(v) for v in rng.integers(120, 240, 3))
        w, h = rng.integers(36, 50), rng.integers(48, 62)
        d.ellipse((75 - w, 80 - h, 75 + w, 80 + h), fill=skin)
        for ex in (55, 95):
            d.ellipse((ex - 7, 62, ex + 7, 70), fill=(255, 255, 255))
            d.ellipse((ex - 3, 63, ex + 3, 69), fill=(40, 30, 20))
        d.polygon([(75, 72), (69, 95), (81, 95)], fill=tuple(max(0, c - 40) for c in skin))
        d.arc((58, 98, 92, 118), 20, 160, fill=(150, 40, 40), width=3)
        chips.append(np.asarray(im))
        kinds.append("drawn")
    texture = rng.integers(0, 256, (15, 15, 3)).astype(np.uint8)
    chips.append(np.asarray(Image.fromarray(texture).resize((150, 150), Image.BICUBIC)))
    kinds.append("texture")
    return np.ascontiguousarray(np.stack(chips)), kinds


def test_parity_with_dlib(dlib_embedder):
    dlib = pytest.importorskip("dlib")
    chips, kinds = parity_chips(dlib)
    rec = dlib.face_recognition_model_v1(str(default_dat_path()))
    start = time.perf_counter()
    ref = np.stack([np.asarray(rec.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])
    dlib_s = time.perf_counter() - start
    images = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # as photos.py returns
    ours = dlib_embedder.raw_descriptors(images).double().numpy()
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    # uint8 input path gives the same result
    ours_u8 = dlib_embedder.raw_descriptors(torch.from_numpy(chips).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(ours_u8, ours, atol=1e-4)
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=2)
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=2)
    iu = np.triu_indices(len(chips), 1)
    agree = ((d_ref < 0.6) == (d_ours < 0.6))[iu]
    print(f"\nparity: {len(chips)} chips, min cosine {cos.min():.7f}, max |diff| "
          f"{np.abs(ours - ref).max():.2e}, decision agreement {agree.mean():.4f} on {agree.size} pairs "
          f"({int((d_ref < 0.6)[iu].sum())} same-person), dlib {dlib_s:.1f}s")
    assert cos.min() >= 0.999
    assert agree.all()
    # dlib's rule on the real photo's chips: all the same person; not the same as the drawn faces
    photo = [i for i, k in enumerate(kinds) if k == "photo"]
    assert (d_ref[np.ix_(photo, photo)] < 0.6).all()
    same = dlib_embedder.dlib_same_person(torch.from_numpy(ours[photo[0]]), torch.from_numpy(ours[photo]))
    assert bool(same.all())
    # the cosine threshold on unit vectors reproduces dlib's decisions on these pairs almost always
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    by_cos = ((unit @ unit.T) >= dlib_embedder.threshold)[iu]
    assert (by_cos == (d_ref < 0.6)[iu]).mean() >= 0.9
