"""Face detection and alignment of unaligned photos, for the real face matchers.

``align_faces(paths, target)`` finds the face in each photo with facenet-pytorch's MTCNN (its weights
ship inside the wheel, so this works offline) and returns crops in the layout the matcher was
trained on:

- ``target="facenet"``: the MTCNN box plus a margin, resized to 160x160 (facenet-pytorch's
  ``extract_face`` convention; ``margin`` is in pixels of the output, the box is not clamped to the
  photo, the part outside is black);
- ``target="dlib"``: a 150x150 chip aligned like dlib's ``get_face_chip(img, shape, 150, 0.25)``:
  a similarity transform (rotation, scale, shift) that maps MTCNN's 5 landmarks (eye centres, nose
  tip, mouth corners) onto the same points of dlib's mean face shape, with padding 0.25.

A photo with no face, with several faces, or that cannot be read is skipped and reported as
``(path, reason)``; nothing is dropped silently. ``align_identity_photos`` does this for member and
non-member identities at once and returns what ``AuditSet`` needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from gmia_defend.errors import DataError, UserError

#: Output side per target.
TARGET_SIZES = {"facenet": 160, "dlib": 150}

# dlib's mean face shape (dlib/image_transforms/interpolation.h, get_face_chip_details; points
# normalised to [0, 1]), reduced to MTCNN's 5 landmarks: eye centres (mean of the 6 contour points of
# each eye, landmarks 36-41 and 42-47), nose tip (30), mouth corners (48, 54). Image-left first.
_MEAN_FACE_5 = np.array([
    [np.mean([0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743]),
     np.mean([0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077])],
    [np.mean([0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335]),
     np.mean([0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099])],
    [0.490127, 0.515625],
    [0.254149, 0.780233],
    [0.726104, 0.780233],
])


class SkippedPhoto(NamedTuple):
    """A photo that gave no face crop, and why."""

    path: str
    reason: str


def dlib_chip_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Chip coordinates (pixel centres at integers, as dlib) of the 5 landmarks for ``get_face_chip``."""
    return (padding + _MEAN_FACE_5) / (1.0 + 2.0 * padding) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (no reflection) mapping points ``src`` -> ``dst`` (Umeyama 1991).

    Returns a 2x3 matrix ``M`` with ``dst ~ M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ sign) / var_s) if var_s > 0 else 1.0
    out = np.zeros((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def warp_chip(img, landmarks: np.ndarray, size: int = 150, padding: float = 0.25):
    """A ``size`` x ``size`` PIL chip of ``img`` (PIL RGB) aligned by 5 landmarks to dlib's template.

    Bilinear sampling as dlib's ``extract_image_chip``; when the face is much larger than the chip
    the photo is first box-downscaled by an integer factor so the sampling does not alias.
    """
    from PIL import Image

    m = similarity_transform(landmarks, dlib_chip_template(size, padding))  # image -> chip
    a = m[:, :2]
    inv_a = np.linalg.inv(a)
    inv_t = -inv_a @ m[:, 2]
    scale = 1.0 / np.sqrt(abs(np.linalg.det(a)))  # photo pixels per chip pixel
    factor = max(1, int(scale))
    if factor > 1:
        img = img.reduce(factor)
    # PIL samples output pixel (x, y) at its centre (x + 0.5, y + 0.5) and reads the input in the
    # same continuous convention; dlib's coordinates put pixel centres at integers.
    # input_continuous = (inv_a @ (out_continuous - 0.5) + inv_t + 0.5) / factor
    lin = inv_a / factor
    off = (inv_t + 0.5 - inv_a @ np.array([0.5, 0.5])) / factor
    data = (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])
    return img.transform((size, size), Image.AFFINE, data=data, resample=Image.BILINEAR, fillcolor=(0, 0, 0))


def crop_box(img, box: np.ndarray, size: int = 160, margin: float = 20.0):
    """facenet-pytorch's crop: the box grown by ``margin`` output pixels, resized to ``size`` squared
    (bilinear); parts outside the photo are black instead of the box being clamped and stretched."""
    from PIL import Image

    x0, y0, x1, y1 = (float(v) for v in box)
    mx = margin * (x1 - x0) / (size - margin)
    my = margin * (y1 - y0) / (size - margin)
    rect = (int(x0 - mx / 2), int(y0 - my / 2), int(x1 + mx / 2), int(y1 + my / 2))
    return img.crop(rect).resize((size, size), Image.BILINEAR)


def _load_rgb(path: str):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def make_detector(device: str | torch.device | None = None, min_face_size: int = 20):
    """facenet-pytorch's MTCNN returning every face with its 5 landmarks (weights from the wheel)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise UserError(f"face detection needs facenet-pytorch ({err}); `pip install facenet-pytorch==2.5.3`") from err
    return MTCNN(keep_all=True, select_largest=True, min_face_size=min_face_size, device=device).eval()


def detect(detector, img, max_side: int = 1280) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes [F, 4], probabilities [F], landmarks [F, 5, 2] in ``img`` coordinates (F may be 0).

    Photos larger than ``max_side`` are detected on a downscaled copy (MTCNN's time grows with the
    area) and the results scaled back.
    """
    scale = 1.0
    small = img
    if max(img.size) > max_side:
        scale = max(img.size) / max_side
        small = img.resize((round(img.width / scale), round(img.height / scale)))
    boxes, probs, points = detector.detect(small, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return (np.asarray(boxes, dtype=np.float64) * scale, np.asarray(probs, dtype=np.float64),
            np.asarray(points, dtype=np.float64) * scale)


def align_faces(
    paths: Sequence[str | os.PathLike],
    target: str = "facenet",
    *,
    image_size: int | None = None,
    margin: float = 20.0,
    padding: float = 0.25,
    min_confidence: float = 0.95,
    min_face_size: int = 20,
    other_face_ratio: float = 0.25,
    device: str | torch.device | None = None,
    detector: Any = None,
) -> tuple[torch.Tensor, list[str], list[SkippedPhoto]]:
    """Detect and align the one face of each photo.

    Returns ``(images, kept_paths, skipped)``: ``images`` float32 [N, 3, S, S] in [-1, 1] (S = 160 for
    facenet, 150 for dlib, or ``image_size``), ``kept_paths`` the N photos they came from (in input
    order), ``skipped`` one ``SkippedPhoto(path, reason)`` per photo left out. A face counts when
    MTCNN's confidence is ``>= min_confidence``; a photo is skipped when it has none, or when a second
    face is at least ``other_face_ratio`` times as wide as the largest one (smaller background faces
    are ignored). ``detector``: a prepared ``make_detector()`` to reuse across calls.
    """
    if target not in TARGET_SIZES:
        raise UserError(f"unknown alignment target {target!r}; use one of {sorted(TARGET_SIZES)}")
    size = int(image_size or TARGET_SIZES[target])
    if target == "facenet" and not 0 <= margin < size:
        raise UserError(f"margin must be in [0, {size}) output pixels; got {margin}")
    detector = detector if detector is not None else make_detector(device, min_face_size)
    crops: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[SkippedPhoto] = []
    for p in paths:
        path = os.fspath(p)
        try:
            img = _load_rgb(path)
        except FileNotFoundError:
            skipped.append(SkippedPhoto(path, "file not found"))
            continue
        except Exception as exc:  # PIL raises many types for bad files
            skipped.append(SkippedPhoto(path, f"unreadable image ({type(exc).__name__}: {exc})"))
            continue
        if min(img.size) < 12:  # below MTCNN's smallest window
            skipped.append(SkippedPhoto(path, f"image too small ({img.width}x{img.height}) to find a face"))
            continue
        try:
            boxes, probs, points = detect(detector, img)
        except Exception as exc:  # MTCNN fails on some degenerate inputs; report, do not crash
            skipped.append(SkippedPhoto(path, f"face detection failed ({type(exc).__name__}: {exc})"))
            continue
        ok = probs >= min_confidence
        boxes, probs, points = boxes[ok], probs[ok], points[ok]
        if len(boxes) == 0:
            skipped.append(SkippedPhoto(path, f"no face found (MTCNN confidence >= {min_confidence})"))
            continue
        widths = boxes[:, 2] - boxes[:, 0]
        main = int(np.argmax(widths))
        others = int((widths >= other_face_ratio * widths[main]).sum()) - 1
        if others > 0:
            skipped.append(SkippedPhoto(path, f"{others + 1} faces found; use photos of one person"))
            continue
        if target == "facenet":
            chip = crop_box(img, boxes[main], size, margin)
        else:
            chip = warp_chip(img, points[main], size, padding)
        crops.append(np.asarray(chip, dtype=np.uint8))
        kept.append(path)
    if crops:
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    else:
        images = torch.zeros(0, 3, size, size)
    return images.contiguous(), kept, skipped


def format_skipped(skipped: Sequence[SkippedPhoto]) -> str:
    """One line per skipped photo, for the caller to print."""
    return "\n".join(f"skipped {s.path}: {s.reason}" for s in skipped)


@dataclass
class AlignedIdentityPhotos:
    """Aligned reference photos of member and non-member identities (what ``AuditSet`` holds).

    Labels index the identity lists; an identity none of whose photos gave a face is left out and
    named in ``dropped_identities``; ``skipped`` lists every photo left out and why.
    """

    member_images: torch.Tensor
    member_labels: torch.Tensor
    member_identities: list[str]
    nonmember_images: torch.Tensor
    nonmember_labels: torch.Tensor
    nonmember_identities: list[str]
    population_images: torch.Tensor | None
    member_paths: list[str] = field(default_factory=list)
    nonmember_paths: list[str] = field(default_factory=list)
    skipped: list[SkippedPhoto] = field(default_factory=list)
    dropped_identities: list[str] = field(default_factory=list)


def _align_side(photos: Mapping[str, Sequence[str | os.PathLike]], target: str, kwargs: dict,
                skipped: list[SkippedPhoto], dropped: list[str]):
    images, labels, identities, kept_paths = [], [], [], []
    for identity, paths in photos.items():
        if isinstance(paths, (str, os.PathLike)):
            raise UserError(f"photos of identity {identity!r} must be a list of paths; got one path {paths!r}")
        imgs, kept, skip = align_faces(list(paths), target, **kwargs)
        skipped.extend(skip)
        if len(kept) == 0:
            dropped.append(str(identity))
            continue
        labels += [len(identities)] * len(kept)
        identities.append(str(identity))
        images.append(imgs)
        kept_paths += kept
    size = int(kwargs.get("image_size") or TARGET_SIZES[target])
    stacked = torch.cat(images) if images else torch.zeros(0, 3, size, size)
    return stacked, torch.tensor(labels, dtype=torch.long), identities, kept_paths


def align_identity_photos(
    members: Mapping[str, Sequence[str | os.PathLike]],
    nonmembers: Mapping[str, Sequence[str | os.PathLike]],
    target: str = "facenet",
    population: Sequence[str | os.PathLike] | None = None,
    device: str | torch.device | None = None,
    **align_kwargs: Any,
) -> AlignedIdentityPhotos:
    """Align reference photos per identity (``identity -> [photo paths]``) for an audit.

    Member and non-member identity names must not overlap (``DataError``). ``population``: photos of
    further non-training people for score calibration (or None). ``align_kwargs`` go to
    ``align_faces``. The caller prints ``format_skipped(result.skipped)`` and ``dropped_identities``.
    """
    overlap = sorted(set(map(str, members)) & set(map(str, nonmembers)))
    if overlap:
        raise DataError(f"identities {overlap[:5]} are listed as both members and non-members; "
                        "each identity belongs to one side")
    kwargs = dict(align_kwargs)
    if kwargs.get("detector") is None:
        kwargs["detector"] = make_detector(device, kwargs.pop("min_face_size", 20))
    skipped: list[SkippedPhoto] = []
    dropped: list[str] = []
    m_img, m_lab, m_ids, m_paths = _align_side(members, target, kwargs, skipped, dropped)
    n_img, n_lab, n_ids, n_paths = _align_side(nonmembers, target, kwargs, skipped, dropped)
    pop = None
    if population:
        pop, _, pop_skip = align_faces(list(population), target, **kwargs)
        skipped.extend(pop_skip)
    return AlignedIdentityPhotos(m_img, m_lab, m_ids, n_img, n_lab, n_ids, pop, m_paths, n_paths,
                                 skipped, dropped)
