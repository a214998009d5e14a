"""FaceNetEmbedder: local weights load exactly, damaged or foreign files and missing weights offline give
a WeightsError at once (never a network call)."""

from __future__ import annotations

import socket

import pytest
import torch

from gmia_defend.embedders import facenet as facenet_mod
from gmia_defend.embedders.facenet import VGGFACE2_FILE, VGGFACE2_URL, FaceNetEmbedder
from gmia_defend.errors import WeightsError

InceptionResnetV1 = pytest.importorskip("facenet_pytorch").InceptionResnetV1


@pytest.fixture(scope="module")
def random_facenet(tmp_path_factory):
    """A randomly initialised InceptionResnetV1 (with BatchNorm statistics made non-trivial) saved with
    an 8631-way logits head, as the VGGFace2 checkpoint is."""
    torch.manual_seed(0)
    model = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("facenet") / "random_facenet.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to open a connection or download."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network call was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_local_weights_match_the_module(random_facenet, no_network):
    model, path = random_facenet
    emb = FaceNetEmbedder(weights=str(path))
    assert (emb.name, emb.input_size, emb.dim, emb.threshold) == ("facenet", 160, 512, None)
    torch.manual_seed(1)
    x = torch.rand(3, 3, 160, 160) * 2 - 1
    with torch.no_grad():
        model.classify = False
        expected = model(((x + 1) * 127.5 - 127.5) / 128.0)  # facenet-pytorch's standardisation
    got = emb.embed(x, batch_size=2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # stays in eval mode (BatchNorm1d, dropout) even when a parent module is put in training mode
    parent = torch.nn.Sequential(emb).train()
    torch.testing.assert_close(parent(x[:1]), expected[:1], rtol=1e-4, atol=1e-5)


def test_corrupt_and_foreign_files(random_facenet, tmp_path, no_network):
    _, path = random_facenet
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(WeightsError, match="corrupt"):
        FaceNetEmbedder(weights=truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(WeightsError, match="does not hold InceptionResnetV1"):
        FaceNetEmbedder(weights=foreign)
    # a file under the known VGGFace2 name is checked against the published SHA-256
    impostor = tmp_path / VGGFACE2_FILE
    impostor.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="SHA-256"):
        FaceNetEmbedder(weights=impostor)
    FaceNetEmbedder(weights=impostor, verify_checksum=False)  # the escape hatch still loads it
    with pytest.raises(WeightsError, match="not found"):
        FaceNetEmbedder(weights=tmp_path / "nope.pt")


def test_missing_vggface2_offline_fails_at_once(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("GMIA_OFFLINE", "1")  # declared offline: not even a probe
    with pytest.raises(WeightsError) as err:
        FaceNetEmbedder()
    message = str(err.value)
    assert VGGFACE2_FILE in message and VGGFACE2_URL in message
    assert str(tmp_path / "checkpoints" / VGGFACE2_FILE) in message
    # not declared offline: the probe fails (no route), still no download attempt
    monkeypatch.delenv("GMIA_OFFLINE")
    monkeypatch.setattr(facenet_mod, "is_online", lambda *a, **k: False)
    with pytest.raises(WeightsError, match="offline"):
        FaceNetEmbedder()
    with pytest.raises(WeightsError, match="disabled"):
        FaceNetEmbedder(download=False)


def test_vggface2_in_torch_home_is_used(random_facenet, tmp_path, monkeypatch, no_network):
    _, path = random_facenet
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / VGGFACE2_FILE).write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="SHA-256"):  # random weights are not the published file
        FaceNetEmbedder()
    emb = FaceNetEmbedder(verify_checksum=False)
    assert emb.weights_path == str(tmp_path / "checkpoints" / VGGFACE2_FILE)
